"""Recorded versions: `fixtures/records/<spec name>/<platform key>/{record.json, arrays.npz}`
(+ `blobs/`; kept states and arrays over 1 MiB are sha256 pointers: repro/store/recordblobs.py).

A record is written as a whole directory next to its final place and swapped in with one atomic
`renameat2(RENAME_EXCHANGE)` (Linux), so a reader — or a writer killed at any instant — sees the
previous record or the new one, never a mix. Where the kernel or filesystem lacks the exchange,
two renames are used and a reader recovers the previous record from the `.old` directory left
between them. Reads check the arrays file against the sha256 in record.json.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from typing_extensions import TypedDict

from repro.env.fingerprint import Fingerprint
from repro.errors import RecordError
from repro.ioutil import fsync_dir, open_regular, read_npz, write_json_atomic, write_npz_atomic
from repro.pins.data import sha256_file
from repro.store.recordblobs import (
    CHECKPOINTS,
    ArrayEntry,
    BlobRef,
    CheckpointsInfo,
    absent_blobs,
    read_large_arrays,
    read_leaves,
    store_large_arrays,
    write_state_blobs,
)

if TYPE_CHECKING:
    from repro.child.state import LeafKind

RECORD_FORMAT = 1          # a record repro made from its own runs
IMPORTED_FORMAT = 2        # a record imported from another tool (`source`; no fingerprint)
RECORD_FORMATS = (RECORD_FORMAT, IMPORTED_FORMAT)
RECORDS_DIR = Path("fixtures") / "records"
ARRAYS_FILE = "arrays.npz"
# A spec name or platform key becomes one directory name under the records root: nothing else.
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_component(value: object, what: str) -> str:
    """`value` if it is safe as one path component (letters, digits, '.', '_', '-'; no
    separator, no '..'), else RecordError. Spec names and platform keys name record
    directories; a value that a run reported must never choose a host path."""
    if not isinstance(value, str) or not _COMPONENT.match(value) or ".." in value:
        raise RecordError(f"{what} {value!r} cannot name a record directory: use letters, "
                          "digits, '.', '_' and '-' (at most 128, starting with a letter or digit)")
    return value


class MetricSeries(TypedDict):
    """One logged metric: its steps, values (non-finite ones as strings: JSON has none) and the
    dtype it was logged in."""

    steps: list[int]
    values: list[float | str]
    dtype: str


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SpecInfo(_Part):
    name: str
    hash: str
    canonical: dict[str, Any]     # the spec's canonical form when recorded (what changed since)
    file: str


class CodeInfo(_Part):
    mode: str                     # pinned | worktree
    commit: str | None
    dirty: list[str] = Field(default_factory=list)


class DataInfo(_Part):
    path: str
    sha256: str | None
    dvc: str | None = None        # a DVC-tracked entry: its path and DVC's hash at the commit
    dvc_md5: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # an entry DVC does not track is written as before: {path, sha256}
        out: dict[str, Any] = handler(self)
        return {k: v for k, v in out.items() if v is not None or k not in ("dvc", "dvc_md5")}


class ImagePackages(_Part):
    sha256: str
    count: int
    list: list[str]


class ArraysIndex(_Part):
    file: str
    sha256: str
    index: dict[str, ArrayEntry]


class UnpinnedInputs(_Part):
    """What a run read and saw that no pin covers (repro/child/inputs.py): files read outside its
    code tree and data (path -> "sha256:<hex>", "size:<n>" or "gone") and environment facts."""

    files: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)


class Spread(_Part):
    """The largest difference between the recorded runs in one quantity (None: not finite)."""

    max_abs: float | None
    max_rel: float | None


class NoiseInfo(_Part):
    """The noise floor measured at record time: how many runs, and (tolerance.mode close) how
    far apart they were, per quantity label ("metric loss", "grad w1", "weights w1")."""

    runs: int
    spread: dict[str, Spread] = Field(default_factory=dict)


class MeshChecked(_Part):
    """One mesh of record.invariance as run at record time, against the recorded mesh: its
    sizes, whether every quantity was bitwise, and the largest move (None: not finite)."""

    mesh: list[int]
    bitwise: bool
    moved: int                    # quantities not bitwise equal
    max_abs: float | None
    max_rel: float | None


class InvarianceInfo(_Part):
    """What record.invariance checked (docs/sharding.md): the mesh axes, the recorded mesh's
    sizes, and each other mesh's result; absent from records of specs without it."""

    axes: list[str]
    recorded: list[int]
    checked: list[MeshChecked]


class ProgramPrint(_Part):
    """One traced function's program for one input signature (docs/localisation.md)."""

    inputs: str                   # "float32[4, 8], ..." (flattened leaves)
    first_call: int
    jaxpr_sha256: str
    eqns: int                     # equations, nested ones counted
    hlo_sha256: str               # lowered (StableHLO) text
    compiled_sha256: str          # compiled (HLO) text
    ops: list[tuple[str, str, str, int]] = Field(default_factory=list)  # primitive, shape, params hash, source
    # a program over several devices: "in <i>: P(...)" per input leaf, "out <i>: P(...)" per
    # output leaf (child/traced.py); absent for a program on one device
    shardings: list[str] | None = None

    @model_serializer(mode="wrap")
    def _omit_unsharded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("shardings") is None:
            out.pop("shardings", None)
        return out


class TracedFunction(_Part):
    """A `ctx.traced` function: its programs and, per traced step, one entry per equation
    output: (primitive, dtype[shape], sha256 prefix of the bytes, source index, kept) where kept
    is 0 (no values), 1 (all values in arrays.npz) or the stride of the kept sample."""

    name: str
    index: int
    calls: int
    programs: list[ProgramPrint] = Field(default_factory=list)
    steps: dict[str, list[tuple[str, str, str, int, int]]] = Field(default_factory=dict)


class TraceInfo(_Part):
    """What `ctx.traced` recorded; `sources` holds "file:line in function" by index."""

    functions: list[TracedFunction] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)


class SourceInfo(_Part):
    """Where an imported record came from (`repro import`, docs/integrations.md): a run another
    tool tracked, not one repro made. Such a record has no environment fingerprint, so a verify
    compares it within tolerance and names this source in the verdict."""

    kind: Literal["mlflow"]
    tracking_uri: str             # credentials removed: a record is committed
    run_id: str
    experiment_id: str | None = None
    run_name: str | None = None
    run_started: str | None = None          # the run's start (UTC); `created` is the import's
    model: str | None = None                # imported through models:/NAME/VERSION or @ALIAS
    model_version: str | None = None
    model_alias: str | None = None
    weights_artifact: str | None = None     # the artifact the final weights came from
    params: dict[str, str] = Field(default_factory=dict)   # the run's params, as it logged them

    def describe(self) -> str:
        """The source in words, e.g. `MLflow run 3f2a… (experiment 1 at http://host:5000)
        behind models:/digits@production (version 3)`."""
        where = f"experiment {self.experiment_id} at " if self.experiment_id else ""
        text = f"MLflow run {self.run_id} ({where}{self.tracking_uri})"
        if self.model:
            ref = f"@{self.model_alias}" if self.model_alias else f"/{self.model_version}"
            text += f" behind models:/{self.model}{ref}"
            if self.model_alias:
                text += f" (version {self.model_version})"
        return text


def _fingerprint_of(value: object) -> Fingerprint:
    return value if isinstance(value, Fingerprint) else Fingerprint.from_json(value)


def _fingerprint_json(fingerprint: Fingerprint) -> dict[str, Any]:
    return fingerprint.to_json()


# A fingerprint in a pydantic model (record.json, run.json): read with Fingerprint.from_json (a
# wrong type is an error naming the field), written back as the very JSON it was read from.
FingerprintField = Annotated[Fingerprint, PlainValidator(_fingerprint_of),
                             PlainSerializer(_fingerprint_json)]


class RecordMeta(_Part):
    """record.json, typed. `arrays` is filled in by `write_record`."""

    repro_version: str
    created: str
    spec: SpecInfo
    code: CodeInfo
    data: dict[str, DataInfo]
    image: str | None = None
    image_packages: ImagePackages | None = None
    backend: str                  # local | docker; "" for an imported record
    platform: str
    fingerprint: FingerprintField | None   # None: imported (`source`), the environment unknown
    metrics: dict[str, MetricSeries]
    grad_steps: list[int]
    timings: dict[str, float] = Field(default_factory=dict)
    format: int = RECORD_FORMAT
    arrays: ArraysIndex | None = None
    inputs: UnpinnedInputs | None = None   # unpinned inputs of the recorded run
    noise: NoiseInfo | None = None          # runs made at record time and their spread
    traced: TraceInfo | None = None         # ctx.traced: program fingerprints and op traces
    checkpoints: CheckpointsInfo | None = None   # ctx.checkpoint: kept states, as blob pointers
    checksum: str | None = None   # record_checksum of the rest: a hand edit is damage, not drift
    source: SourceInfo | None = None        # imported from another tool (format 2)
    # record key (weights/<path>, grads/<step>/<path>) -> PartitionSpec (JSON,
    # child/sharding.py) of each sharded array; absent when nothing was sharded
    shardings: dict[str, list[Any] | str] | None = None
    invariance: InvarianceInfo | None = None   # record.invariance: the meshes checked

    @model_validator(mode="after")
    def _fingerprint_or_source(self) -> RecordMeta:
        """Only an imported record may lack a fingerprint: every run repro makes takes one."""
        if self.fingerprint is None and self.source is None:
            raise ValueError("fingerprint: a record repro made has an environment fingerprint; "
                             "only an imported record (with `source`) may have none")
        return self

    @model_serializer(mode="wrap")
    def _no_absent_source(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Records made before `source` existed are written back byte for byte (their
        checksums hold): an absent source is no key, not a null."""
        out: dict[str, Any] = handler(self)
        for key in ("source", "shardings", "invariance"):   # likewise an unsharded record: no `shardings`
            if out.get(key) is None:
                out.pop(key, None)
        return out

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, doc: Any, where: Path) -> RecordMeta:
        """Validate a parsed record.json; RecordError naming the key that is wrong."""
        try:
            return cls.model_validate(doc, strict=False)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise RecordError(f"{where} is corrupted: {key}: {first['msg']} "
                              f"({exc.error_count()} problem(s) in all); restore it from git "
                              "(`git checkout -- <path>`) or record again") from None


def record_checksum(doc: dict[str, Any]) -> str:
    """sha256 of record.json's content without its `checksum` key (sorted keys, compact)."""
    rest = {k: v for k, v in doc.items() if k != "checksum"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Record:
    """A recorded version: its metadata (record.json) and arrays (weights, kept gradients)."""

    path: Path
    meta: RecordMeta
    arrays: dict[str, Any]  # key -> numpy array

    @property
    def metrics(self) -> dict[str, MetricSeries]:
        return self.meta.metrics

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The recorded run's environment; None for an imported record (`meta.source`)."""
        return self.meta.fingerprint


def record_dir(repo_root: Path, name: str, platform_key: str, root: Path | None = None) -> Path:
    """Where a spec's record for a platform lives (`root` overrides fixtures/records)."""
    base = Path(root) if root is not None else Path(repo_root) / RECORDS_DIR
    return base / check_component(name, "spec name") / check_component(platform_key, "platform key")


def write_record(directory: Path, meta: RecordMeta, arrays: dict[str, Any],
                 checkpoints: dict[int, list[LeafKind]] | None = None) -> Path:
    """Write record.json + arrays.npz (+ blobs/ for kept states) into `directory`, replacing
    any previous record atomically. `arrays` may hold kept states (checkpoints/<step>/<path>,
    their leaf kinds in `checkpoints`): they become blobs, not arrays.npz entries. Writers of
    one spec take turns (a lock on the spec's record directory); RecordError when the directory
    cannot be written."""
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with _writer_lock(directory.parent):
            _clean_leftovers(directory)
            return _write_locked(directory, meta, arrays, checkpoints or {})
    except OSError as exc:
        raise RecordError(f"cannot write the record at {directory}: {exc.strerror or exc} "
                          f"({exc.filename or directory}); make the directory writable, or "
                          "pass --records DIR to write the records elsewhere") from None


@contextlib.contextmanager
def _writer_lock(directory: Path) -> Iterator[None]:
    """flock on the directory itself (no lock file to commit by mistake); released on exit,
    also when the writer is killed."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_locked(directory: Path, meta: RecordMeta, arrays: dict[str, Any],
                  checkpoints: dict[int, list[LeafKind]]) -> Path:
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        states = {k: v for k, v in arrays.items() if k.startswith(CHECKPOINTS)}
        arrays = {k: v for k, v in arrays.items() if not k.startswith(CHECKPOINTS)}
        if checkpoints:
            meta = meta.model_copy(update={"checkpoints": write_state_blobs(staging, states, checkpoints)})
        entries = store_large_arrays(arrays)   # arrays over GIT_BLOB_MAX: blobs in the store
        write_npz_atomic(staging / ARRAYS_FILE, {k: v for k, v in arrays.items() if entries[k].sha256 is None})
        index = ArraysIndex(file=ARRAYS_FILE, sha256=sha256_file(staging / ARRAYS_FILE), index=entries)
        fmt = IMPORTED_FORMAT if meta.source is not None else RECORD_FORMAT
        meta = meta.model_copy(update={"format": fmt, "arrays": index, "checksum": None})
        doc = meta.to_json()
        doc["checksum"] = record_checksum(doc)
        write_json_atomic(staging / "record.json", doc)
        os.chmod(staging, 0o755)
        fsync_dir(staging)
        if not directory.exists():
            os.rename(staging, directory)
        elif not _exchange(staging, directory):
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.rename(directory, old)
            os.rename(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(directory.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)  # after an exchange: the previous record
    return directory


def read_state(directory: Path, meta: RecordMeta, step: int) -> dict[str, Any]:
    """The state kept at `step`, leaf path -> array, every blob re-hashed (RecordError naming
    the step and leaf of a missing or damaged one)."""
    assert meta.checkpoints is not None
    return read_leaves(directory, meta.checkpoints, step)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc: int = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _clean_leftovers(directory: Path) -> None:
    """Remove staging dirs of writers that were killed (and old dirs once a record exists)."""
    for p in directory.parent.glob(f".{directory.name}.*-*"):
        if ".new-" in p.name or (".old-" in p.name and (directory / "record.json").exists()):
            shutil.rmtree(p, ignore_errors=True)


class BlobsAbsent(RecordError):
    """Store blobs the record points to are not on this machine (`refs`): a verify fetches them
    from the repository's remote before training (`pipeline.open_record`); elsewhere they are
    named with what to do."""

    def __init__(self, directory: Path, refs: list[BlobRef]):
        self.directory, self.refs = directory, refs
        b = refs[0]
        more = f" (and {len(refs) - 1} more)" if len(refs) > 1 else ""
        super().__init__(f"{directory}: {b.what} (blob {b.sha256[:12]}…, {b.size:,} bytes){more} is "
                         "missing from this machine's store (blobs over 1 MiB stay out of git): "
                         "run `repro pull` to fetch it from the project's store remote")


def check_record(directory: Path, blobs: bool = True) -> tuple[Path, RecordMeta]:
    """Find a record and check it without loading arrays (no numpy): record.json parses, is of
    this format and shape, and the arrays file has the sha256 it names; with `blobs`, every
    blob it points to (kept states, large arrays) is here: `BlobsAbsent` names the store blobs
    this machine lacks (the pipeline fetches them: `pipeline.open_record`)."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    if not (directory / "record.json").exists():
        olds = sorted(directory.parent.glob(f".{directory.name}.old-*"))
        if olds and (olds[-1] / "record.json").exists():
            directory = olds[-1]  # a writer was killed between its two renames
        else:
            raise RecordError(f"no recorded version at {directory}; run `repro record SPEC` "
                              "(or `pytest --repro-record`) to create it, then commit it")
    meta_path = directory / "record.json"
    try:
        with open_regular(meta_path) as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{meta_path} is corrupted ({exc}); restore it from git "
                          "(`git checkout -- <path>`) or record again") from None
    if not isinstance(doc, dict) or doc.get("format") not in RECORD_FORMATS:
        raise RecordError(f"{meta_path} is not a repro record of format "
                          f"{' or '.join(map(str, RECORD_FORMATS))} (found format "
                          f"{doc.get('format') if isinstance(doc, dict) else '?'}); "
                          "record again with this version of repro")
    meta = RecordMeta.from_json(doc, meta_path)
    if meta.checksum is not None and meta.checksum != record_checksum(doc):
        raise RecordError(f"{meta_path} was changed after it was recorded (its checksum does not "
                          "match its content): a record is written by `repro record`, never by "
                          "hand. Restore it from git (`git checkout -- <path>`) or record again")
    if meta.arrays is None:
        raise RecordError(f"{meta_path} is corrupted: it has no arrays index; record again")
    if meta.arrays.file != ARRAYS_FILE:
        # the name is fixed: a record.json pointing elsewhere (../../x.npz, /etc/...) is damage
        raise RecordError(f"{meta_path} is corrupted: its arrays.file is "
                          f"{meta.arrays.file!r}, not {ARRAYS_FILE!r}; restore it from git "
                          "or record again")
    arrays_path = directory / ARRAYS_FILE
    if not arrays_path.is_file():
        raise RecordError(f"{arrays_path} is missing; restore it from git or record again")
    actual = sha256_file(arrays_path)
    if actual != meta.arrays.sha256:
        raise RecordError(f"{arrays_path} is corrupted or truncated: its sha256 is {actual}, "
                          f"record.json expects {meta.arrays.sha256}; restore it from git "
                          "(`git checkout -- <path>`) or record again")
    if blobs:
        absent = absent_blobs(directory, meta.checkpoints, meta.arrays.index)
        if absent:
            raise BlobsAbsent(directory, absent)
    return directory, meta


def read_record(directory: Path, states: bool = True) -> Record:
    """Load and check a record (with its kept states as checkpoints/<step>/<path> arrays unless
    `states` is False). Raise RecordError naming the file and what to do."""
    directory, meta = check_record(directory)
    assert meta.arrays is not None  # check_record made sure
    arrays_path = directory / ARRAYS_FILE
    try:
        arrays = read_npz(arrays_path)
    except ValueError as exc:
        raise RecordError(f"{arrays_path} is corrupted: it cannot be read ({exc}); restore it "
                          "from git or record again") from None
    expected = {k for k, e in meta.arrays.index.items() if e.sha256 is None}
    if set(arrays) != expected:
        raise RecordError(f"{arrays_path} holds {sorted(set(arrays) ^ expected)[:5]} that "
                          "record.json does not list (or misses some); record again")
    arrays.update(read_large_arrays(directory, meta.arrays.index))   # re-hashed, checked
    if states and meta.checkpoints is not None:
        for step in meta.checkpoints.steps:
            arrays.update({f"{CHECKPOINTS}{step}/{p}": a
                           for p, a in read_state(directory, meta, step).items()})
    return Record(directory, meta, arrays)


class RecordLoader:
    """Read a record in a background thread (`result()` returns it or raises its error): the
    arrays — and numpy, and whatever `warm` imports — load while the child trains."""

    def __init__(self, directory: Path, warm: Callable[[], object] | None = None):
        self._value: Record | None = None
        self._error: BaseException | None = None

        def work() -> None:
            try:
                if warm is not None:
                    warm()
                self._value = read_record(directory)
            except BaseException as exc:  # handed to the caller in result()
                self._error = exc
        self._thread = threading.Thread(target=work, daemon=True, name="repro-record-loader")
        self._thread.start()

    def result(self) -> Record:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

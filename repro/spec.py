"""The experiment spec: its model, loading with errors that name file, key path and line, the
canonical hash, and the key-by-key difference between two versions of a spec.

Validation is pydantic's (strict types, unknown keys forbidden); this module only turns its
errors into `SpecError`s a user can act on. `spec_json_schema()` publishes the same model as a
JSON Schema for editor completion (`docs/spec.schema.json`).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

from repro.errors import SpecError
from repro.yamlio import load_with_lines

_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_IMAGE = re.compile(r"^([a-z0-9]+([._/:-][a-z0-9]+)*@)?sha256:[0-9a-f]{64}$")
ENTRYPOINT_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def relative_path(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} is empty")
    if "\\" in value:
        raise ValueError(f"{what} {value!r}: use '/' as the separator")
    p = PurePosixPath(value)
    if p.is_absolute():
        raise ValueError(f"{what} {value!r} is absolute; give it relative to the repository root")
    if ".." in p.parts:
        raise ValueError(f"{what} {value!r} leaves the repository ('..'); data must live inside it")
    if any(part.lower() == ".git" for part in p.parts):
        raise ValueError(f"{what} {value!r} is inside .git: git's own files (its config, hooks, "
                         "credentials) are never data or outputs; git refuses such paths too")
    return str(p)


# Programs whose first non-option argument is the script they run: a path that must be the
# pinned tree's (code.command, docs/scripts.md).
_INTERPRETERS = re.compile(r"^(python[0-9.]*|bash|sh|zsh|dash|perl|ruby|node|Rscript)$")


def command_path_problem(command: list[str]) -> str | None:
    """Why a command would run code outside the pinned tree, or None: an absolute or '..' path
    in its program position, or in its script position after an interpreter."""
    def outside(arg: str) -> bool:
        path = PurePosixPath(arg)
        return path.is_absolute() or ".." in path.parts or arg.startswith("~")
    if not command:
        return None
    program = command[0]
    if outside(program):
        return (f"the program {program!r} is outside the pinned tree (absolute or '..'); run "
                "a program by name from PATH (`python`) or a script of the tree by a relative path")
    if _INTERPRETERS.match(PurePosixPath(program).name):
        args = iter(command[1:])
        for arg in args:
            if arg[:2] in ("-m", "-c"):
                return None   # a module or inline code: no script path
            if arg in ("-W", "-X"):
                next(args, None)   # an option's value, not the script
            if arg.startswith("-"):
                continue
            if outside(arg):
                return (f"the script {arg!r} is outside the pinned tree (absolute or '..'), so "
                        "the commit would not pin it; give a path relative to the tree's root")
            return None
    return None


class OutputFile(_Model):
    path: str = Field(description="relative to the script's working directory (the code tree)")

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        if v and PurePosixPath(v).is_absolute():
            raise ValueError(f"output path {v!r} is absolute; give it relative to the script's "
                             "working directory (the root of the code tree)")
        if ".." in PurePosixPath(v).parts:
            raise ValueError(f"output path {v!r} leaves the script's working directory ('..')")
        return relative_path(v, "output path")


class MetricsOutput(OutputFile):
    format: Literal["jsonl", "csv", "tensorboard"] = Field(
        description="jsonl: one object a line with a `step`; csv: a header with `step`; "
                    "tensorboard: an event file or a log directory (scalar summaries)")


class WeightsOutput(OutputFile):
    format: Literal["orbax", "npz", "safetensors"] = Field(
        description="orbax: a checkpoint directory (or a CheckpointManager directory: its "
                    "latest step); npz; safetensors")


class ScriptOutputs(_Model):
    metrics: MetricsOutput | None = Field(None, description="the metrics file the script writes")
    weights: WeightsOutput | None = Field(None, description="the final weights the script writes")


class CodeSpec(_Model):
    model_config = ConfigDict(json_schema_extra={   # entrypoint, or command with its outputs
        "if": {"not": {"required": ["command"]}}, "then": {"required": ["entrypoint"]},
        "else": {"required": ["outputs"], "not": {"required": ["entrypoint"]}}})

    repo: str = Field(".", description="path relative to the spec's git repository, or a git URL")
    commit: str | None = Field(None, description="full 40-hex commit; `repro pin` fills it in")
    entrypoint: str | None = Field(None, description="module:function inside the tree at that "
                                   "commit (or `command` instead)")
    command: list[str] | None = Field(
        None, min_length=1, description="an unmodified script instead of an entrypoint: the "
        "command line, run in the code tree; `{config.x}`, `{seeds.y}`, `{data.z}` are replaced "
        "(docs/scripts.md)")
    outputs: ScriptOutputs | None = Field(None, description="with `command`: the files it "
                                          "writes that hold its metrics and weights")

    @model_serializer(mode="wrap")
    def _canonical(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Keys a spec does not use are left out of its canonical form: adding `command` kept
        every entrypoint spec's hash (and its record's "what changed") as it was."""
        out: dict[str, Any] = handler(self)
        for key in ("entrypoint", "command", "outputs"):
            if out.get(key) is None:
                out.pop(key, None)
        return out

    def job_fields(self) -> dict[str, Any]:
        """What a `Job` carries of how to run the code: an entrypoint, or a command and outputs
        (placeholders are replaced in the child, where the data paths are known)."""
        if self.command is None:
            return {"entrypoint": self.entrypoint or ""}
        from repro.job import OutputFile, Outputs

        def one(out: MetricsOutput | WeightsOutput | None) -> OutputFile | None:
            return None if out is None else OutputFile(out.path, out.format)
        outputs = Outputs(one(self.outputs.metrics), one(self.outputs.weights)) if self.outputs \
            else Outputs()
        return {"entrypoint": "", "command": tuple(self.command), "outputs": outputs}

    @model_validator(mode="after")
    def _one_way_to_run(self) -> CodeSpec:
        if (self.entrypoint is None) == (self.command is None):
            raise ValueError("give either code.entrypoint (module:function) or code.command "
                             "(an unmodified script), not " + ("both" if self.command else "neither"))
        if self.command is not None:
            problem = command_path_problem(self.command)
            if problem:
                raise ValueError(f"code.command: {problem}")
            if self.outputs is None or (self.outputs.metrics is None and self.outputs.weights is None):
                raise ValueError("code.command needs code.outputs: the metrics and/or weights "
                                 "files the script writes (docs/scripts.md)")
        elif self.outputs is not None:
            raise ValueError("code.outputs belongs to code.command; an entrypoint reports "
                             "through ctx.log and its return value")
        return self

    @field_validator("commit")
    @classmethod
    def _full_commit(cls, v: str | None) -> str | None:
        if v is not None and not _HEX40.match(v):
            hint = (f"a full 40-hex commit is required, got {len(v)} characters"
                    if re.fullmatch(r"[0-9a-fA-F]+", v) else f"{v!r} is not a hex commit id")
            raise ValueError(f"{hint}; `git rev-parse {v}` prints the full id, or run `repro pin`")
        return v.lower() if v else v

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, v: str | None) -> str | None:
        if v is not None and not ENTRYPOINT_PATTERN.match(v):
            raise ValueError(f"{v!r} is not 'package.module:function'")
        return v


_DVC_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


def _path_or_dvc(schema: dict[str, Any]) -> None:
    """JSON Schema: an entry names its file by `path`, or by `dvc` alone (`path` defaults to it)."""
    schema["required"] = [k for k in schema.get("required", []) if k != "path"]
    schema["anyOf"] = [{"required": ["path"]}, {"required": ["dvc"]}]
    if not schema["required"]:
        del schema["required"]


class DataEntry(_Model):
    model_config = ConfigDict(json_schema_extra=_path_or_dvc)

    path: str = Field(description="relative to the repo root; never outside it (with `dvc`: "
                                  "defaults to it)")
    sha256: str | None = Field(None, description="file sha256, or for a directory the sha256 of "
                                                 "its sorted '<sha256>  <relpath>' lines")
    # Where to fetch the file when `path` is absent (docs/data-pins.md). The sha256 pins the
    # content, so the URL stays out of the canonical form and the hash (exclude=True): moving
    # the data to another bucket changes no record.
    url: str | None = Field(None, exclude=True,
                            description="fsspec URL (s3://, gs://, https://, file://) of the file, "
                                        "fetched by its sha256 into the machine's cache when "
                                        "`path` is absent; single files only")
    # The fetched file's size in bytes: a longer body is refused as it arrives (without it, a
    # machine-wide limit applies: $REPRO_DATA_MAX_BYTES, default 4 GiB). Like the URL it is not
    # part of the hash: the sha256 already pins the content.
    size: int | None = Field(None, ge=0, exclude=True, description="with `url`: the file's size "
                             "in bytes; a longer body is refused as it arrives")
    # A DVC-tracked file (docs/integrations.md): its DVC hash is read at code.commit from
    # `<dvc>.dvc` or the dvc.lock stage that outputs it, and the file is fetched through DVC's
    # own API when the working tree lacks the pinned version. Both keys are part of the canonical
    # form (so of the record); an entry without them keeps the canonical form it always had.
    dvc: str | None = Field(None, description="a DVC-tracked path relative to the repo root "
                            "(`path` defaults to it): its hash is read from `<dvc>.dvc` or the "
                            "dvc.lock stage that outputs it at code.commit, and the pinned "
                            "version is fetched through DVC when the working tree lacks it")
    dvc_md5: str | None = Field(None, description="with `dvc`: DVC's hash of it at code.commit "
                                "(32 hex; `repro pin` fills it in)")

    @model_validator(mode="before")
    @classmethod
    def _path_defaults_to_dvc(cls, data: Any) -> Any:
        if isinstance(data, dict) and "path" not in data and isinstance(data.get("dvc"), str):
            return {**data, "path": data["dvc"]}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> DataEntry:
        if self.dvc is None:
            if self.dvc_md5 is not None:
                raise ValueError("dvc_md5 without dvc: name the DVC-tracked path with `dvc:`")
            return self
        if self.dvc != self.path:
            raise ValueError(f"path {self.path!r} and dvc {self.dvc!r} name different files; "
                             "give `dvc:` alone (path defaults to it)")
        if self.url is not None:
            raise ValueError("an entry is fetched through DVC (`dvc:`) or from a URL (`url:`), "
                             "not both; drop one of them")
        return self

    @field_validator("dvc")
    @classmethod
    def _dvc_inside(cls, v: str | None) -> str | None:
        return None if v is None else relative_path(v, "dvc path")

    @field_validator("dvc_md5")
    @classmethod
    def _dvc_hex(cls, v: str | None) -> str | None:
        if v is not None and not _DVC_MD5.match(v):
            raise ValueError(f"{v!r} is not DVC's hash (32 lowercase hex, `.dir` for a "
                             "directory); `repro pin` fills it in from the .dvc file or dvc.lock")
        return v

    @model_serializer(mode="wrap")
    def _canonical(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`dvc` and `dvc_md5` only where used: every other entry's canonical form (and so its
        spec's hash) is what it was before DVC entries existed."""
        out: dict[str, Any] = handler(self)
        for key in ("dvc", "dvc_md5"):
            if out.get(key) is None:
                out.pop(key, None)
        return out

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://.", v):
            raise ValueError(f"{v!r} is not a URL with a scheme (s3://bucket/key, "
                             "https://host/file, file:///path)")
        return v

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        return relative_path(v, "data path")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _HEX64.match(v):
            raise ValueError(f"{v!r} is not a 64-character lowercase hex sha256; "
                             "`repro hash PATH` prints it, `repro pin` fills it in")
        return v


_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _product(sizes: Iterable[int]) -> int:
    out = 1
    for n in sizes:
        out *= n
    return out


class EnvironmentSpec(_Model):
    image: str | None = Field(None, description="docker image pinned by digest: NAME@sha256:<hex>")
    recipe: str | None = Field(None, description="directory with the Dockerfile and lock file")
    platform: Literal["cpu", "gpu", "any"] = "cpu"
    packages: dict[str, str] = Field(default_factory=dict,
                                     description="distribution -> exact version, asserted in the run")
    cpus: int = Field(1, ge=1, le=1024, description="CPU affinity: how many cores the run may use")
    x64: bool = False
    matmul_precision: Literal["default", "high", "highest", "bfloat16", "tensorfloat32",
                              "float32"] = "highest"
    xla_flags: list[str] = Field(default_factory=list)
    isa: str = Field("portable", description="x86-64 code generation ceiling: portable (AVX2, so "
                     "hosts with and without AVX-512 compute the same bits), native (no cap), or "
                     "an XLA ISA name: SSE4_2, AVX, AVX2, AVX512, AVX512_VNNI, AVX512_BF16, AMX, "
                     "AMX_FP16")
    # Sharded training (docs/sharding.md): devices per process and the named mesh over them.
    # Both stay out of the canonical form at their defaults, so every spec written before them
    # keeps its hash and every record its bytes.
    devices: int = Field(1, ge=1, le=4096, description="devices per process: on CPU forced with "
                         "--xla_force_host_platform_device_count; on GPU that many visible GPUs "
                         "(a host with fewer skips the spec). Default 1; with `mesh` alone, the "
                         "product of its sizes")
    mesh: dict[str, int] | None = Field(None, description="named mesh axes in order, name -> "
                                        "size (`{data: 4, model: 2}`); the sizes multiply to "
                                        "`devices` x `processes`; the training reads it as ctx.mesh")
    processes: int = Field(1, ge=1, le=1024, description="training processes joined by "
                           "jax.distributed (each with `devices` devices; on CPU their "
                           "collectives use gloo); process 0 writes the run's output. Default 1")
    # Sandbox limits of the docker backend. They cannot change a result, only stop a run, so
    # they stay out of the canonical form and the hash (exclude=True).
    memory: str | None = Field(None, exclude=True, pattern=r"^[0-9]+[kmgKMG]?$",
                               description="docker backend: container memory limit, e.g. 4g "
                                           "(default: ini repro_docker_memory, else 4g)")
    pids: int | None = Field(None, exclude=True, ge=16, le=1_000_000,
                             description="docker backend: container pids limit (default: ini "
                                         "repro_docker_pids, else 1024)")

    @model_validator(mode="before")
    @classmethod
    def _devices_from_mesh(cls, data: Any) -> Any:
        """A mesh without `devices` means as many devices per process as the mesh has places
        divided among the processes."""
        if isinstance(data, dict) and "devices" not in data and isinstance(data.get("mesh"), dict):
            sizes = list(data["mesh"].values())
            procs = data.get("processes", 1)
            if sizes and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes) \
                    and isinstance(procs, int) and not isinstance(procs, bool) and procs >= 1 \
                    and _product(sizes) % procs == 0:
                return {**data, "devices": _product(sizes) // procs}
        return data

    @field_validator("mesh")
    @classmethod
    def _mesh(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("mesh is empty: name at least one axis (`mesh: {data: 4}`), or "
                             "leave the key out")
        for name, size in v.items():
            if not _AXIS.match(name):
                raise ValueError(f"mesh axis name {name!r} is not an identifier (letters, digits "
                                 "and '_', not starting with a digit): PartitionSpecs name it")
            if size < 1:
                raise ValueError(f"mesh axis {name!r} has size {size}; sizes are at least 1")
        return v

    @model_validator(mode="after")
    def _mesh_fits(self) -> EnvironmentSpec:
        if self.devices > 1 and any(f.startswith("--xla_force_host_platform_device_count")
                                    for f in self.xla_flags):
            raise ValueError("xla_flags sets --xla_force_host_platform_device_count and devices "
                             "is set too; drop the flag: `devices` sets it on CPU")
        total = self.devices * self.processes
        if self.mesh is not None and _product(self.mesh.values()) != total:
            shape = " x ".join(f"{k}={n}" for k, n in self.mesh.items())
            given = (f"devices is {self.devices}" if self.processes == 1 else
                     f"devices x processes is {self.devices} x {self.processes} = {total}")
            raise ValueError(f"mesh {shape} has {_product(self.mesh.values())} places but "
                             f"{given}; make the sizes multiply to devices x processes (or leave "
                             "devices out: it defaults to the mesh's product over processes)")
        return self

    @model_serializer(mode="wrap")
    def _canonical(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`devices`, `mesh` and `processes` only where used: an unsharded one-process spec's
        canonical form (and so its hash) is what it was before they existed."""
        out: dict[str, Any] = handler(self)
        if out.get("devices") == 1:
            out.pop("devices", None)
        if out.get("processes") == 1:
            out.pop("processes", None)
        if out.get("mesh") is None:
            out.pop("mesh", None)
        return out

    def mesh_axes(self) -> tuple[tuple[str, int], ...]:
        """The mesh as (name, size) pairs in order; a spec without one has none."""
        return tuple(self.mesh.items()) if self.mesh else ()

    @field_validator("image")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not _IMAGE.match(v):
            raise ValueError(f"{v!r} is not pinned by digest; write NAME@sha256:<64 hex> "
                             "(`docker image inspect --format '{{.Id}}' NAME` prints it)")
        return v

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str | None) -> str | None:
        return v if v is None else relative_path(v, "recipe")

    @field_validator("isa")
    @classmethod
    def _isa(cls, v: str) -> str:
        from repro.env.isa import XLA_ISAS

        if v in ("portable", "native") or v in XLA_ISAS:
            return v
        raise ValueError(f"{v!r} is not portable, native or one of {', '.join(XLA_ISAS)}")

    @field_validator("xla_flags")
    @classmethod
    def _flags(cls, v: list[str]) -> list[str]:
        for flag in v:
            if not flag.startswith("--"):
                raise ValueError(f"XLA flag {flag!r} must start with '--'")
        return v


class GradsRecord(_Model):
    every: int | None = Field(None, ge=1)
    steps: list[int] = Field(default_factory=list)


class TraceRecord(_Model):
    steps: list[int] = Field(default_factory=list, description="steps (calls of each ctx.traced "
                             "function, counted from 0) evaluated op by op; default: the "
                             "record.grads steps")


class CheckpointsRecord(_Model):
    every: int | None = Field(None, ge=1, description="keep the state every N steps")
    steps: list[int] = Field(default_factory=list, description="... and at these steps")


class InvarianceSpec(_Model):
    """record.invariance: meshes the training must give the same result on (docs/sharding.md).
    Each mesh is its sizes in the order of environment.mesh's axes."""

    meshes: list[list[int]] = Field(min_length=1, description="mesh shapes, sizes in the order "
                                    "of environment.mesh's axes, each multiplying to devices")


class RecordSpec(_Model):
    metrics: list[str] | None = Field(None, description="metrics compared; default: all logged")
    grads: GradsRecord | None = None
    weights: Literal["final", "none"] = "final"
    # Which states ctx.checkpoint keeps: what is kept, never the numbers a run makes, so not
    # part of the hash (a record lists the steps it kept; docs/checkpoints.md).
    checkpoints: CheckpointsRecord | None = Field(
        None, exclude=True, description="ctx.checkpoint: the steps whose training state the "
                                        "record keeps (docs/checkpoints.md)")
    # Which steps ctx.traced functions are traced op by op: what is kept, never the numbers a
    # run makes, so (like runs) not part of the hash.
    trace: TraceRecord | None = Field(None, exclude=True,
                                      description="ctx.traced: the steps traced op by op "
                                                  "(docs/localisation.md)")
    # How many trainings a record is made from (they must agree bitwise unless tolerance.mode is
    # close). It changes how a record is made, never its numbers: not part of the hash.
    runs: int = Field(2, ge=1, le=100, exclude=True,
                      description="trainings per record (default 2): the noise floor")
    # Meshes checked at record time: how a record is made, never its numbers (like runs), so not
    # part of the hash; a spec without it hashes as before.
    invariance: InvarianceSpec | None = Field(
        None, exclude=True, description="meshes the result must not depend on beyond "
                                        "tolerance.mesh, checked at record time")


class Tol(_Model):
    rtol: float | None = Field(None, ge=0)
    atol: float | None = Field(None, ge=0)


class PlatformTolerance(Tol):
    default: Tol | None = None
    metrics: dict[str, Tol] = Field(default_factory=dict)
    grads: Tol | None = None
    weights: Tol | None = None


class ToleranceSpec(_Model):
    mode: Literal["auto", "exact", "close"] = "auto"
    default: Tol = Tol(rtol=1e-6, atol=1e-8)
    metrics: dict[str, Tol] = Field(default_factory=dict)
    grads: Tol | None = None
    weights: Tol | None = None
    platforms: dict[str, PlatformTolerance] = Field(default_factory=dict)
    # Applied when the mesh is the only environment difference (another mesh at verify, the
    # meshes of record.invariance, calibrate --meshes --write); docs/sharding.md.
    mesh: PlatformTolerance | None = None

    @model_serializer(mode="wrap")
    def _canonical(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`mesh` only where set: a spec without it hashes as before it existed."""
        out: dict[str, Any] = handler(self)
        if out.get("mesh") is None:
            out.pop("mesh", None)
        return out

    @classmethod
    def from_canonical(cls, doc: Any, where: str) -> ToleranceSpec:
        """The tolerance block of a spec as a record keeps it (canonical JSON), typed again;
        a record without one has the defaults."""
        try:
            return cls.model_validate(doc or {}, strict=False)
        except ValidationError as exc:
            raise SpecError(f"the tolerance block recorded in {where} is not one this repro "
                            f"reads: {exc.errors()[0]['msg']}", file=where) from None


class Spec(_Model):
    """A loaded, validated spec. `path` is the YAML file; `hash` its canonical hash."""

    repro: Literal[1] = Field(description="spec format version")
    name: str | None = None
    description: str | None = None
    code: CodeSpec
    data: dict[str, DataEntry] = Field(default_factory=dict)
    environment: EnvironmentSpec = EnvironmentSpec()
    seeds: dict[str, int] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    record: RecordSpec = RecordSpec()
    tolerance: ToleranceSpec = ToleranceSpec()
    timeout: float = Field(3600.0, gt=0, description="seconds before the run is killed")

    _path: Path | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not _NAME.match(v) or ".." in v or len(v) > 128):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_' and '-', no '..', at most 128 "
                             "(it names a directory)")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: dict[str, int]) -> dict[str, int]:
        for k, s in v.items():
            if not 0 <= s < 2**32:
                raise ValueError(f"seed {k!r} = {s} is outside 0 .. 2**32-1")
        return v

    @model_validator(mode="after")
    def _script(self) -> Spec:
        """A command's placeholders name keys the spec has; what only ctx offers is refused."""
        if self.code.command is None:
            return self
        from repro.child.command import unknown_placeholders

        unknown = unknown_placeholders(self.code.command, self.seeds, self.config, self.data)
        if unknown:
            raise ValueError(f"code.command: {'; '.join(unknown)}")
        needs_ctx = [key for key, used in (("record.grads", self.record.grads),
                                            ("record.checkpoints", self.record.checkpoints),
                                            ("record.trace", self.record.trace)) if used]
        if needs_ctx:
            raise ValueError(f"{', '.join(needs_ctx)} need a train(ctx) entrypoint (ctx.log_grads, "
                             "ctx.checkpoint, ctx.traced); an unmodified script (code.command) "
                             "reports only the metrics and weights it writes")
        if self.record.weights == "final" and self.code.outputs and self.code.outputs.weights is None:
            raise ValueError("record.weights is final (the default) but code.outputs names no "
                             "weights file; add code.outputs.weights or set record.weights: none")
        return self

    @model_validator(mode="after")
    def _invariance(self) -> Spec:
        """record.invariance's meshes fit environment.mesh: as many sizes as axes, the same
        number of devices."""
        inv, env = self.record.invariance, self.environment
        if inv is None:
            return self
        if not env.mesh:
            raise ValueError("record.invariance needs environment.mesh (the axes its meshes size), "
                             "e.g. `environment: {devices: 8, mesh: {data: 4, model: 2}}`")
        axes = list(env.mesh)
        for i, shape in enumerate(inv.meshes):
            where = f"record.invariance.meshes[{i}] {shape}"
            if len(shape) != len(axes):
                raise ValueError(f"{where} has {len(shape)} sizes but environment.mesh has "
                                 f"{len(axes)} axes ({', '.join(axes)}); give one size per axis, "
                                 "in that order")
            if any(n < 1 for n in shape):
                raise ValueError(f"{where}: sizes are at least 1")
            total = env.devices * env.processes
            if _product(shape) != total:
                given = (f"environment.devices is {total}" if env.processes == 1 else
                         f"devices x processes is {env.devices} x {env.processes} = {total}")
                raise ValueError(f"{where} has {_product(shape)} places but {given}; a mesh of "
                                 "the check uses the same devices")
        return self

    @model_validator(mode="after")
    def _metrics_listed(self) -> Spec:
        for name in self.tolerance.metrics:
            if self.record.metrics is not None and name not in self.record.metrics:
                raise ValueError(f"tolerance.metrics names {name!r}, which record.metrics "
                                 "does not list")
        return self

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def canonical(self) -> dict[str, Any]:
        """Normalised content (defaults filled in, JSON types): what the hash covers."""
        return self.model_dump(mode="json")

    @property
    def hash(self) -> str:
        text = json.dumps(self.canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def parse_spec(data: Any, *, file: str, lines: dict[tuple[Any, ...], int] | None = None,
               default_name: str | None = None, require_pins: bool = True) -> Spec:
    """Validate already-parsed YAML; raise SpecError naming file, key path and line."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise SpecError("a spec is a YAML mapping with a top-level `repro: 1`; this file holds "
                        f"{type(data).__name__ if data is not None else 'nothing'}", file=file, line=1)
    if "repro" not in data:
        raise SpecError("not a repro spec: the top-level key `repro: 1` is missing", file=file, line=1)
    if data.get("name") is None and default_name is not None:
        data = {**data, "name": default_name}
    code = data.get("code")
    if isinstance(code, dict) and "entrypoint" not in code and "command" not in code:
        raise SpecError("required key is missing: the training function as module:function (or "
                        "`code.command`, an unmodified script: docs/scripts.md)", file=file,
                        key_path="code.entrypoint", line=lines.get(("code",)))
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, file, lines) from None
    except RecursionError:
        raise SpecError("nested too deeply (a spec needs a few levels, not hundreds)",
                        file=file) from None
    try:
        _ = spec.hash  # every record stores it: a value JSON cannot hold must fail here, not later
    except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
        key = _unstorable(data, ())
        raise SpecError(f"holds a value that cannot be stored as JSON ({type(exc).__name__}: "
                        f"{exc}); use strings, numbers, booleans, null, lists and mappings",
                        file=file, key_path=".".join(str(p) for p in key) if key else None,
                        line=lines.get(key) if key else None) from None
    if require_pins:
        if spec.code.commit is None:
            raise SpecError("no commit pinned; run `repro pin SPEC` to pin the current HEAD",
                            file=file, key_path="code.commit", line=lines.get(("code",)))
        for name, entry in spec.data.items():
            if entry.sha256 is None:
                raise SpecError("no sha256 pinned; run `repro pin SPEC` (or `repro hash PATH`)",
                                file=file, key_path=f"data.{name}.sha256",
                                line=lines.get(("data", name)))
            if entry.dvc is not None and entry.dvc_md5 is None:
                raise SpecError("no DVC hash pinned; run `repro pin SPEC` (it reads it from the "
                                ".dvc file or dvc.lock at code.commit)", file=file,
                                key_path=f"data.{name}.dvc_md5", line=lines.get(("data", name)))
    return spec


def _unstorable(value: Any, path: tuple[Any, ...], depth: int = 0) -> tuple[Any, ...] | None:
    """Key path of the first value that JSON (UTF-8) cannot hold, if there is one."""
    if depth > 200:
        return path
    if isinstance(value, (bytes, bytearray)):
        return path
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeError:
            return path
        return None
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        if isinstance(k, str) and _unstorable(k, path) is not None:
            return path + (k,)
        found = _unstorable(v, path + (k,), depth + 1)
        if found is not None:
            return found
    return None


def load_spec(path: str | Path, *, require_pins: bool = True) -> Spec:
    """Read and validate a spec file. The default `name` is the file stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such spec file", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the spec: {exc}", file=str(path)) from None
    return parse_spec_text(text, path, require_pins=require_pins)


def parse_spec_text(text: str, path: Path, *, require_pins: bool = True) -> Spec:
    """A spec from the text of the file at `path` (read, or about to be written): errors name
    that file and its lines; the default `name` is the file stem."""
    data, lines = load_with_lines(text, str(path))
    spec = parse_spec(data, file=str(path), lines=lines, default_name=default_name(path),
                      require_pins=require_pins)
    spec._path = path.resolve()
    return spec


def default_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip(".-_") or "spec"
    return stem


def _spec_error(exc: ValidationError, file: str, lines: dict[tuple[Any, ...], int]) -> SpecError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and
                                               p.startswith(("function-", "literal["))))
    key_path = ".".join(str(p) for p in loc) or None
    line = None
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            line = lines[loc[:i]]
            break
    message = _describe(first)
    if len(errors) > 1:
        others = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {_describe(e)}" for e in errors[1:4])
        message += f" (and {len(errors) - 1} more: {others})"
    return SpecError(message, file=file, key_path=key_path, line=line)


def _describe(err: ErrorDetails) -> str:
    kind, msg = str(err["type"]), str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown key (check its spelling; see docs/spec.schema.json for the allowed keys)"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    got = err.get("input")
    if kind.endswith("_type") and not isinstance(got, (dict, list)):
        return f"{msg} (got {type(got).__name__} {got!r})"
    return msg


def spec_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Key-by-key difference of two canonical specs: [(dotted key, recorded, current)]."""
    out: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}.{k}" if prefix else str(k))
        elif a != b:
            out.append((prefix, None if a is _MISSING else a, None if b is _MISSING else b))

    walk(recorded, current, "")
    return out


_MISSING = object()


def spec_json_schema() -> dict[str, Any]:
    """The spec's JSON Schema (draft 2020-12), for editors and `docs/spec.schema.json`."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "repro experiment spec"
    return schema


def is_spec_text(text: str) -> bool:
    """Cheap test used by pytest collection: does this YAML file declare `repro:` at top level?"""
    return re.search(r"^repro\s*:", text, re.M) is not None


def find_specs(directory: str | Path) -> list[Path]:
    """Every spec file (YAML carrying a top-level `repro:`) below `directory`, sorted."""
    found = []
    for path in sorted(Path(directory).rglob("*")):
        if path.suffix in (".yaml", ".yml") and path.is_file():
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if is_spec_text(text):
                found.append(path)
    return found

"""The environment fingerprint, typed: what a run's process was (`Fingerprint`), which fields
decide the arithmetic, how two fingerprints differ, a kernel entry in words, the package-list
digest. Pure standard library, a shared leaf: the child takes the fingerprint
(repro/child/fingerprint.py) and writes it into run.json, the parent reads it back, records it
in record.json and compares.

JSON is the edge: `Fingerprint.from_json` checks a document's shape (an error names the field)
and remembers which keys it held and in what order, so `to_json` gives the same document back —
explicit nulls, absent keys and keys this version does not know included — and a record's
bytes and checksum survive being read and written again.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Fingerprint fields that decide the arithmetic. When all are equal, `tolerance.mode: auto`
# demands bitwise equality; any other field (hostname, CPU model name, python patch) only informs.
NUMERIC_FIELDS = ("jax", "jaxlib", "numpy", "backend", "device_kind", "device_count", "mesh",
                  "process_count", "cpus", "effective_isa", "l1d_cache", "settings", "prng_canary", "machine")
# (the host's raw `cpu_isa` flags only inform: what decides is the effective ISA, env/isa.py;
# `l1d_cache` is set only when the programs hold contractions summed in L1-sized slices, and
# `kernels` says which library kernels the programs call and what pins them: child/kernels.py)

# a contraction of at most this many terms is one slice on every CPU with an L1d of 32 KiB or
# more (repro/child/kernels.py); longer ones make the fingerprint carry `l1d_cache`
SLICE_SAFE_K = 256

# a determinism setting's value: environment variables are strings, jax.config options booleans
# or strings (other JSON scalars are read as they are)
SettingValue = str | bool | int | float | None


class FingerprintError(ValueError):
    """A fingerprint document of the wrong shape; the message names the field (a ValueError, so
    that pydantic reports it as the `fingerprint` key's error)."""


# -- reading JSON values, each check naming where it failed -------------------------------------
def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise FingerprintError(f"{where} is {_shown(value)}, not a string")
    return value


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FingerprintError(f"{where} is {_shown(value)}, not an integer")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise FingerprintError(f"{where} is {_shown(value)}, not true or false")
    return value


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise FingerprintError(f"{where} is {_shown(value)}, not a JSON object")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise FingerprintError(f"{where} is {_shown(value)}, not a list of strings")
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(value))


def _settings(value: object, where: str) -> dict[str, SettingValue]:
    doc = _object(value, where)
    for key, v in doc.items():
        if v is not None and not isinstance(v, (str, bool, int, float)):
            raise FingerprintError(f"{where}.{key} is {_shown(v)}, not a string, number or "
                                   "true/false")
    return dict(doc)


def _mesh(value: object, where: str) -> tuple[tuple[str, int], ...]:
    """A mesh as JSON has it: [[axis, size], ...] in the mesh's order (a list, not an object:
    {data: 2, model: 4} and {model: 4, data: 2} are different meshes)."""
    if not isinstance(value, (list, tuple)):
        raise FingerprintError(f"{where} is {_shown(value)}, not a list of [axis, size] pairs")
    out = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise FingerprintError(f"{where}[{i}] is {_shown(pair)}, not an [axis, size] pair")
        out.append((_str(pair[0], f"{where}[{i}][0]"), _int(pair[1], f"{where}[{i}][1]")))
    return tuple(out)


def _kernels(value: object, where: str) -> tuple[KernelEntry, ...]:
    if not isinstance(value, (list, tuple)):
        raise FingerprintError(f"{where} is {_shown(value)}, not a list of kernel entries")
    return tuple(v if isinstance(v, KernelEntry) else KernelEntry.from_json(v, f"{where}[{i}]")
                 for i, v in enumerate(value))


def _emitted(known: tuple[str, ...], keys: tuple[str, ...] | None, extra: Mapping[str, Any],
             is_set: Callable[[str], bool]) -> Iterator[str]:
    """The keys `to_json` writes, in order: those read (`keys`, explicit nulls kept), then
    known fields set since (dataclasses.replace), then unknown keys not read (none, unless
    `extra` was replaced). Built in code (`keys` None): the fields that are set."""
    read = keys or ()
    for key in read:
        if key in known or key in extra:
            yield key
    yield from (k for k in known if k not in read and is_set(k))
    yield from (k for k in extra if k not in read)


# -- the kernel entry -------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelEntry:
    """One kind of run-time-dispatched library kernel call in a run's programs
    (repro/child/kernels.py finds them): typed, because the comparison reads `pinned` and the
    verdict describes it. `longest_k` and `blocked` are written only when set (as the child
    always has), unless the entry was read with them."""

    library: str          # YNNPACK, XNNPACK, oneDNN, Eigen, or the custom call's target
    op: str               # the jax primitive it computes (from the op's metadata), or the HLO op
    count: int            # how many such calls the programs hold
    pinned: bool
    how: str              # what pins it, or why nothing does
    longest_k: int = 0    # dot/convolution: the longest contraction among them
    blocked: bool = False  # a contraction longer than SLICE_SAFE_K: summed in L1-sized slices
    extra: Mapping[str, Any] = field(default_factory=dict)   # keys this version does not know
    keys: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_json(cls, doc: object, where: str = "kernel") -> KernelEntry:
        entry = _object(doc, where)
        for name in ("library", "op", "count", "pinned", "how"):
            if name not in entry:
                raise FingerprintError(f"{where} has no {name!r}")
        return cls(library=_str(entry["library"], f"{where}.library"),
                   op=_str(entry["op"], f"{where}.op"),
                   count=_int(entry["count"], f"{where}.count"),
                   pinned=_bool(entry["pinned"], f"{where}.pinned"),
                   how=_str(entry["how"], f"{where}.how"),
                   longest_k=_int(entry.get("longest_k", 0), f"{where}.longest_k"),
                   blocked=_bool(entry.get("blocked", False), f"{where}.blocked"),
                   extra={k: v for k, v in entry.items() if k not in _KERNEL_FIELDS},
                   keys=tuple(entry))

    def to_json(self) -> dict[str, Any]:
        def is_set(name: str) -> bool:
            return name not in ("longest_k", "blocked") or bool(getattr(self, name))
        return {k: getattr(self, k) if k in _KERNEL_FIELDS else self.extra[k]
                for k in _emitted(_KERNEL_FIELDS, self.keys, self.extra, is_set)}


_KERNEL_FIELDS = ("library", "op", "count", "pinned", "how", "longest_k", "blocked")


def describe_mesh(mesh: Iterable[Sequence[Any]] | None) -> str:
    """A fingerprint's mesh as the spec writes it: `{data: 2, model: 4}` (its JSON, a list of
    [axis, size] pairs, or the typed tuple of them); `none` for a run without one."""
    if not mesh:
        return "none"
    return "{" + ", ".join(f"{name}: {size}" for name, size in mesh) + "}"


def describe_kernel(kernel: KernelEntry) -> str:
    """One kernel entry of a fingerprint, short: `YNNPACK dot_general ×7 pinned`."""
    k = f", contractions up to {kernel.longest_k}" if kernel.blocked else ""
    state = "pinned" if kernel.pinned else "unpinned"
    return f"{kernel.library} {kernel.op} ×{kernel.count} {state}{k}"


# -- the fingerprint --------------------------------------------------------------------------
@dataclass(frozen=True)
class Fingerprint:
    """Everything about a run's environment that its numbers may depend on (docs/records.md).
    Every field may be absent (None): records made by older versions lack some, and a forged
    or minimal run.json is read as far as it goes. `keys` is how the document was written, not
    a fact about the environment: equality leaves it out."""

    python: str | None = None
    jax: str | None = None
    jaxlib: str | None = None
    numpy: str | None = None
    backend: str | None = None
    device_kind: str | None = None
    device_count: int | None = None
    mesh: tuple[tuple[str, int], ...] | None = None   # environment.mesh: (axis, size) in order
    process_count: int | None = None              # environment.processes (> 1 only)
    cpus: int | None = None
    cpu_isa: tuple[str, ...] | None = None        # the CPU's flags, as CPUID reports them
    effective_isa: str | None = None              # what code generation may use (env/isa.py)
    kernels: tuple[KernelEntry, ...] | None = None   # None: the programs were not read
    l1d_cache: int | None = None                  # set when contractions are sliced by it
    kernels_error: str | None = None              # why the programs could not be read
    cpu_model: str | None = None
    machine: str | None = None
    os: str | None = None
    settings: Mapping[str, SettingValue] | None = None   # determinism settings in force
    prng_canary: str | None = None
    in_container: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)   # keys this version does not know
    keys: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_json(cls, doc: object, where: str = "fingerprint") -> Fingerprint:
        """A fingerprint from its JSON object (run.json, record.json); FingerprintError naming
        the field whose value has the wrong type."""
        given = _object(doc, where)
        values: dict[str, Any] = {}
        for name, read in FIELD_READERS.items():
            value = given.get(name)
            values[name] = None if value is None else read(value, f"{where}.{name}")
        extra = {k: v for k, v in given.items() if k not in FIELD_READERS}
        return cls(**values, extra=extra, keys=tuple(given))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: `from_json(doc).to_json() == doc`, key order included."""
        return {k: self.json_value(k) for k in _emitted(
            FIELDS, self.keys, self.extra, lambda name: getattr(self, name) is not None)}

    def json_value(self, key: str) -> Any:
        """One key's value as JSON has it (lists, objects), an unknown key's as it was read."""
        if key not in FIELDS:
            return self.extra.get(key)
        value = getattr(self, key)
        if key == "kernels" and value is not None:
            return [k.to_json() for k in value]
        if key == "cpu_isa" and value is not None:
            return list(value)
        if key == "settings" and value is not None:
            return dict(value)
        if key == "mesh" and value is not None:
            return [[name, size] for name, size in value]
        return value

    @property
    def xla_flags(self) -> str:
        """The XLA_FLAGS the run had ("" when the settings do not say)."""
        flags = (self.settings or {}).get("XLA_FLAGS")
        return flags if isinstance(flags, str) else ""

    def changes(self, current: Fingerprint) -> list[tuple[str, object, object, bool]]:
        """[(field, self's, current's, numeric?)] for every field that differs, sorted by
        field, values as JSON has them; settings key by key, kernels described."""
        names = sorted({k for fp in (self, current) for k in fp.to_json()})
        out: list[tuple[str, object, object, bool]] = []
        for key in names:
            a, b = self.json_value(key), current.json_value(key)
            if key == "kernels":
                a = None if self.kernels is None else [describe_kernel(k) for k in self.kernels]
                b = None if current.kernels is None else [describe_kernel(k) for k in current.kernels]
            if key == "settings" and self.settings is not None and current.settings is not None:
                sa, sb = self.settings, current.settings
                out += [(f"settings.{k}", sa.get(k), sb.get(k), True)
                        for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
            elif a != b:
                out.append((key, a, b, key in NUMERIC_FIELDS))
        return out


FIELD_READERS: dict[str, Callable[[object, str], Any]] = {
    "python": _str, "jax": _str, "jaxlib": _str, "numpy": _str, "backend": _str,
    "device_kind": _str, "device_count": _int, "mesh": _mesh, "process_count": _int,
    "cpus": _int, "cpu_isa": _strings,
    "effective_isa": _str, "kernels": _kernels, "l1d_cache": _int, "kernels_error": _str,
    "cpu_model": _str, "machine": _str, "os": _str, "settings": _settings,
    "prng_canary": _str, "in_container": _bool}
# the known fields, in the order the child writes them (tests/test_fingerprint.py holds
# FIELD_READERS to the same list)
FIELDS = tuple(f.name for f in dataclasses.fields(Fingerprint) if f.name not in ("extra", "keys"))


def packages_digest(packages: list[str]) -> str:
    """sha256 of an installed-package list (`installed_packages`), one line per package."""
    return hashlib.sha256("\n".join(packages).encode()).hexdigest()

"""A record's blobs (docs/records.md, docs/store.md): what record.json points to by sha256
instead of holding it — kept training states (one blob per leaf) and the arrays too large for
git (weights, kept gradients or op traces whose data exceed 1 MiB).

Small state leaves live in the record's own `blobs/` (in git); large blobs of either kind live
in the machine's store (`<cache>/store`, repro/store/blobs.py), are shared through the project's
remote (repro/store/sync.py) and are fetched from it by a verify before anything trains. Every
blob is re-hashed when read: a damaged one is an error naming it, never used.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from repro.errors import RecordError
from repro.store.blobs import GIT_BLOB_MAX, BlobStore, machine_store

if TYPE_CHECKING:
    from repro.child.state import LeafKind

BLOBS_DIR = "blobs"             # the record's own content-addressed blobs (checkpoints, in git)
CHECKPOINTS = "checkpoints/"    # array keys of kept states: checkpoints/<step>/<leaf path>


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ArrayEntry(_Part):
    """One recorded array: its shape and dtype and, when its data exceed GIT_BLOB_MAX, the
    pointer to its blob in the machine's store (sha256 of its .npy bytes, their size) — then it
    is not in arrays.npz. Records made before pointers existed have none: all in arrays.npz."""

    shape: list[int]
    dtype: str
    sha256: str | None = None
    size: int | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # an array in arrays.npz is written as before: {shape, dtype}
        return {k: v for k, v in handler(self).items() if v is not None}


class CheckpointLeaf(_Part):
    """One leaf of a kept state: how to give it back (kind, weak) and its blob (sha256 of its
    .npy bytes, their size) in the record's `blobs/` (place "record", in git) or the machine's
    store (place "store", too large for git)."""

    path: str
    kind: str
    weak: bool
    sha256: str
    size: int
    dtype: str
    shape: list[int]
    place: Literal["record", "store"]
    sharding: list[Any] | str | None = None   # a sharded jax.Array's PartitionSpec (JSON)

    @model_serializer(mode="wrap")
    def _omit_unsharded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a leaf on one device is written as before: no `sharding` key
        out: dict[str, Any] = handler(self)
        if out.get("sharding") is None:
            out.pop("sharding", None)
        return out


class CheckpointsInfo(_Part):
    """The states ctx.checkpoint kept, by step (docs/checkpoints.md)."""

    steps: list[int]
    states: dict[str, list[CheckpointLeaf]]

    def leaves(self, step: int) -> list[CheckpointLeaf]:
        return self.states[str(step)]


@dataclass(frozen=True)
class BlobRef:
    """One blob a record points to, and what in the record needs it (for messages)."""

    sha256: str
    size: int
    place: str            # "record" (the record's blobs/, in git) or "store" (the machine's)
    record: Path
    what: str             # "the state kept at step 100, leaf frozen" | "the array weights/emb"

    def local(self) -> BlobStore:
        return BlobStore(self.record / BLOBS_DIR) if self.place == "record" else machine_store()

    def named(self) -> str:
        return f"blob {self.sha256} ({self.size:,} bytes; {self.record}: {self.what})"


def blob_refs(directory: Path, checkpoints: CheckpointsInfo | None,
              index: Mapping[str, ArrayEntry]) -> list[BlobRef]:
    """Every blob a record points to: its kept states' leaves, then its arrays in the store."""
    out = []
    if checkpoints is not None:
        out = [BlobRef(leaf.sha256, leaf.size, leaf.place, directory,
                       f"the state kept at step {step}, leaf {leaf.path}")
               for step in checkpoints.steps for leaf in checkpoints.leaves(step)]
    out += [BlobRef(e.sha256, e.size or 0, "store", directory, f"the array {key}")
            for key, e in index.items() if e.sha256 is not None]
    return out


def store_large_arrays(arrays: Mapping[str, Any]) -> dict[str, ArrayEntry]:
    """The index of `arrays`; each whose data exceed GIT_BLOB_MAX is put in the machine's store
    (as .npy bytes, named by sha256) and indexed with that pointer: it stays out of arrays.npz."""
    from repro.store.blobs import array_bytes

    index = {}
    for key, arr in sorted(arrays.items()):
        entry = ArrayEntry(shape=list(arr.shape), dtype=str(arr.dtype))
        if arr.nbytes > GIT_BLOB_MAX:
            data = array_bytes(arr)
            entry = entry.model_copy(update={"sha256": machine_store().put(data), "size": len(data)})
        index[key] = entry
    return index


def read_large_arrays(directory: Path, index: Mapping[str, ArrayEntry]) -> dict[str, Any]:
    """The arrays of a record that live in the machine's store, each blob re-hashed and its
    dtype and shape checked against the index (RecordError naming the array otherwise)."""
    from repro.store.blobs import bytes_array

    out = {}
    for key, e in index.items():
        if e.sha256 is None:
            continue
        arr = bytes_array(machine_store().get(e.sha256, f"{directory}: the array {key}"))
        if list(arr.shape) != e.shape or str(arr.dtype) != e.dtype:
            raise RecordError(f"{directory}: the array {key} (blob {e.sha256[:12]}…) holds "
                              f"{arr.dtype}{list(arr.shape)}, record.json says {e.dtype}{e.shape}; "
                              "record again")
        out[key] = arr
    return out


def write_state_blobs(staging: Path, states: Mapping[str, Any],
                      checkpoints: Mapping[int, list[LeafKind]]) -> CheckpointsInfo:
    """Each kept leaf as a blob: in the record's blobs/ (git) up to GIT_BLOB_MAX, else in the
    machine's store. Equal leaves (a frozen layer, the runs of a noise floor) are one blob."""
    from repro.store.blobs import array_bytes

    own = BlobStore(staging / BLOBS_DIR)
    out: dict[str, list[CheckpointLeaf]] = {}
    for step in sorted(checkpoints):
        leaves = []
        for kind in checkpoints[step]:
            arr = states[f"{CHECKPOINTS}{step}/{kind.path}"]
            data = array_bytes(arr)
            place: Literal["record", "store"] = "record"
            if len(data) <= GIT_BLOB_MAX:
                sha = own.put(data)
            else:
                place, sha = "store", machine_store().put(data)
            leaves.append(CheckpointLeaf(path=kind.path, kind=kind.kind, weak=kind.weak, sha256=sha,
                                         size=len(data), dtype=str(arr.dtype),
                                         shape=list(arr.shape), place=place,
                                         sharding=_json_spec(kind.sharding)))
        out[str(step)] = leaves
    if (staging / BLOBS_DIR).exists():
        for d in [staging / BLOBS_DIR, *(staging / BLOBS_DIR).iterdir()]:
            os.chmod(d, 0o755)
    return CheckpointsInfo(steps=sorted(checkpoints), states=out)


def _json_spec(spec: Any) -> Any:
    """A LeafKind's sharding (tuples) as record.json holds it (lists)."""
    if isinstance(spec, tuple):
        return [list(e) if isinstance(e, tuple) else e for e in spec]
    return spec


def read_leaves(directory: Path, checkpoints: CheckpointsInfo, step: int) -> dict[str, Any]:
    """The state kept at `step`, leaf path -> array, every blob re-hashed (RecordError naming
    the step and leaf of a missing or damaged one)."""
    from repro.store.blobs import bytes_array

    out = {}
    for leaf in checkpoints.leaves(step):
        store = BlobStore(directory / BLOBS_DIR) if leaf.place == "record" else machine_store()
        out[leaf.path] = bytes_array(store.get(leaf.sha256, f"{directory}: state at step {step}, "
                                                               f"leaf {leaf.path}"))
    return out


def absent_blobs(directory: Path, checkpoints: CheckpointsInfo | None,
                 index: Mapping[str, ArrayEntry]) -> list[BlobRef]:
    """The store blobs the record points to that this machine lacks (or holds damaged, or as a
    link: a store blob is re-hashed here), for the caller to fetch (repro/store/sync.py). A
    missing blob of the record's own `blobs/` is an error naming it: it comes from git, not a
    remote. Nothing is fetched here."""
    absent = []
    for ref in blob_refs(directory, checkpoints, index):
        if ref.local().intact(ref.sha256) if ref.place == "store" else ref.local().has(ref.sha256):
            continue
        if ref.place == "store":
            absent.append(ref)
            continue
        raise RecordError(f"{directory}: {ref.what} (blob {ref.sha256[:12]}…, {ref.size:,} bytes) "
                          "is missing from the record's blobs/ directory: restore it from git")
    return absent

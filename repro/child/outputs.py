"""Reading what an unmodified script wrote (`code.outputs`, docs/scripts.md), child side.

Metrics: JSON Lines, CSV or TensorBoard event files, as (where, step, {name: value}) rows the
runner logs like `ctx.log` calls. Weights: an Orbax checkpoint, `.npz` or safetensors, as a pytree
the runner flattens like a returned params pytree. Every error names the file, and the line (or
row) where the file has lines. The readers of binary formats (tensorboard, orbax, safetensors)
are imported only when that format is used, and only here, in the child.
"""
from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STEP = "step"
Row = tuple[str, int, dict[str, float]]   # (file:line, step, metric -> value)


class OutputError(Exception):
    """A declared output is missing or cannot be read; the message names the file (and line)."""


def resolve(workdir: Path, rel: str) -> Path:
    """The output's path inside the working directory: a link out of it is refused (the spec's
    path cannot leave it, and neither may what the script made of it)."""
    path = workdir / rel
    real, root = os.path.realpath(path), os.path.realpath(workdir)
    if real != root and not real.startswith(root + os.sep):
        raise OutputError(f"{rel}: resolves to {real}, outside the script's working directory")
    if os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
        raise OutputError(f"{rel}: not a regular file or directory (a FIFO, socket or device would "
                          "block or lie); the script must write its outputs as files")
    return path


# -- metrics ---------------------------------------------------------------------------------------

def read_metrics(path: Path, fmt: str, shown: str) -> list[Row]:
    if fmt == "jsonl":
        return list(_jsonl(path, shown))
    if fmt == "csv":
        return list(_csv(path, shown))
    if fmt == "tensorboard":
        return _tensorboard(path, shown)
    raise OutputError(f"{shown}: unknown metrics format {fmt!r}")


def _number(value: Any, where: str, key: str) -> float:
    if not isinstance(value, (int, float)):   # booleans too: 0 or 1, as ctx.log takes them
        raise OutputError(f"{where}: {key!r} is {type(value).__name__} {value!r:.60}, not a number "
                          f"(every key but {STEP!r} is a metric, and metrics are numbers)")
    try:
        return float(value)
    except OverflowError:   # an integer of hundreds of digits
        raise OutputError(f"{where}: {key!r} is an integer of {len(str(value))} digits, too large "
                          "for a float") from None


def _step(value: Any, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or
                                       (isinstance(value, float) and value.is_integer())):
        raise OutputError(f"{where}: {STEP!r} is {value!r:.60}, not an integer step")
    return int(value)


def _jsonl(path: Path, shown: str) -> Iterator[Row]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{shown}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise OutputError(f"{where}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 4]!r})") \
                    from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except RecursionError:
                raise OutputError(f"{where}: JSON nested too deeply to be a metrics line") from None
            except ValueError as exc:
                raise OutputError(f"{where}: not a JSON object ({exc}): {line.strip()[:80]!r}") from None
            if not isinstance(obj, dict):
                raise OutputError(f"{where}: a metrics line is a JSON object, got "
                                  f"{type(obj).__name__}")
            if STEP not in obj:
                raise OutputError(f"{where}: no {STEP!r} key (keys: {', '.join(sorted(obj))})")
            step = _step(obj.pop(STEP), where)
            yield where, step, {k: _number(v, where, k) for k, v in obj.items()}


def _csv(path: Path, shown: str) -> Iterator[Row]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise OutputError(f"{shown}:1: empty; a metrics CSV starts with a header naming {STEP!r}")
        if STEP not in header:
            raise OutputError(f"{shown}:1: the header has no {STEP!r} column ({', '.join(header)})")
        for row in reader:
            where = f"{shown}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(header):
                raise OutputError(f"{where}: {len(row)} fields, the header has {len(header)}")
            cells = dict(zip(header, row, strict=True))
            try:
                step = int(cells.pop(STEP))
            except ValueError:
                raise OutputError(f"{where}: {STEP!r} is {row[header.index(STEP)]!r}, not an "
                                  "integer step") from None
            values = {}
            for key, cell in cells.items():
                if cell.strip() == "":
                    continue   # a sparse column (logged at other steps)
                try:
                    values[key] = float(cell)
                except ValueError:
                    raise OutputError(f"{where}: {key!r} is {cell!r:.60}, not a number") from None
            yield where, step, values


def _event_files(path: Path, shown: str) -> list[tuple[str, Path]]:
    """(tag prefix, file): a log directory's event files, those of a sub-run (`train/`) with
    its name as the tag prefix, in name order (which is write order)."""
    if path.is_file():
        return [("", path)]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rel = os.path.relpath(dirpath, path)
        for name in sorted(dirnames + filenames):
            entry = Path(dirpath, name)
            if entry.is_symlink():   # never followed: a link may point anywhere on the host
                raise OutputError(f"{shown}/{entry.relative_to(path)}: a link in a TensorBoard "
                                  "directory is refused; its event files must be the run's own")
        for name in sorted(filenames):
            entry = Path(dirpath, name)
            if "tfevents" in name and stat.S_ISREG(os.lstat(entry).st_mode):   # a FIFO would block
                found.append(("" if rel == "." else rel.replace(os.sep, "/") + "/", entry))
    if not found:
        raise OutputError(f"{shown}: no TensorBoard event file (events.out.tfevents.*) in it")
    return found


def _tensorboard(path: Path, shown: str) -> list[Row]:
    """Scalar summaries by tag and step, read with TensorBoard's own event file loader
    (`simple_value` summaries are migrated to scalar tensors by it)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    rows: list[Row] = []
    for prefix, file in _event_files(path, shown):
        where = f"{shown}/{file.relative_to(path)}" if file != path else shown
        _check_records(file, where)
        try:
            for event in EventFileLoader(str(file)).Load():
                for value in event.summary.value:
                    if value.metadata.plugin_data.plugin_name != "scalars":
                        continue
                    arr = tensor_util.make_ndarray(value.tensor)
                    if arr.size != 1:
                        raise OutputError(f"{where}: scalar {value.tag!r} at step {event.step} "
                                          f"has shape {arr.shape}")
                    rows.append((f"{where} (tag {prefix + value.tag!r})", int(event.step),
                                 {prefix + value.tag: float(arr.reshape(()))}))
        except OutputError:
            raise
        except Exception as exc:   # the loader's own errors: a damaged event file
            raise OutputError(f"{where}: not a readable TensorBoard event file "
                              f"({type(exc).__name__}: {exc})") from None
    if not rows:
        raise OutputError(f"{shown}: holds no scalar summaries")
    rows.sort(key=lambda r: r[1])   # stable: a tag's values keep their order within a step
    return rows


def _check_records(file: Path, where: str) -> None:
    """Every record of the event file intact (lengths and crc32s): TensorBoard's loader reads a
    damaged or cut file as one still being written and stops quietly, but a script that has
    ended wrote all it will; a damaged file is an error naming its first bad record."""
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    _check_lengths(file, where)
    reader = pywrap_tensorflow.PyRecordReader_New(str(file), 0, None)
    n = 0
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return
        except errors.DataLossError as exc:
            raise OutputError(f"{where}: damaged TensorBoard event file at record {n + 1} "
                              f"({str(exc).replace(str(file), '').strip()})") from None
        n += 1


def _check_lengths(file: Path, where: str) -> None:
    """Each record's claimed length fits in what the file holds, before any reader allocates
    it: a record claiming 2**62 bytes is damage, not a request for memory."""
    import struct

    size, pos, n = file.stat().st_size, 0, 0
    with open(file, "rb") as f:
        while pos + 12 <= size:
            (length,) = struct.unpack("<Q", f.read(12)[:8])
            if length > size:   # a cut record (shorter) is the loader's to name
                raise OutputError(f"{where}: damaged TensorBoard event file at record {n + 1} (it "
                                  f"claims {length} bytes; the whole file holds {size})")
            f.seek(length + 4, os.SEEK_CUR)
            pos, n = pos + 16 + length, n + 1


# -- weights ---------------------------------------------------------------------------------------

def read_weights(path: Path, fmt: str, shown: str) -> Any:
    """The weights as a pytree of arrays (a flat {path: array} mapping for npz/safetensors)."""
    try:
        if fmt == "npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if fmt == "safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            bad = [k for k in tensors if k.startswith(("/", "..")) or ".." in k.split("/")]
            if bad:
                raise OutputError(f"{shown}: tensor name {bad[0]!r} is refused (a leading '/' or a "
                                  "'..' segment would make a weights path that climbs)")
            return tensors
        if fmt == "orbax":
            return _orbax(path, shown)
    except OutputError:
        raise
    except Exception as exc:   # each library's own errors: a damaged or foreign file
        raise OutputError(f"{shown}: not a readable {fmt} file ({type(exc).__name__}: "
                          f"{str(exc)[:300]})") from None
    raise OutputError(f"{shown}: unknown weights format {fmt!r}")


def _orbax_item(path: Path, shown: str) -> Path:
    """The PyTree checkpoint in `path`: the directory itself, or a CheckpointManager's latest
    step (`<step>/` or `<step>/<item>/`)."""
    if (path / "_METADATA").is_file():
        return path
    steps = sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if not steps:
        raise OutputError(f"{shown}: not an Orbax checkpoint (no _METADATA) nor a "
                          "CheckpointManager directory (no numbered step directories)")
    latest = steps[-1][1]
    if (latest / "_METADATA").is_file():
        return latest
    items = [p for p in sorted(latest.iterdir()) if (p / "_METADATA").is_file()]
    if len(items) != 1:
        raise OutputError(f"{shown}/{latest.name}: holds {len(items)} PyTree checkpoint items "
                          f"({', '.join(p.name for p in items) or 'none'}); point "
                          "code.outputs.weights.path at the one that holds the weights")
    return items[0]


def _orbax(path: Path, shown: str) -> Any:
    """Restore without a target (the checkpoint's own tree structure), as numpy arrays."""
    import warnings

    import numpy as np
    import orbax.checkpoint as ocp

    if not path.is_dir():
        raise OutputError(f"{shown}: an Orbax checkpoint is a directory; this is not one")
    item = _orbax_item(path, shown)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "sharding info not provided": none is wanted
        tree = ocp.PyTreeCheckpointer().restore(str(item.resolve()))
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x) if hasattr(x, "shape") else x, tree)


"""A remote for the blob store: the same layout (`<prefix>/<2 hex>/<62 hex>`) at any fsspec URL
(docs/store.md).

Named in the pyproject.toml of the repository holding the specs:

    [tool.repro]
    store = "s3://bucket/prefix"            # file://, s3://, gs://, http(s):// (read-only)
    store_options = {anon = false}          # keyword arguments for fsspec's filesystem

`$REPRO_STORE` (a URL) overrides the file. For s3:// the standard AWS variables reach s3fs
through botocore (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, profiles);
`store_options = {endpoint_url = "http://127.0.0.1:9000"}` is the same in the file.

fsspec (and s3fs, gcsfs for their schemes) are imported only when a remote is used: they are
the optional `store` extra. Guarantees: an upload never shows a partial blob under its name
(object stores make a PUT — also a multipart one — visible only whole; elsewhere the blob is
written to a temporary name beside its place and renamed); a download is hashed as it is
written and renamed into the local store only when the hash is the blob's name.
"""
from __future__ import annotations

import base64
import os
import re
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.errors import StoreError
from repro.store.blobs import CHUNK, BlobStore

ONE_GET_MAX = 64 << 20   # a blob this small (size known from its pointer) is fetched in one GET
S3_PART = 50 << 20       # s3fs's multipart part size, passed explicitly: a blob under two parts
                         # goes in one PUT, which carries its sha256 for the server to check

_SHA = re.compile(r"^[0-9a-f]{64}$")
# Object stores: a PUT (single or multipart) becomes visible whole, at once, or not at all.
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "oss"}
_READ_ONLY = {"http", "https"}
STORE_ENV = "REPRO_STORE"


@dataclass(frozen=True)
class RemoteConfig:
    """Where a project's remote store is: an fsspec URL, the filesystem's options, and where
    the setting came from (for messages)."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def key(self) -> tuple[str, str]:
        return self.url, repr(sorted(self.options.items()))


def _repro_table(repo_root: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """`[tool.repro]` of the repository's pyproject.toml (empty without one), its
    store_options, and the file's path. StoreError when it cannot be read."""
    pyproject = Path(repo_root) / "pyproject.toml"
    table: dict[str, Any] = {}
    if pyproject.is_file():
        try:
            doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise StoreError(f"{pyproject} cannot be read ({exc}); fix it to use its "
                             "[tool.repro] store") from None
        table = doc.get("tool", {}).get("repro", {}) or {}
    options = table.get("store_options", {})
    if not isinstance(options, dict):
        raise StoreError(f"{pyproject}: [tool.repro] store_options must be a table of fsspec "
                         f"options, not {type(options).__name__}")
    return table, options, pyproject


def remote_config(repo_root: Path) -> RemoteConfig | None:
    """The remote of the repository at `repo_root`: `$REPRO_STORE`, else `[tool.repro] store`
    in its pyproject.toml, else None. StoreError when the file's setting is malformed."""
    table, options, pyproject = _repro_table(repo_root)
    env = os.environ.get(STORE_ENV)
    if env:
        return RemoteConfig(env, dict(options), f"${STORE_ENV}")
    url = table.get("store")
    if url is None:
        return None
    if not isinstance(url, str) or "://" not in url and not url.startswith("/"):
        raise StoreError(f"{pyproject}: [tool.repro] store must be an fsspec URL "
                         f"(s3://bucket/prefix, file:///path, ...), not {url!r}")
    return RemoteConfig(url, dict(options), str(pyproject))


def url_options(url: str, repo_root: Path) -> dict[str, Any]:
    """fsspec options for a data URL (`data: NAME: url:`): the project's `[tool.repro]
    store_options` when the URL has the scheme of its store (s3:// data beside an s3:// store
    reaches the same endpoint), none otherwise (the standard variables, `AWS_ENDPOINT_URL` and
    the rest, still apply)."""
    table, options, _ = _repro_table(repo_root)
    store = os.environ.get(STORE_ENV) or table.get("store")
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if isinstance(store, str) and (store.split("://", 1)[0] if "://" in store else "file") == scheme:
        return dict(options)
    return {}


def url_fs(url: str, options: dict[str, Any], what: str) -> tuple[Any, str]:
    """fsspec's filesystem for `url` and the path in it; StoreError naming `what` when fsspec
    or the scheme's package is missing, or the URL cannot be opened."""
    try:
        import fsspec
    except ImportError:
        raise StoreError(f"{what} needs fsspec: pip install 'repro[store]' (fsspec, s3fs)") from None
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise StoreError(f"{what} needs a package for its scheme: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{what} cannot be opened: {exc}") from None
    return fs, str(path)


def find_remote_config(start: Path) -> RemoteConfig | None:
    """The remote for a file under a repository: `$REPRO_STORE`, else the setting in the first
    pyproject.toml found walking up from `start` (a record directory: records live in
    `<repo>/fixtures/records`)."""
    if os.environ.get(STORE_ENV):
        return remote_config(Path(start))
    for d in [Path(start).resolve(), *Path(start).resolve().parents]:
        if (d / "pyproject.toml").is_file():
            return remote_config(d)
        if (d / ".git").exists():
            break
    return None


def _unsigned_when_checksummed(request: Any, **_: Any) -> None:
    """botocore's before-sign hook (Remote._checksum_vouches): a PUT with an
    x-amz-checksum-sha256 header is signed without hashing its payload, unless the client's
    config says otherwise."""
    import botocore.config

    if "x-amz-checksum-sha256" not in request.headers:
        return
    config = request.context.get("client_config")
    s3 = dict(getattr(config, "s3", None) or {})
    if config is None or "payload_signing_enabled" in s3:
        return
    s3["payload_signing_enabled"] = False
    request.context["client_config"] = config.merge(botocore.config.Config(s3=s3))


def _s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs options for a store remote: the project's, plus botocore's response checksums off
    unless the project set them. Every blob read is re-hashed with sha256 against its name
    (`download`, `remote_hash`), so botocore's CRC32 of the same bytes is a second pass that
    proves less; a push sends each blob's sha256 instead (`upload`). Older botocore (before
    the setting existed) checks nothing and is left as it is."""
    import botocore.config

    if "response_checksum_validation" not in getattr(botocore.config.Config, "OPTION_DEFAULTS", {}):
        return options
    config_kwargs = dict(options.get("config_kwargs") or {})
    config_kwargs.setdefault("response_checksum_validation", "when_required")
    return {**options, "config_kwargs": config_kwargs}


class Remote:
    """Blobs under an fsspec URL, named by sha256 as in a BlobStore."""

    def __init__(self, config: RemoteConfig):
        self.config = config
        options = config.options
        self.s3 = config.url.split("://", 1)[0] in ("s3", "s3a")
        if self.s3:
            try:
                options = _s3_options(options)
            except ImportError:
                pass   # no botocore: url_fs names the missing package (s3fs)
        fs, root = url_fs(config.url, options, f"the store remote {config.url} ({config.source})")
        self.fs: Any = fs
        self.root: str = str(root).rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
        self.protocol: str = str(protocols[0])
        self.atomic_put = bool(set(protocols) & _ATOMIC_PUT)
        self.read_only = bool(set(protocols) & _READ_ONLY)
        self._hooked = False

    def path(self, sha256: str) -> str:
        if not _SHA.match(sha256):
            raise StoreError(f"{sha256!r} is not a sha256 blob name")
        return f"{self.root}/{sha256[:2]}/{sha256[2:]}"

    def url(self, sha256: str) -> str:
        return str(self.fs.unstrip_protocol(self.path(sha256)))

    def size(self, sha256: str) -> int | None:
        """The size of the blob at the remote, None when it is not there."""
        try:
            info = self.fs.info(self.path(sha256))
        except FileNotFoundError:
            return None
        except Exception as exc:   # the filesystem's client: OSError, botocore's, a bad option
            if not remote_failure(exc):
                raise
            raise self._error("cannot reach", exc) from None
        size = info.get("size")
        return int(size) if size is not None and info.get("type", "file") == "file" else None

    def listing(self) -> dict[str, int]:
        """Every blob at the remote, sha256 -> size (one listing; temporary names skipped)."""
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:   # the filesystem's client: OSError, botocore's, a bad option
            if not remote_failure(exc):
                raise
            raise self._error("cannot list", exc) from None
        out: dict[str, int] = {}
        for path, info in found.items():
            parts = str(path).rstrip("/").split("/")
            if len(parts) >= 2 and _SHA.match(parts[-2] + parts[-1]) and len(parts[-2]) == 2:
                out[parts[-2] + parts[-1]] = int(info.get("size") or 0)
        return out

    def upload(self, sha256: str, data: bytes) -> None:
        """Put a blob's bytes under its name; never visible partly written."""
        self._writable()
        target = self.path(sha256)
        try:
            if self.s3 and len(data) < 2 * S3_PART:
                self._checksum_vouches()
                # one PUT, with the blob's sha256 (its name) as its checksum: S3 refuses bytes
                # that do not hash to it, and botocore need not compute a CRC32 of its own
                checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
                self.fs.pipe_file(target, data, chunksize=S3_PART, ChecksumSHA256=checksum)
                return
            if self.atomic_put:
                self.fs.pipe_file(target, data, **({"chunksize": S3_PART} if self.s3 else {}))
                return
            self._put_then_rename(sha256, lambda tmp: self.fs.pipe_file(tmp, data))
        except Exception as exc:   # the filesystem's client: OSError, botocore's, a bad option
            if not remote_failure(exc):
                raise
            raise self._error(f"cannot upload blob {sha256[:12]}… to", exc) from None

    def _put_then_rename(self, sha256: str, put: Callable[[str], object]) -> None:
        """On a filesystem whose writes can be seen part-done: `put` the bytes under a
        temporary name beside the blob's, then rename it into place."""
        target = self.path(sha256)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.fs.isdir(target):   # a move onto it would put the blob inside it, "sent"
            raise StoreError(f"the store remote {self.config.url}: a directory stands at blob "
                             f"{sha256[:12]}…'s name ({self.url(sha256)}); remove it and push again")
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            put(tmp)
            self.fs.mv(tmp, target)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm_file(tmp)

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"the store remote {self.config.url} is read-only ({self.protocol}): "
                             "push to an s3://, gs:// or file:// remote")

    def upload_file(self, sha256: str, path: Path, size: int) -> None:
        """Put a file's bytes under `sha256`, re-hashed first: CorruptBlob (nothing sent) when
        they do not hash to it. Up to two S3 parts it goes as a blob does (one checksummed
        PUT); larger, it is streamed from the file (multipart on object stores, temporary name
        and rename elsewhere), so a large data file is never read into memory whole."""
        from repro.store.blobs import hash_file

        if size < 2 * S3_PART:
            import hashlib

            data = path.read_bytes()
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise CorruptBlob(sha256, str(path), actual)
            self.upload(sha256, data)
            return
        actual = hash_file(path)
        if actual != sha256:
            raise CorruptBlob(sha256, str(path), actual)
        self._writable()
        target = self.path(sha256)
        try:
            if self.atomic_put:
                self.fs.put_file(str(path), target, **({"chunksize": S3_PART} if self.s3 else {}))
                return
            self._put_then_rename(sha256, lambda tmp: self.fs.put_file(str(path), tmp))
        except Exception as exc:   # the filesystem's client: OSError, botocore's, a bad option
            if not remote_failure(exc):
                raise
            raise self._error(f"cannot upload {path} (blob {sha256[:12]}…) to", exc) from None

    def _checksum_vouches(self) -> None:
        """Let a PUT that carries the blob's sha256 as its checksum go without botocore hashing
        the body a second time to sign it. Over https botocore does this on its own (a signed
        checksum header vouches for the body); over plain http it signs the payload as well,
        one sha256 more of every byte (~0.6 ms/MB here). The checksum header is itself signed,
        so a server that checks either checks the same bytes, and every read of a blob re-hashes
        it against its name. A project's own `payload_signing_enabled` wins."""
        if self._hooked:
            return
        self._hooked = True
        try:
            self.fs.connect()
            events = self.fs.s3.meta.events
        except (AttributeError, OSError):   # no client to hook: botocore signs, as before
            return
        events.register("before-sign.s3.PutObject", _unsigned_when_checksummed,
                        unique_id="repro-unsigned-when-checksummed")

    def chunks(self, sha256: str, size: int | None = None) -> Iterator[bytes]:
        """The blob's bytes from the remote, in pieces (FileNotFoundError when absent). A blob
        whose size is known and small comes in one GET (opening a file costs a HEAD first).
        With a known size at most size + 1 bytes are read: a longer blob (a remote that streams
        without end) is corrupt, and its hash says so, without filling memory or disk."""
        if size is not None and size <= ONE_GET_MAX:
            yield self.fs.cat_file(self.path(sha256), start=0, end=size + 1)[: size + 1]
            return
        left = None if size is None else size + 1
        with self.fs.open(self.path(sha256), "rb", block_size=CHUNK) as f:
            while left is None or left > 0:
                chunk = f.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def download(self, sha256: str, store: BlobStore, size: int | None = None) -> None:
        """Fetch a blob into `store`, re-hashed before it is renamed into place: StoreError
        naming it, its URL, the expected and the actual sha256 when the remote's copy is
        corrupt (nothing is kept), or when the remote lacks it."""
        try:
            actual = store.install(sha256, self.chunks(sha256, size))
        except FileNotFoundError:
            raise BlobMissing(sha256, self.url(sha256)) from None
        except Exception as exc:   # the filesystem's client: OSError, botocore's, a bad option
            if not remote_failure(exc):
                raise
            raise self._error(f"cannot download blob {sha256[:12]}… from", exc) from None
        if actual != sha256:
            raise CorruptBlob(sha256, self.url(sha256), actual)

    def remote_hash(self, sha256: str) -> str:
        """The sha256 of the remote's copy (streamed, nothing kept)."""
        import hashlib

        digest = hashlib.sha256()
        try:
            for chunk in self.chunks(sha256):
                digest.update(chunk)
        except Exception as exc:
            if not remote_failure(exc) or isinstance(exc, FileNotFoundError):
                raise
            raise self._error(f"cannot read blob {sha256[:12]}… from", exc) from None
        return digest.hexdigest()

    def _error(self, what: str, exc: BaseException) -> StoreError:
        hint = ""
        if isinstance(exc, TypeError):
            hint = " (an option in `store_options` that this filesystem does not take?)"
        elif type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
            hint = " (is the endpoint up, and its URL right?)"
        return StoreError(f"{what} the store remote {self.config.url} ({self.config.source}): "
                          f"{type(exc).__name__}: {exc}{hint}")


def remote_failure(exc: BaseException) -> bool:
    """An error of the remote or of its client library (an unreachable endpoint, refused
    credentials, an option the filesystem does not take), not a bug of repro's own."""
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, TypeError):
        return "unexpected keyword argument" in str(exc)
    return type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs",
                                                 "gcsfs", "adlfs", "fsspec", "google")


class CorruptBlob(StoreError):
    """A remote blob whose bytes do not hash to its name: never used."""

    def __init__(self, sha256: str, url: str, actual: str):
        self.sha256, self.url, self.actual = sha256, url, actual
        super().__init__(f"blob {sha256} at {url} is corrupt: expected sha256 {sha256}, actual "
                         f"{actual}; it was not used. Push it again from a machine that has it "
                         "(`repro push`), or record again")


class BlobMissing(StoreError):
    """A blob the remote does not hold."""

    def __init__(self, sha256: str, url: str):
        super().__init__(f"blob {sha256} is not at the remote {url}")
        self.sha256 = sha256

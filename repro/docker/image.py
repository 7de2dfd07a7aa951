"""The image pin (docker backend, `prepare`): find the image a spec pins by digest, pull it, or rebuild it
from the spec's recipe — and then run only if the rebuilt image installs exactly the packages the
record was made with.

A pin is `NAME@sha256:<64 hex>` (or a bare `sha256:<64 hex>`). It matches a local image whose Id
is that digest (what `repro env build` prints) or whose RepoDigests hold `NAME@digest` (what a
registry gives). A tag never matches: a spec pins content, not a name.

The package fingerprint of an image is the sorted `name==version` list of every distribution
its Python sees (`repro.child.fingerprint.installed_packages`, run inside the image), and its sha256.
Image Ids are content addresses, so the list is cached per Id under `<cache>/image-packages/`.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.docker.client import connect
from repro.errors import PinError
from repro.record import RecordMeta
from repro.spec import Spec


class ImagePinError(PinError):
    """The pinned image is absent, cannot be pulled or rebuilt, or its rebuild differs."""


@dataclass
class ImagePin:
    pinned: str                      # environment.image, as written in the spec
    id: str                          # sha256:<64 hex>: the image that runs
    name: str                        # NAME of the pin ('' for a bare digest)
    how: str                         # local | pulled | rebuilt
    notes: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """What the record stores as its image: NAME@<digest of the image that ran>."""
        return f"{self.name}@{self.id}" if self.name else self.id


def split_pin(pinned: str) -> tuple[str, str]:
    name, _, digest = pinned.rpartition("@")
    return name, digest


def resolve_image(spec: Spec, repo_root: Path, recorded: RecordMeta | None,
                  say: Callable[[str], None] | None = None) -> ImagePin:
    """The local image to run `spec` in (see the module docstring).

    `recorded` is the record's metadata (verify) or None (run, record): a rebuilt image whose
    digest differs from the pin is accepted only when its package list equals the record's.
    """
    pinned = spec.environment.image
    if not pinned:
        raise ImagePinError(
            f"spec {spec.name!r} names no environment.image; the docker backend runs a spec in "
            "its pinned image. Add `environment.image: NAME@sha256:<64 hex>` (`repro env build "
            "envs/cpu` prints one) or run it with --backend local")
    client = connect()
    name, digest = split_pin(pinned)
    image = find_local(client, name, digest)
    if image is not None:
        return ImagePin(pinned, image.id, name, "local")
    pulled, pull_error = _pull(client, name, digest)
    if pulled is not None:
        return ImagePin(pinned, pulled.id, name, "pulled", [f"pulled {pinned}"])
    recipe = spec.environment.recipe
    if recipe is None:
        others = _same_name(client, name)
        if others:
            listing = ", ".join(f"{i.id} ({', '.join(i.tags) or 'untagged'})" for i in others[:4])
            raise ImagePinError(
                f"spec {spec.name!r} pins {pinned}, but no local image has that digest (wrong "
                f"digest? local images named {name}: {listing}) and it cannot be pulled "
                f"({pull_error}). If the image was rebuilt on purpose, re-pin "
                "environment.image to its digest; name environment.recipe to let repro rebuild "
                "and check it")
        raise ImagePinError(
            f"spec {spec.name!r} pins image {pinned}, which is not present on this Docker "
            f"Engine and cannot be pulled ({pull_error}), and the spec names no "
            "environment.recipe to rebuild it from. Load the image (`docker load`), build it "
            "(`repro env build RECIPE_DIR`), or add `environment.recipe`")
    return _rebuild(client, spec, pinned, name, digest, repo_root / recipe, recipe, recorded, say)


def find_local(client: Any, name: str, digest: str) -> Any:
    """The local image whose Id is `digest`, or whose RepoDigests hold NAME@digest."""
    import docker

    try:
        image = client.images.get(digest)
        if image.id == digest:
            return image
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError:
        pass
    if name:
        try:
            image = client.images.get(f"{name}@{digest}")
            if any(rd.endswith("@" + digest) for rd in image.attrs.get("RepoDigests") or []):
                return image
        except docker.errors.DockerException:
            pass
    return None


def _pull(client: Any, name: str, digest: str) -> tuple[Any, str]:
    import docker

    if not name:
        return None, "a bare digest names no repository to pull from"
    try:
        return client.images.pull(f"{name}@{digest}"), ""
    except docker.errors.DockerException as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"pull failed: {text[:200]}"


def _same_name(client: Any, name: str) -> list:
    import docker

    if not name:
        return []
    try:
        return client.images.list(name=name)
    except docker.errors.DockerException:
        return []


_BUILT: dict[tuple, str] = {}


def _build_memo(key: tuple) -> Path:
    from repro.paths import cache_dir

    return cache_dir() / "rebuilt" / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".txt")


def _remembered_build(client: Any, key: tuple) -> str | None:
    """The image an earlier process rebuilt from this exact recipe (Dockerfile and lock), if
    the engine still has it: the rebuild would return the same layers, so skip it."""
    import docker

    try:
        image_id = _build_memo(key).read_text().strip()
        return client.images.get(image_id).id if image_id else None
    except (OSError, docker.errors.DockerException):
        return None


def _remember_build(key: tuple, image_id: str) -> None:
    from repro.ioutil import atomic_write_text

    try:
        _build_memo(key).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_build_memo(key), image_id + "\n")
    except OSError:
        pass
_BUILD_LOCK = threading.Lock()


def _rebuild(client: Any, spec: Spec, pinned: str, name: str, digest: str, recipe_dir: Path,
             recipe: str, recorded: RecordMeta | None, say: Callable[[str], None] | None
             ) -> ImagePin:
    from repro.docker.build import build, load_recipe

    if not recipe_dir.is_dir():
        raise ImagePinError(f"spec {spec.name!r}: the pinned image {pinned} is absent and its "
                            f"environment.recipe {recipe} is not a directory ({recipe_dir})")
    loaded = load_recipe(recipe_dir)
    key = (str(recipe_dir), loaded.lock_sha256,
           hashlib.sha256((recipe_dir / "Dockerfile").read_bytes()).hexdigest())
    with _BUILD_LOCK:  # one build per recipe and process, however many specs share it
        image_id = _BUILT.get(key) or _remembered_build(client, key)
        if image_id is None:
            image_id = build(recipe_dir, client=client, echo=say or (lambda line: None)).id
            _remember_build(key, image_id)
        _BUILT[key] = image_id
    lead = f"the pinned image {pinned} is absent; rebuilt it from recipe {recipe} as {image_id}"
    if image_id == digest:
        return ImagePin(pinned, image_id, name, "rebuilt",
                        [f"{lead}: the rebuild has the pinned digest (a bit-identical image)"])
    packages = image_packages(client, image_id)
    if recorded is None:
        return ImagePin(pinned, image_id, name, "rebuilt", [
            f"{lead}: digest differs; no record to compare its {len(packages)} packages with "
            "(re-pin environment.image to the rebuilt digest to keep it)"])
    rec = recorded.image_packages
    if rec is None or not rec.list:
        raise ImagePinError(
            f"spec {spec.name!r}: {lead}, but its digest differs and the record (made with the "
            f"{recorded.backend} backend) holds no installed-package list to check "
            "the rebuild against; record the spec with --backend docker")
    if rec.list != packages:
        old, new = set(rec.list), set(packages)
        diff = [f"-{p}" for p in sorted(old - new)] + [f"+{p}" for p in sorted(new - old)]
        raise ImagePinError(
            f"spec {spec.name!r}: {lead}, but the rebuilt image installs other packages than the "
            f"record was made with ({' '.join(diff[:12])}{' …' if len(diff) > 12 else ''}); "
            "not running. Restore the recipe's lock, or record again and re-pin the image")
    return ImagePin(pinned, image_id, name, "rebuilt", [
        f"{lead}: digest differs, package set identical to the record's ({len(packages)} "
        f"packages, sha256 {rec.sha256[:12]}…)"])


PROBE = ("import json; from repro.child.fingerprint import installed_packages; "
         "print('REPRO-PACKAGES ' + json.dumps(installed_packages()))")


def image_packages(client: Any, image_id: str) -> list[str]:
    """The sorted `name==version` list of an image, taken inside it (cached per image Id)."""
    from repro.docker.sandbox import HARNESS_MOUNT, harness_volume, sandbox_config
    from repro.paths import cache_dir

    path = cache_dir() / "image-packages" / f"{image_id.split(':')[-1]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    import docker

    try:
        out = client.containers.run(
            image_id, ["python3", "-P", "-c", PROBE], remove=True, stdout=True, stderr=True,
            environment={"PYTHONPATH": str(Path(HARNESS_MOUNT).parent), "HOME": "/tmp"},
            mounts=harness_volume(), labels={"repro": "1", "repro.probe": "packages"},
            **sandbox_config(memory="1g", pids=64))
    except docker.errors.DockerException as exc:
        raise ImagePinError(f"cannot list the packages of image {image_id}: {exc}") from None
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("REPRO-PACKAGES "):
            packages = json.loads(line.split(" ", 1)[1])
            break
    else:
        raise ImagePinError(f"cannot list the packages of image {image_id}: {out[-400:]!r}")
    try:
        from repro.ioutil import atomic_write_text
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(packages))
    except OSError:
        pass
    return packages

"""`repro env build RECIPE_DIR`: build an environment image offline from a recipe.

A recipe is a directory holding

- `Dockerfile`            whose build context will hold it, `requirements.lock` and `wheels/`;
- `requirements.lock`     every requirement pinned (`==`) with `--hash`es (uv pip compile
                          --generate-hashes, or pip-compile);
- `recipe.yaml`           `image` (the name to tag), `python` and `platforms` (what the wheels
                          are downloaded for) and `base` (the FROM image, and how to make it from
                          Debian with debootstrap when it is absent and cannot be pulled),
                          and optionally `find_links` (directories of wheels of your own,
                          relative to the recipe or absolute, that `pip download` searches
                          besides PyPI: private or locally built packages; the lock's hashes
                          still decide what is accepted).

No network is used inside the build (`network_mode: none`): the wheels are downloaded on the
host by `pip download --require-hashes --only-binary=:all:` for the image's Python and
platform into `<cache>/wheels/<lock sha256>/` (kept between builds; delete it at will) and
hard-linked into the build context; the Dockerfile installs them with `pip install --no-index`.
Every wheel downloaded is also linked into one shared wheelhouse, `<cache>/wheels/by-sha256/
<sha256>/<file>`: a lock that shares wheels with one built before (another version of one
package, as `repro bisect --env` builds) gets them from there instead of downloading them again.
The result is named by its content digest, `NAME@sha256:<64 hex>`, which is what a spec pins.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.docker.client import connect
from repro.errors import ReproError


class RecipeError(ReproError):
    """A recipe that cannot be built: missing files, an unhashed lock, a failed step."""


@dataclass
class Base:
    image: str
    suite: str = "bookworm"
    include: list[str] = field(default_factory=lambda: ["python3", "python3-venv",
                                                        "ca-certificates"])
    mirror: str | None = None


@dataclass
class Recipe:
    path: Path
    image: str
    python: str
    platforms: list[str]
    base: Base | None
    find_links: list[Path] = field(default_factory=list)

    @property
    def lock(self) -> Path:
        return self.path / "requirements.lock"

    @property
    def lock_sha256(self) -> str:
        return hashlib.sha256(self.lock.read_bytes()).hexdigest()


@dataclass
class Built:
    name: str
    id: str             # sha256:<64 hex>, the image's content digest
    seconds: dict       # per step: base, wheels, build

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.id}"


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path).resolve()
    if not path.is_dir():
        raise RecipeError(f"{path}: no such recipe directory")
    for name in ("Dockerfile", "requirements.lock", "recipe.yaml"):
        if not (path / name).is_file():
            raise RecipeError(f"{path}: a recipe needs {name} (see `repro env build --help`)")
    try:
        data = yaml.safe_load((path / "recipe.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path / 'recipe.yaml'}: not valid YAML: {exc}") from None
    unknown = set(data) - {"image", "python", "platforms", "base", "find_links"}
    if unknown or not isinstance(data.get("image"), str):
        extra = f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else ""
        raise RecipeError(f"{path / 'recipe.yaml'}: needs `image: NAME` and may have python, "
                          f"platforms, base, find_links{extra}")
    links = data.get("find_links") or []
    if not isinstance(links, list) or not all(isinstance(x, str) for x in links):
        raise RecipeError(f"{path / 'recipe.yaml'}: `find_links` is a list of directories")
    find_links = [(path / x).resolve() for x in links]
    for d in find_links:
        if not d.is_dir():
            raise RecipeError(f"{path / 'recipe.yaml'}: find_links {d} is not a directory")
    base = data.get("base")
    if isinstance(base, dict):
        base = Base(**{k: base[k] for k in ("image", "suite", "include", "mirror") if k in base})
    elif base is not None:
        raise RecipeError(f"{path / 'recipe.yaml'}: `base` is a mapping with `image`, `suite`, "
                          "`include`")
    _check_lock(path / "requirements.lock")
    return Recipe(path, data["image"], str(data.get("python", "3.11")),
                  list(data.get("platforms") or ["manylinux2014_x86_64"]), base, find_links)


def _logical_lines(lock: Path) -> list[str]:
    """The lock's requirements, one line each (continuations joined, comments dropped)."""
    logical, current = [], ""
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw.strip()
        if not line.strip():
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    return logical


def lock_hashes(lock: Path) -> set[str]:
    """Every sha256 the lock accepts (hex)."""
    return {h.split(":", 1)[1] for req in _logical_lines(lock) for h in req.split()
            if h.startswith("--hash=sha256:")}


def _check_lock(lock: Path) -> int:
    """Every requirement pinned with `==` and carrying at least one --hash; returns how many
    requirements the lock holds (0: a recipe that installs nothing, e.g. FROM a ready image)."""
    logical = _logical_lines(lock)
    for req in logical:
        req = req.strip()
        if req.startswith("-"):
            continue
        name = req.split()[0]
        if "==" not in name:
            raise RecipeError(f"{lock}: {name!r} is not pinned with '=='; lock with "
                              "`uv pip compile --generate-hashes` (see requirements.in)")
        if "--hash=" not in req:
            raise RecipeError(f"{lock}: {name} has no --hash; lock with "
                              "`uv pip compile --generate-hashes`")
    return sum(1 for req in logical if not req.strip().startswith("-"))


def build(recipe_dir: str | Path, *, echo: Callable[[str], None] | None = None, client: Any = None,
          wheels_root: Path | None = None) -> Built:
    """Build a recipe's image offline; returns its name and content digest."""
    say = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    recipe = load_recipe(recipe_dir)
    client = client or connect(timeout=600)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if recipe.base is not None:
        ensure_base(client, recipe.base, say)
    seconds["base"] = time.perf_counter() - t
    t = time.perf_counter()
    wheels = download_wheels(recipe, say, wheels_root)
    seconds["wheels"] = time.perf_counter() - t
    t = time.perf_counter()
    image_id = _docker_build(client, recipe, wheels, say)
    seconds["build"] = time.perf_counter() - t
    return Built(recipe.image, image_id, seconds)


def ensure_base(client: Any, base: Base, say: Callable[[str], None]) -> str:
    """The base image's id: present, pulled, or built from Debian with debootstrap."""
    import docker

    try:
        return client.images.get(base.image).id
    except docker.errors.ImageNotFound:
        pass
    try:
        say(f"repro env build: base image {base.image} is absent; trying to pull it")
        return client.images.pull(base.image, tag=None if ":" in base.image else "latest").id
    except docker.errors.DockerException as exc:
        reason = str(exc).splitlines()[0][:160]
    if os.geteuid() != 0:
        raise RecipeError(f"base image {base.image} is absent and cannot be pulled ({reason}); "
                          "building it from Debian (debootstrap) needs root: run `sudo repro env "
                          f"build ...` once, or `docker load` a saved copy of {base.image}")
    if not shutil.which("debootstrap"):
        raise RecipeError(f"base image {base.image} is absent and cannot be pulled ({reason}); "
                          "building it from Debian needs debootstrap: `apt-get install -y "
                          "debootstrap` (envs/setup.sh does it)")
    say(f"repro env build: building {base.image} from Debian {base.suite} with debootstrap "
        "(about a minute and a half)")
    with tempfile.TemporaryDirectory(prefix="repro-rootfs-") as root:
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(base.include)}",
               base.suite, root] + ([base.mirror] if base.mirror else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RecipeError(f"debootstrap failed ({proc.returncode}); its last lines:\n"
                              + "\n".join((proc.stdout + proc.stderr).splitlines()[-15:]))
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in Path(root, junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", root, "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        name, _, tag = base.image.partition(":")
        try:
            client.api.import_image(
                src=tar.stdout, stream_src=True, repository=name, tag=tag or "latest",
                changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
    return client.images.get(base.image).id


def download_wheels(recipe: Recipe, say: Callable[[str], None], wheels_root: Path | None = None
                    ) -> Path:
    """`pip download` the lock's wheels for the image's platform into the host cache, once."""
    from repro.paths import cache_dir

    root = Path(wheels_root) if wheels_root else cache_dir() / "wheels"
    target = root / recipe.lock_sha256[:32]
    done = target / ".complete"
    if done.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    if _check_lock(recipe.lock) == 0:
        done.write_text(recipe.lock_sha256 + "\n")
        return target
    pool = root / "by-sha256"
    shared = _link_from_pool(pool, lock_hashes(recipe.lock), target)
    say(f"repro env build: downloading wheels for Python {recipe.python} "
        f"({recipe.platforms[0]}) into {target}"
        + (f" ({shared} already in the shared wheelhouse)" if shared else ""))
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--require-hashes", "--only-binary=:all:", "--no-deps",
           "--python-version", recipe.python, "--implementation", "cp", "-d", str(target),
           "-r", str(recipe.lock)]
    for plat in recipe.platforms:
        cmd += ["--platform", plat]
    for links in recipe.find_links:
        cmd += ["--find-links", str(links)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RecipeError("downloading the locked wheels failed (is PyPI reachable, and does "
                          f"every package have a wheel for Python {recipe.python} on "
                          f"{', '.join(recipe.platforms)}?):\n"
                          + "\n".join((proc.stdout + proc.stderr).splitlines()[-15:]))
    _add_to_pool(pool, target)
    done.write_text(recipe.lock_sha256 + "\n")
    return target


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_from_pool(pool: Path, hashes: set[str], target: Path) -> int:
    """Link the shared wheelhouse's wheels whose sha256 the lock accepts into `target`, where
    `pip download` finds them already downloaded (it checks their hashes again)."""
    n = 0
    for digest in hashes:
        for wheel in (pool / digest).glob("*.whl"):
            if not (target / wheel.name).exists():
                _link(wheel, target / wheel.name)
                n += 1
    return n


def _add_to_pool(pool: Path, wheels: Path) -> None:
    for wheel in wheels.glob("*.whl"):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if not (pool / digest / wheel.name).exists():
            (pool / digest).mkdir(parents=True, exist_ok=True)
            _link(wheel, pool / digest / wheel.name)


def _docker_build(client: Any, recipe: Recipe, wheels: Path, say: Callable[[str], None]) -> str:
    import docker

    with tempfile.TemporaryDirectory(prefix="repro-build-") as ctx_dir:
        ctx = Path(ctx_dir)
        for p in recipe.path.iterdir():
            if p.name in ("wheels", "recipe.yaml") or p.name.startswith(".") \
                    or p.resolve() in recipe.find_links:
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, ctx / p.name)
        (ctx / "wheels").mkdir()
        for w in wheels.glob("*.whl"):
            _link(w, ctx / "wheels" / w.name)
        say(f"repro env build: building {recipe.image} from {recipe.path} (no network)")
        image_id: str | None = None
        log: list[str] = []
        try:
            for chunk in client.api.build(path=str(ctx), tag=f"{recipe.image}:latest", rm=True,
                                          forcerm=True, network_mode="none", decode=True):
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        if line.strip():
                            log.append(line)
                            say(line)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    raise RecipeError(f"docker build of {recipe.path} failed: {chunk['error']}"
                                      + ("\n" + "\n".join(log[-10:]) if log else ""))
        except docker.errors.APIError as exc:
            raise RecipeError(f"docker build of {recipe.path} failed: {exc}") from None
    if image_id is None:
        image_id = client.images.get(f"{recipe.image}:latest").id
    return image_id


def main_build(recipe_dir: str, echo: Callable[[str], None] | None = None) -> int:
    """CLI body of `repro env build`: the last line printed is NAME@sha256:<64 hex>."""
    t = time.perf_counter()
    built = build(recipe_dir, echo=echo)
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in built.seconds.items())
    print(f"repro env build: done in {time.perf_counter() - t:.1f} s ({secs})", file=sys.stderr)
    print(built.ref, flush=True)
    return 0

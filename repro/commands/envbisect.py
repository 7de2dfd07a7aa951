"""`repro bisect SPEC --env`: the smallest set of package changes that flips a spec's verdict.

Two locked environments (hashed `requirements.lock` files) give different verdicts: the spec
verifies in the image built from the good lock and fails in the one built from the bad lock. The
change set is what differs between the locks, package by package (a version changed, a package
added, one removed). A probe applies a subset of those changes to the good lock, builds an image
from it offline with `repro env build` (`repro.docker.build.build`; every build shares one
wheelhouse, so a wheel is downloaded once), pins a copy of the spec to the image's digest and
verifies it with the docker backend — the same predicate as `repro verify`, with only
`environment.image` moved (`Options.varied`, so the move is not taken as evidence of a class).

The search is Zeller's ddmin (delta debugging, "Simplifying and Isolating Failure-Inducing
Input", 2002): it splits the failing change set into n parts, keeps a part (or the complement of
one) that still fails, and doubles n when none does, down to single changes. The set it returns
is 1-minimal: it fails, and removing any one change from it makes it pass (or unresolved) — not
necessarily the smallest set of all, which would take up to 2^n builds. One flipping change among
n takes about 2·log2(n) builds besides the two ends. A probe whose image does not build, or whose
verify is an error or nondeterministic, is *unresolved* and counts as not failing, as ddmin's
"?" outcome does. Probes are cached by subset.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from repro import pipeline
from repro.commands.bisect import BisectError, why
from repro.docker.build import RecipeError, build, load_recipe
from repro.pins.code import repo_root
from repro.spec import Spec
from repro.verdict import Status, Verdict

Outcome = Literal["pass", "fail", "unresolved"]
VARIED = ("environment.image",)   # the one key an env bisect moves
T = TypeVar("T")


# -- locks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One pinned requirement of a lock: its text is the `name==version` line with its --hash
    lines and `# via` comments, as written."""

    name: str        # normalised (PEP 503)
    version: str
    text: str


@dataclass(frozen=True)
class Lock:
    path: Path
    header: str                  # comments and options before the first requirement
    entries: dict[str, Entry]    # in the file's order

    def render(self, entries: Iterable[Entry]) -> str:
        return self.header + "".join(e.text for e in entries)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path(arg: str | Path) -> Path:
    """A requirements.lock file, or a recipe directory holding one."""
    path = Path(arg)
    if path.is_dir():
        path = path / "requirements.lock"
    if not path.is_file():
        raise BisectError(f"{arg}: neither a requirements.lock file nor a recipe directory "
                          "holding one")
    return path.resolve()


def parse_lock(path: Path) -> Lock:
    """The lock's requirements (`name==version`, each followed by indented --hash lines and
    comments) by normalised name; what precedes the first one is the header."""
    header, entries = "", {}
    current: list[str] | None = None
    name = version = ""

    def close() -> None:
        if current is not None:
            entries[normalise(name)] = Entry(normalise(name), version, "".join(current))

    for line in path.read_text().splitlines(keepends=True):
        first = line[:1]
        if first and not first.isspace() and first not in "#-":
            close()
            req = line.split(";", 1)[0].split()[0].rstrip("\\")
            name, sep, version = req.partition("==")
            if not sep:
                raise BisectError(f"{path}: {req!r} is not pinned with '=='")
            current = [line]
        elif current is None:
            header += line
        else:
            current.append(line)
    close()
    return Lock(path, header, entries)


@dataclass(frozen=True)
class Change:
    """One package's difference between the good lock (`old`) and the bad one (`new`)."""

    name: str
    old: Entry | None    # None: added by the bad lock
    new: Entry | None    # None: removed by the bad lock

    def text(self) -> str:
        if self.old is None and self.new is not None:
            return f"{self.name} added ({self.new.version})"
        if self.new is None and self.old is not None:
            return f"{self.name} removed (was {self.old.version})"
        assert self.old is not None and self.new is not None
        if self.old.version == self.new.version:
            return f"{self.name} {self.old.version} (other hashes)"
        return f"{self.name} {self.old.version} -> {self.new.version}"


def lock_changes(good: Lock, bad: Lock) -> list[Change]:
    """Every package whose pin differs (version or hashes), was added or removed; by name."""
    out = []
    for name in sorted(set(good.entries) | set(bad.entries)):
        a, b = good.entries.get(name), bad.entries.get(name)
        if a is None or b is None or a.version != b.version or _hashes(a) != _hashes(b):
            out.append(Change(name, a, b))
    return out


def _hashes(e: Entry) -> set[str]:
    return set(re.findall(r"--hash=(\S+)", e.text))


def apply(good: Lock, changes: Iterable[Change]) -> str:
    """The good lock with `changes` applied: changed pins replaced in place, removed ones
    dropped, added ones at the end."""
    by_name = {c.name: c for c in changes}
    entries = []
    for name, e in good.entries.items():
        c = by_name.get(name)
        if c is None:
            entries.append(e)
        elif c.new is not None:
            entries.append(c.new)
    entries += [c.new for c in by_name.values() if c.old is None and c.new is not None]
    return good.render(entries)


# -- ddmin -------------------------------------------------------------------------------------
def split(items: Sequence[T], n: int) -> list[list[T]]:
    """`items` in n consecutive parts whose sizes differ by at most one."""
    out, start = [], 0
    for i in range(n):
        stop = start + (len(items) - start) // (n - i)
        out.append(list(items[start:stop]))
        start = stop
    return out


def ddmin(changes: Sequence[T], test: Callable[[list[T]], Outcome]) -> list[T]:
    """Zeller's ddmin: a 1-minimal subset of `changes` for which `test` fails, given that it
    fails for all of them (and passes for none). `unresolved` counts as not failing. `test` is
    called with subsets in the order of `changes`; cache it (the same subset recurs)."""
    c, n = list(changes), 2
    while len(c) >= 2:
        parts = split(c, n)
        failing = next((d for d in parts if test(d) == "fail"), None)
        if failing is not None:
            c, n = failing, 2
            continue
        if n > 2:   # for n == 2 the complements are the parts themselves
            comps = [[x for x in c if x not in d] for d in parts]
            failing = next((d for d in comps if test(d) == "fail"), None)
            if failing is not None:
                c, n = failing, max(n - 1, 2)
                continue
        if n >= len(c):
            break
        n = min(2 * n, len(c))
    return c


# -- what the bisection brings back ------------------------------------------------------------
@dataclass(frozen=True)
class EnvProbe:
    """One build and verify: the good lock with `applied` (change names) applied."""

    number: int
    applied: tuple[str, ...]
    role: Literal["good", "bad", "probe"]
    outcome: Outcome
    image: str | None          # NAME@sha256:<64 hex> (None: the build failed)
    build_s: float
    verify_s: float
    verdict: Verdict | None    # None: the build failed
    reason: str = ""           # unresolved: why


@dataclass
class EnvBisection:
    spec: str
    good: str                  # the lock files
    bad: str
    recipe: str                # the recipe directory used as template
    changes: list[Change]
    probes: list[EnvProbe] = field(default_factory=list)
    minimal: list[Change] = field(default_factory=list)
    verdict: Verdict | None = None   # with the minimal set applied
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def builds(self) -> int:
        return len(self.probes)

    @property
    def unresolved(self) -> list[EnvProbe]:
        return [p for p in self.probes if p.outcome == "unresolved"]

    @property
    def exit_code(self) -> int:
        return 0 if self.minimal else 2


# -- running it ----------------------------------------------------------------------------------
def env_bisect(spec_ref: pipeline.SpecRef, good: str | Path, bad: str | Path,
               options: pipeline.Options | None = None, *,
               on_probe: Callable[[EnvProbe], None] | None = None,
               echo: Callable[[str], None] | None = None,
               wheels_root: Path | None = None) -> EnvBisection:
    """The smallest set of package changes between the `good` and `bad` locks (files or recipe
    directories) that makes the spec's verify fail. `on_probe` sees each build and verdict as
    it ends; `echo` gets the build output. Raises BisectError when the ends do not pass and fail.
    """
    t0 = time.perf_counter()
    options = replace(options or pipeline.Options(), backend="docker", echo=False,
                      code="pinned", varied=VARIED)
    spec = pipeline.as_spec(spec_ref)
    good_lock, bad_lock = parse_lock(lock_path(good)), parse_lock(lock_path(bad))
    template = _template(good, spec)
    changes = lock_changes(good_lock, bad_lock)
    if not changes:
        raise BisectError(f"{good_lock.path} and {bad_lock.path} pin the same packages: nothing "
                          "to bisect")
    out = EnvBisection(spec.name or "spec", str(good_lock.path), str(bad_lock.path),
                       str(template), changes)
    base = load_recipe(template)
    cache: dict[frozenset[str], EnvProbe] = {}
    by_name = {c.name: c for c in changes}

    with tempfile.TemporaryDirectory(prefix="repro-envbisect-") as work:
        def probe(applied: Sequence[str], role: Literal["good", "bad", "probe"] = "probe"
                  ) -> EnvProbe:
            key = frozenset(applied)
            if key in cache:
                return cache[key]
            text = apply(good_lock, [by_name[n] for n in applied])
            p = _build_and_verify(spec, text, base_image=base.image, template=template,
                                  find_links=base.find_links, work=Path(work),
                                  number=len(out.probes) + 1, applied=tuple(applied), role=role,
                                  options=options, echo=echo, wheels_root=wheels_root)
            cache[key] = p
            out.probes.append(p)
            if on_probe:
                on_probe(p)
            return p

        good_p = probe([], "good")
        _check_good(good_p)
        bad_p = probe([c.name for c in changes], "bad")
        _check_bad(bad_p)
        found = ddmin([c.name for c in changes], lambda names: probe(names).outcome)
    out.minimal = [by_name[n] for n in found]
    out.verdict = cache[frozenset(found)].verdict
    if out.unresolved:
        out.notes.append(f"{len(out.unresolved)} probe(s) unresolved (no image, or no verdict): "
                         "ddmin counted them as not failing, so the set found may hold more "
                         "changes than needed")
    out.notes.append(f"the probe images are kept, tagged {base.image}-bisect-<lock sha256[:12]> "
                     f"(`docker images '{base.image}-bisect-*'`; remove them with docker rmi)")
    out.duration_s = time.perf_counter() - t0
    return out


def _template(good: str | Path, spec: Spec) -> Path:
    """The recipe whose Dockerfile and recipe.yaml every probe uses: the good lock's own recipe
    directory, else the spec's environment.recipe."""
    path = Path(good)
    d = path if path.is_dir() else path.parent
    if (d / "Dockerfile").is_file() and (d / "recipe.yaml").is_file():
        return d.resolve()
    if spec.environment.recipe:
        return (repo_root(spec.path or Path.cwd()) / spec.environment.recipe).resolve()
    raise BisectError(f"--good {good}: no Dockerfile and recipe.yaml beside it and the spec "
                      "names no environment.recipe; name a recipe directory as --good")


def _build_and_verify(spec: Spec, lock_text: str, *, base_image: str, template: Path,
                      find_links: list[Path], work: Path, number: int, applied: tuple[str, ...],
                      role: Literal["good", "bad", "probe"], options: pipeline.Options,
                      echo: Callable[[str], None] | None, wheels_root: Path | None) -> EnvProbe:
    import yaml

    lock_sha = hashlib.sha256(lock_text.encode()).hexdigest()
    recipe = work / f"probe-{number}"
    shutil.copytree(template, recipe, ignore=shutil.ignore_patterns(
        "requirements.lock", "recipe.yaml", "wheels", ".*"))
    (recipe / "requirements.lock").write_text(lock_text)
    data = yaml.safe_load((template / "recipe.yaml").read_text()) or {}
    data["image"] = f"{base_image}-bisect-{lock_sha[:12]}"
    if find_links:
        data["find_links"] = [str(p) for p in find_links]
    (recipe / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    t = time.perf_counter()
    try:
        built = build(recipe, echo=echo or (lambda line: None), wheels_root=wheels_root)
    except RecipeError as exc:
        return EnvProbe(number, applied, role, "unresolved", None, time.perf_counter() - t, 0.0,
                        None, "build failed: " + str(exc).splitlines()[0])
    build_s = time.perf_counter() - t
    at = spec.model_copy(update={"environment": spec.environment.model_copy(
        update={"image": built.ref})})
    v = pipeline.verify(at, options)
    if v.status == Status.PASS:
        outcome: Outcome = "pass"
    elif v.status == Status.FAIL and v.fail_class != "nondeterministic":
        outcome = "fail"
    else:
        outcome = "unresolved"
    return EnvProbe(number, applied, role, outcome, built.ref, build_s, v.duration_s, v,
                    "" if outcome != "unresolved" else why(v))


def _check_good(p: EnvProbe) -> None:
    if p.outcome != "pass":
        reason = p.reason or (why(p.verdict) if p.verdict is not None else p.outcome)
        raise BisectError(f"the good lock's environment does not pass: {reason}. Env bisect "
                          "needs a --good lock whose image verifies (the one the record was made "
                          "in usually does)")


def _check_bad(p: EnvProbe) -> None:
    if p.outcome == "pass":
        raise BisectError("the bad lock's environment passes too: the verdict does not change "
                          "between --good and --bad")
    if p.outcome != "fail":
        raise BisectError(f"the bad lock's environment gives no verdict ({p.reason}); choose a "
                          "--bad lock that builds and fails")

"""The pytest front end (a `pytest11` entry point): spec files are test items.

Collection turns every YAML file carrying `repro:` into one item per spec; running an item calls
`repro.pipeline.verify` (or `record` under --repro-record) and a failure shows the verdict's
table instead of a traceback. Fixtures: `repro_verify`, `gradcheck`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from repro.errors import ReproError, SpecError

if TYPE_CHECKING:
    from repro.pipeline import Options
    from repro.spec import Spec
    from repro.verdict import Verdict

DEFAULT_PATTERNS = ["*.yaml", "*.yml"]
_VERDICTS = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("repro", "repro: reproducibility of JAX training")
    group.addoption("--repro-record", action="store_true", default=False,
                    help="write (or overwrite) recorded versions instead of comparing")
    group.addoption("--repro-backend", choices=("local", "docker"), default=None,
                    help="where runs happen (default: ini repro_backend, else local)")
    group.addoption("--repro-code", choices=("pinned", "worktree"), default=None,
                    help="pinned: the tree at code.commit (default); worktree: this checkout")
    group.addoption("--repro-platform", default=None, metavar="KEY",
                    help="record platform key (default: the run's platform)")
    group.addoption("--repro-records", default=None, metavar="DIR",
                    help="records root (default: <repo>/fixtures/records)")
    group.addoption("--repro-no-compile-cache", action="store_true", default=False,
                    help="do not share JAX's persistent compilation cache between runs")
    group.addoption("--repro-confirm", type=int, default=1, metavar="N",
                    help="when a spec fails and no pin changed, train it N more times to tell "
                         "nondeterministic from changed (default 1; 0: do not)")
    group.addoption("--repro-no-fail-fast", action="store_true", default=False,
                    help="run every spec to the end even when a metric already fails the "
                         "comparison (default: stop at the first such step; docs/failfast.md)")
    group.addoption("--repro-segments", default=None, metavar="all|sample:K[:SEED]|A-B",
                    type=_selection,
                    help="verify specs whose record keeps checkpoints by replaying these "
                         "segments from their recorded states (the others in full; "
                         "docs/segments.md); sample:1 is the spot check for pull requests")
    parser.addini("repro_specs", "glob patterns of spec files to collect", type="args",
                  default=DEFAULT_PATTERNS)
    parser.addini("repro_backend", "default backend: local or docker", default="local")
    parser.addini("repro_code", "default code mode: pinned or worktree", default="pinned")
    parser.addini("repro_docker_memory", "docker backend: container memory limit when the spec "
                  "sets no environment.memory (e.g. 4g)", default="4g")
    parser.addini("repro_docker_pids", "docker backend: container pids limit when the spec "
                  "sets no environment.pids", default="1024")


def _selection(text: str) -> str:
    import argparse

    from repro.commands.segmentplan import parse_selection
    try:
        return parse_selection(text).text
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pytest_configure(config):
    config.addinivalue_line("markers", "repro: a repro spec retrained and compared with its record")
    config.addinivalue_line("markers", "gpu: needs a GPU (a spec with environment.platform: gpu)")
    config.stash[_VERDICTS] = []


def worker_slot(worker_id: str) -> int | None:
    """A pytest-xdist worker's CPU slot (gw0 -> 0, gw1 -> 1 …), so parallel workers' runs
    land on different cores; None for anything else (no xdist, the controller)."""
    return int(worker_id[2:]) if worker_id.startswith("gw") and worker_id[2:].isdigit() else None


def xdist_slot(config: pytest.Config) -> int | None:
    return worker_slot(getattr(config, "workerinput", {}).get("workerid", ""))


def options_from_config(config: pytest.Config) -> Options:
    """The pipeline Options that this pytest invocation asks for."""
    from repro.pipeline import Options

    records = config.getoption("--repro-records")
    return Options(
        cpu_slot=xdist_slot(config),
        backend=config.getoption("--repro-backend") or config.getini("repro_backend"),
        code=config.getoption("--repro-code") or config.getini("repro_code"),
        platform=config.getoption("--repro-platform"),
        records_root=Path(records).resolve() if records else None,
        echo=config.getoption("capture") == "no",
        confirm=max(0, config.getoption("--repro-confirm")),
        fail_fast=not config.getoption("--repro-no-fail-fast"),
        segments=config.getoption("--repro-segments"),
        compile_cache=not config.getoption("--repro-no-compile-cache"),
        docker_memory=config.getini("repro_docker_memory") or None,
        docker_pids=int(config.getini("repro_docker_pids") or 0) or None)


def pytest_collect_file(file_path: Path, parent):
    from repro.spec import is_spec_text

    patterns = parent.config.getini("repro_specs") or DEFAULT_PATTERNS
    if not any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return None
    try:
        text = file_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if is_spec_text(text):
        return SpecFile.from_parent(parent, path=file_path)
    return None


class SpecFile(pytest.File):
    def collect(self) -> Iterator[SpecItem]:
        from repro.backends import out_of_reach
        from repro.spec import load_spec

        try:
            spec = load_spec(self.path)
        except SpecError as exc:
            # marked `repro` too: `pytest -m repro` must fail on a broken spec, not skip it
            item = SpecItem.from_parent(self, name=self.path.stem, spec=None, load_error=exc)
            item.add_marker("repro")
            yield item
            return
        item = SpecItem.from_parent(self, name=spec.name, spec=spec, load_error=None)
        item.add_marker("repro")
        backend = self.config.getoption("--repro-backend") or self.config.getini("repro_backend")
        if spec.environment.platform == "gpu":
            item.add_marker("gpu")   # no GPU here: its verdict is SKIPPED, and the item skipped
        reason = out_of_reach(spec, backend)   # a session over a whole folder skips it
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        yield item


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                   items: list[pytest.Item]) -> None:
    """Two spec items of one name would write one record: the later ones fail with the same
    error `repro verify` and `repro audit` give (repro.discovery), before anything runs."""
    from repro.discovery import duplicate_name_problems

    specs = [i for i in items if isinstance(i, SpecItem) and i.spec is not None]
    problems = duplicate_name_problems([(i.path, i.spec.name or "") for i in specs
                                        if i.spec is not None])
    for item in specs:
        if item.path in problems:
            item.load_error = problems[item.path]


class ReproFailure(Exception):
    """Raised by a spec item; carries the verdict that repr_failure renders."""

    def __init__(self, verdict):
        super().__init__(verdict.status)
        self.verdict = verdict


class SpecItem(pytest.Item):
    def __init__(self, *, spec: Spec | None, load_error: ReproError | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec, self.load_error = spec, load_error

    def setup(self) -> None:
        """The spec runs here, so that pytest reports an *error* for anything that kept the
        comparison from being made (bad spec, broken pin, crash, killed run) and a *failure*
        only for a verified mismatch — as the CLI's exit codes 2 and 1 do."""
        from repro.commands.check import check
        from repro.report.junit import junit_properties
        from repro.verdict import Status, error_verdict

        if self.load_error is not None or self.spec is None:
            verdict = error_verdict(self.path, self.load_error or "no spec", spec=self.spec)
        else:
            verdict = check(self.spec, options_from_config(self.config),
                            record_it=self.config.getoption("--repro-record"))
        self._verdict = verdict
        self.user_properties.extend(junit_properties(verdict))
        self.config.stash[_VERDICTS].append(verdict)
        if verdict.status == Status.ERROR:
            raise ReproFailure(verdict)
        if verdict.status == Status.SKIPPED:
            pytest.skip(verdict.error)

    def runtest(self) -> None:
        from repro.verdict import RECORDED

        verdict = self._verdict
        if verdict.status == RECORDED:
            from repro.report import summary_line
            self._repro_recorded = summary_line(verdict)
        if not verdict.ok:
            raise ReproFailure(verdict)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, ReproFailure):
            from repro.report import render
            return render(excinfo.value.verdict)
        return super().repr_failure(excinfo, style)

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException],
                         style: Any = None) -> Any:
        # pytest renders setup errors through this one, not repr_failure
        if isinstance(excinfo.value, ReproFailure):
            return self.repr_failure(excinfo)
        return super()._repr_failure_py(excinfo, style)

    def reportinfo(self):
        return self.path, 0, f"repro spec {self.name}"  # a line: skip markers need one


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    line = getattr(item, "_repro_recorded", None)
    if line and call.when == "call":
        # on the report, not in this process's stash: under pytest-xdist the summary is written
        # by the controller, which only sees the (serialised) reports of its workers
        report.repro_recorded = line
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = [r.repro_recorded for r in terminalreporter.stats.get("passed", [])
             if getattr(r, "repro_recorded", None)]
    if lines:
        terminalreporter.section("repro: recorded versions written")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def repro_verify(request):
    """`repro_verify(spec_path, **options)`: retrain a spec and compare it with its record from
    a Python test; fails the test with the verdict table, returns the Verdict on a pass."""
    from repro.commands.check import check as check_spec
    from repro.report import render

    base = options_from_config(request.config)

    def check(spec: str | Path | Spec, **overrides: Any) -> Verdict:
        options = dataclasses.replace(base, **overrides)
        verdict = check_spec(spec, options,
                            record_it=request.config.getoption("--repro-record"))
        if not verdict.ok:
            pytest.fail(render(verdict), pytrace=False)
        return verdict

    return check


@pytest.fixture
def gradcheck():
    """`gradcheck(fn, *args, **kw)` is `repro.gradcheck.check_gradients`."""
    from repro.grad.fixtures import gradcheck_fixture
    return gradcheck_fixture()

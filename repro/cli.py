"""The `repro` command line: a thin shell over repro.pipeline that prints verdicts.

Exit codes: 0 pass (or done), 1 a mismatch, 2 an error (bad spec, broken pin, crash, bad usage).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repro.errors import ReproError

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _spec_paths(args: list[str]) -> list[Path]:
    """Expand directories to the spec files below them (YAML carrying `repro:`)."""
    from repro.spec import find_specs

    out = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = find_specs(p)
            if not found:
                raise ReproError(f"no spec files (YAML with `repro:`) under {p}")
            out += found
        else:
            out.append(p)
    return out


def _options(ns):
    from repro.pipeline import Options

    echo = ns.stream if ns.stream is not None else sys.stderr.isatty()
    return Options(backend=ns.backend, code=ns.code, platform=ns.platform,
                   records_root=Path(ns.records) if ns.records else None,
                   timeout=ns.timeout, echo=echo, compile_cache=ns.compile_cache)


def _run_each(ns, action) -> int:
    from repro.report import render

    code = EXIT_OK
    options = _options(ns)
    for path in _spec_paths(ns.specs):
        verdict = action(path, options)
        print(render(verdict, verbose=ns.verbose), flush=True)
        code = max(code, verdict.exit_code)
    return code


def cmd_run(ns) -> int:
    from repro import pipeline
    return _run_each(ns, pipeline.run)


def cmd_record(ns) -> int:
    from repro import pipeline
    return _run_each(ns, pipeline.record)


def cmd_verify(ns) -> int:
    from repro import pipeline
    return _run_each(ns, pipeline.verify)


def cmd_audit(ns) -> int:
    import json
    import signal

    from repro.audit import audit_json, junit_xml, load_history, run_audit, save_history
    from repro.ioutil import atomic_write_text
    from repro.report import audit_summary, progress_line

    ns.stream = False  # parallel children's output would interleave; it is in each verdict
    options = _options(ns)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a CI job's kill: report, then stop
    try:
        audit = run_audit(ns.directory, options, jobs=ns.jobs,
                          on_done=lambda v, k, n: print(progress_line(v, k, n), flush=True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(audit_summary(audit), flush=True)
    doc = audit_json(audit)
    if ns.json:
        atomic_write_text(Path(ns.json), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if ns.junit:
        atomic_write_text(Path(ns.junit), junit_xml(audit))
    history = []
    if ns.history:
        save_history(ns.history, doc)
        history = load_history(ns.history, ns.history_limit)
    if ns.report:
        from repro.report_html import render_html
        atomic_write_text(Path(ns.report), render_html(doc, history))
    for flag, path in (("json", ns.json), ("junit", ns.junit), ("report", ns.report)):
        if path:
            print(f"{flag}: {path}")
    if not audit.complete:
        print("repro: audit interrupted; the reports are marked incomplete", file=sys.stderr)
        return 130
    return audit.exit_code


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_hash(ns) -> int:
    from repro.pins.data import hash_paths

    for path, digest in hash_paths(ns.paths):
        print(f"{digest}  {path}")
    return EXIT_OK


def cmd_pin(ns) -> int:
    from repro.pin import pin_spec

    for path in _spec_paths(ns.specs):
        changes, warnings = pin_spec(path, commit=ns.commit)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if not changes:
            print(f"{path}: already pinned to the current commit and data")
        for key, old, new in changes:
            print(f"{path}: {key}: {old or '(unset)'} -> {new}")
    return EXIT_OK


def cmd_diff(ns) -> int:
    from repro.changes import diff_records
    from repro.report import render

    verdict = diff_records(ns.record_a, ns.record_b, ns.spec)
    print(render(verdict, verbose=ns.verbose))
    return verdict.exit_code


def cmd_schema(ns) -> int:
    import json

    from repro.spec import spec_json_schema
    print(json.dumps(spec_json_schema(), indent=2))
    return EXIT_OK


def _positive(kind):
    """An argparse type: a number of `kind` greater than zero."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repro", description="Prove JAX training results "
                                     "reproduce from their pinned code, data and environment.")
    parser.add_argument("--version", action="version", version=f"repro {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def running(name, func, help_, audit=False):
        p = sub.add_parser(name, help=help_, description=help_)
        if audit:
            p.add_argument("directory", nargs="?", default="specs", metavar="DIR",
                           help="where to look for specs (default: specs/)")
            p.add_argument("-j", "--jobs", type=_positive(int), default=1, metavar="N",
                           help="verify N specs at a time (each run takes environment.cpus cores)")
            p.add_argument("--json", metavar="F", help="write the machine-readable result")
            p.add_argument("--junit", metavar="F", help="write JUnit XML (one case per spec)")
            p.add_argument("--report", metavar="F.html", help="write the HTML report")
            p.add_argument("--history", metavar="DIR", help="keep this audit's JSON in DIR; the "
                           "report shows the last audits per spec")
            p.add_argument("--history-limit", type=_positive(int), default=10, metavar="N")
        else:
            p.add_argument("specs", nargs="+", metavar="SPEC", help="spec file(s) or directories")
        p.add_argument("--backend", default="local", choices=("local", "docker"))
        p.add_argument("--code", default="pinned", choices=("pinned", "worktree"),
                       help="pinned: the tree at code.commit (default); worktree: this checkout")
        p.add_argument("--platform", metavar="KEY", help="record platform key (default: the "
                       "run's platform: cpu, gpu or tpu)")
        p.add_argument("--records", metavar="DIR", help="records root (default "
                       "<repo>/fixtures/records)")
        p.add_argument("--timeout", type=_positive(float), metavar="S", help="kill the run after S seconds "
                       "(default: the spec's timeout)")
        p.add_argument("--stream", dest="stream", action="store_true", default=None,
                       help="show the training output as it runs (default: on a terminal)")
        p.add_argument("--no-stream", dest="stream", action="store_false")
        p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                       help="do not share JAX's persistent compilation cache between runs")
        p.add_argument("-v", "--verbose", action="store_true", help="show every quantity")
        p.set_defaults(func=func)

    running("run", cmd_run, "execute specs and print a summary; compare nothing")
    running("record", cmd_record, "execute specs and write their recorded versions")
    running("verify", cmd_verify, "execute specs and compare with their recorded versions "
            "(exit 0 pass, 1 mismatch, 2 error)")
    running("audit", cmd_audit, "verify every spec under DIR and report (exit 0 all pass, "
            "1 any fail, 2 any error)", audit=True)
    p = sub.add_parser("hash", help="sha256 of files or directories, as a spec pins them")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_hash)
    p = sub.add_parser("pin", help="rewrite specs' code commit and data hashes to the current ones")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--commit", help="pin this full commit instead of HEAD")
    p.set_defaults(func=cmd_pin)
    p = sub.add_parser("diff", help="compare two recorded versions with a spec's tolerances")
    p.add_argument("record_a", metavar="RECORD_A")
    p.add_argument("record_b", metavar="RECORD_B")
    p.add_argument("--spec", help="take tolerances from this spec (default: RECORD_B's)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("schema", help="print the spec's JSON Schema")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("env", help="environment images (docker backend)")
    env_sub = p.add_subparsers(dest="env_command", required=True, metavar="ENV_COMMAND")
    p = env_sub.add_parser("build", help="build an image offline from a recipe (Dockerfile + "
                           "hashed requirements.lock + recipe.yaml); last line printed: "
                           "NAME@sha256:<64 hex>")
    p.add_argument("recipe", metavar="RECIPE_DIR")
    p.set_defaults(func=cmd_env_build)
    return parser


def cmd_env_build(ns) -> int:
    from repro.envbuild import main_build
    return main_build(ns.recipe)


def _version() -> str:
    import repro
    return repro.__version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.func(ns)
    except ReproError as exc:
        print(f"repro: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("repro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The audit's HTML report: one self-contained file (inline CSS, hand-written inline SVG, a few
lines of script to expand/collapse) rendered from the audit JSON (`repro.commands.audit.audit_json`) and
the earlier audits kept with `--history`. Format documented in docs/audit.md.

Every string that comes from the JSON is user data (spec names, errors, tracebacks): it goes
through `e()` (html.escape) or through repro.report.svg, which escapes its labels.
"""
from __future__ import annotations

import json
from html import escape

from repro.report.svg import finite, hbar_chart, line_chart, num

COLORS = {"pass": "#2f9e6e", "fail": "#d64545", "error": "#c26a00", "recorded": "#3b6fb6",
          "ran": "#3b6fb6", "skipped": "#7a8794"}
ORDER = {"fail": 0, "error": 1}
RECORDED_C, RUN_C, ERR_C, TOL_C = "#4c78a8", "#f58518", "#b83280", "#7a8794"
MAX_BARS, MAX_ROWS = 30, 25


def e(x: object) -> str:
    return escape("" if x is None else str(x), quote=True)


def _dur(s: object) -> str:
    secs = finite(s) or 0.0
    if secs < 60:
        return f"{secs:.1f} s"
    m, sec = divmod(int(round(secs)), 60)
    return f"{m} min {sec} s" if m < 60 else f"{m // 60} h {m % 60} min"


def _badge(status: str) -> str:
    return f'<span class="badge" style="background:{COLORS.get(status, "#7a8794")}">{e(status)}</span>'


def _short(value: object, limit: int = 120) -> str:
    text = "(none)" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(text: str, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ---------------------------------------------------------------- page


def render_html(doc: dict, history: list[dict]) -> str:
    """The report for one audit `doc`; `history` holds earlier audit documents, oldest first
    (it may end with `doc` itself, as `repro.commands.audit.load_history` returns it after saving)."""
    results = list(doc.get("results") or [])
    order = sorted(range(len(results)), key=lambda i: (ORDER.get(results[i].get("status"), 2), i))
    timeline = [h for h in (history or []) if isinstance(h, dict) and not _same(h, doc)] + [doc]
    body = [_header(doc), _summary(doc, results, order)]
    body += [_spec(i, results[i], timeline) for i in order]
    title = f"repro audit — {doc.get('directory', '')}"
    if not doc.get("complete", True):
        title += " (incomplete)"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"
            + "\n".join(body) + f"</main><script>{SCRIPT}</script></body></html>\n")


def _same(a: dict, b: dict) -> bool:
    keys = ("started", "finished", "directory", "duration_s")
    return a is b or all(a.get(k) == b.get(k) for k in keys)


def _header(doc: dict) -> str:
    m = doc.get("machine") or {}
    facts = [("started", doc.get("started")), ("finished", doc.get("finished") or "—"),
             ("duration", _dur(doc.get("duration_s"))), ("jobs", doc.get("jobs")),
             ("backend", doc.get("backend")), ("code", doc.get("code")),
             ("machine", f"{m.get('hostname', '?')} · {m.get('platform', '?')} · "
                         f"{m.get('cpus', '?')} CPUs · Python {m.get('python', '?')}"),
             ("repro", doc.get("repro_version"))]
    out = [f'<header><h1>repro audit <span class="dir">{e(doc.get("directory"))}</span></h1>',
           '<p class="meta">' + "".join(f"<span><b>{e(k)}</b> {e(v)}</span>" for k, v in facts) + "</p>"]
    if not doc.get("complete", True):
        out.append('<div class="banner" role="alert"><strong>INCOMPLETE</strong> — the audit was '
                   "interrupted before every spec finished; specs it did not finish are reported "
                   "as errors.</div>")
    return "".join(out) + "</header>"


def _summary(doc: dict, results: list[dict], order: list[int]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    tiles = [f'<div class="tile"><b>{len(results)}</b>specs</div>']
    for st in ["pass", "fail", "error"] + sorted(set(counts) - {"pass", "fail", "error"}):
        n = counts.get(st, 0)
        style = f' style="border-color:{COLORS.get(st, "#7a8794")}"' if n else ""
        tiles.append(f'<div class="tile{"" if n else " zero"}"{style}><b>{n}</b>{e(st)}</div>')
    rows = []
    for i in order:
        r = results[i]
        rows.append(f'<tr><td>{_badge(r.get("status", "?"))}</td>'
                    f'<td class="nm"><a href="#spec-{i}">{e(r.get("name"))}</a></td>'
                    f'<td class="r">{e(_dur(r.get("duration_s")))}</td>'
                    f'<td>{e(r.get("compared") or "—")}</td><td>{_detail(r)}</td></tr>')
    return (f'<section class="summary"><h2>Summary</h2><div class="tiles">{"".join(tiles)}</div>'
            '<table class="specs"><thead><tr><th>status</th><th>spec</th><th>time</th>'
            "<th>compared</th><th>first divergence / error</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>"
            '<p class="tools"><button type="button" data-open="1">expand all</button> '
            '<button type="button" data-open="0">collapse all</button></p></section>')


def _detail(r: dict) -> str:
    if r.get("status") == "error":
        return f'<span class="errtext">{e(_first_line(r.get("error", "")))}</span>'
    fd = r.get("first_divergence")
    if fd:
        step = "" if fd.get("step") is None else f" at step {fd['step']}"
        cls = f'<span class="cls">{e(r["fail_class"])}</span> ' if r.get("fail_class") else ""
        stop = r.get("stopped") or {}
        stopped = f" · stopped at step {stop.get('step')} of {stop.get('of')} (fail-fast)" if stop else ""
        return (f"{cls}<b>{e(fd.get('quantity'))}</b>{e(step)} "
                f'<span class="muted">(max rel err {e(num(fd.get("max_rel")))}){e(stopped)}</span>')
    if r.get("status") == "pass":
        n = len(r.get("quantities") or [])
        how = "bitwise identical" if r.get("compared") == "bitwise" else "within tolerance"
        return f'<span class="muted">{e(how)} ({n} quantities)</span>'
    return ""


# ---------------------------------------------------------------- one spec


def _spec(i: int, r: dict, timeline: list[dict]) -> str:
    status = r.get("status", "?")
    head = (f'<summary>{_badge(status)} <span class="name">{e(r.get("name"))}</span>'
            f'<span class="muted"> · {e(_dur(r.get("duration_s")))}</span></summary>')
    parts = [_facts(r)]
    if status == "error" or r.get("error"):
        parts.append(f'<h4>Error</h4><pre class="err">{e(r.get("error"))}</pre>')
        if r.get("error_detail"):
            parts.append(f'<details open><summary>detail</summary><pre>{e(r["error_detail"])}</pre></details>')
    parts += [_fail_class(r), _segments(r), _localisation(r), _curves(r), _leaves(r), _quantities(r), _changes(r)]
    if r.get("notes"):
        parts.append("<h4>Notes</h4><ul>" + "".join(f"<li>{e(n)}</li>" for n in r["notes"]) + "</ul>")
    parts.append(_history(r, timeline))
    is_open = " open" if status != "pass" else ""
    return (f'<section class="spec" id="spec-{i}" style="border-left-color:{COLORS.get(status, "#7a8794")}">'
            f"<details class=\"spec-d\"{is_open}>{head}<div class=\"body\">"
            + "".join(p for p in parts if p) + "</div></details></section>")


def _segments(r: dict) -> str:
    """--segments: which segments were replayed and how each went; --resume-check's finding."""
    out = ""
    seg = r.get("segments")
    if seg:
        rows = "".join(
            f'<tr><td>{e(o["label"])}</td><td style="color:{COLORS.get(o["status"], "#7a8794")}">'
            f'{e(o["status"])}</td><td>{e(o.get("first") or "")}'
            + (f' (stopped at step {e(o["stopped_at"])}, fail-fast)' if o.get("stopped_at") is not None else "")
            + "</td><td>" + ("in the run of the segment before" if o.get("continued")
                             else f'{e(o.get("duration_s"))} s') + "</td></tr>" for o in seg.get("replayed") or [])
        out += (f'<h4>Segments</h4><p>{e(seg.get("text"))}</p><table><tr><th>steps</th><th>status</th>'
                f"<th>first difference</th><th>time</th></tr>{rows}</table>")
    restart = r.get("restart")
    if restart:
        out += f'<h4>Restart check</h4><pre>{e(restart.get("text"))}</pre>'
    return out


def _localisation(r: dict) -> str:
    """ctx.traced: the first diverging op, and whether the programs are as recorded."""
    out = ""
    loc = r.get("localisation")
    if loc:
        out += f'<h4>First diverging op</h4><p class="loc"><code>{e(loc.get("text"))}</code></p>'
    if r.get("status") == "fail" and r.get("programs_unchanged"):
        out += '<p class="muted">programs unchanged: every traced program has its recorded jaxpr and HLO</p>'
    return out


def _fail_class(r: dict) -> str:
    """The failure's class and its evidence (repro/confirm.py)."""
    cls = r.get("fail_class")
    if not cls:
        return ""
    c = r.get("confirmation") or {}
    if cls == "nondeterministic":
        why = (f"run again from the same pins, the training gave other bits (first at "
               f"{c.get('first_difference')})" if c else "the runs from the same pins differ")
    elif cls == "mesh-dependent":
        why = "the same training on another mesh of the same devices moved beyond tolerance"
    elif c:
        why = (f"{c.get('runs', 0) + 1} runs from the same pins agree bitwise with each other but "
               "not with the record: an input that no pin covers changed")
    else:
        why = "a pin, spec key or environment fact that decides the numbers changed"
    items = "".join(f"<li>{e(x)}</li>" for x in c.get("candidates") or [])
    return (f'<h4>Class: <span class="cls">{e(cls)}</span></h4><p>{e(why)}</p>'
            + (f"<p>Candidates:</p><ul>{items}</ul>" if items else ""))


def _facts(r: dict) -> str:
    pins = r.get("pins") or {}
    rows = [("spec", r.get("spec")), ("record", r.get("record")), ("code", r.get("code"))]
    if r.get("compared"):
        because = f" — {r['compared_because']}" if r.get("compared_because") else ""
        rows.append(("compared", f"{r['compared']}{because}"))
    rows.append(("platform", " · ".join(str(x) for x in (r.get("platform"), r.get("backend")) if x)))
    rows += [("commit", pins.get("commit")), ("spec hash", pins.get("spec_hash"))]
    for name, sha in sorted((pins.get("data") or {}).items()):
        rows.append((f"data {name}", sha))
    if "image" in pins:
        rows.append(("image", pins.get("image") or "(none pinned)"))
    rows += [(k, _short(v)) for k, v in sorted(pins.items()) if k not in ("commit", "spec_hash", "data", "image")]
    cells = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows if v not in (None, ""))
    fp = r.get("fingerprint") or {}
    if fp:
        fp_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(_fp_value(v))}</td></tr>" for k, v in sorted(fp.items()))
        cells += (f'<dt>environment</dt><dd><details><summary>fingerprint ({len(fp)} facts)</summary>'
                  f'<table class="fp">{fp_rows}</table></details></dd>')
    return f'<dl class="facts">{cells}</dl>'


def _fp_value(v: object) -> str:
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in sorted(v.items()))
    return str(v)


def _curves(r: dict) -> str:
    curves = r.get("curves") or {}
    if not curves:
        return ""
    rows = {q.get("name"): q for q in r.get("quantities") or [] if q.get("kind") == "metric"}
    out = ["<h4>Metric curves</h4>"]
    for name, c in curves.items():
        steps, rec = list(c.get("steps") or []), list(c.get("recorded") or [])
        rsteps, run = list(c.get("run_steps") or steps), list(c.get("run") or [])
        overlay = line_chart(
            [{"label": "recorded", "xs": steps, "ys": rec, "color": RECORDED_C, "width": 3.2},
             {"label": "re-run", "xs": rsteps, "ys": run, "color": RUN_C, "dash": "5 3", "width": 1.8}],
            ylabel=name, label=f"{name}: recorded and re-run")
        recorded_at = {s: y for s, y in zip(steps, rec)}
        common = [(s, finite(recorded_at[s]), finite(y)) for s, y in zip(rsteps, run) if s in recorded_at]
        xs = [s for s, _, _ in common]
        err = [None if a is None or b is None else abs(b - a) for _, a, b in common]
        q = rows.get(name) or {}
        series = [{"label": "|re-run − recorded|", "xs": xs, "ys": err, "color": ERR_C, "dots": len(xs) <= 60}]
        if q and not q.get("bitwise", True) and finite(q.get("rtol")) is not None:
            tol = [None if a is None else (finite(q.get("atol")) or 0) + q["rtol"] * abs(a) for _, a, _ in common]
            series.append({"label": "tolerance", "xs": xs, "ys": tol, "color": TOL_C, "dash": "4 3", "width": 1.4})
        zero = bool(err) and all(x == 0 for x in err)
        errchart = line_chart(series, log_y=True, ylabel="abs error (log)", floor_label="0",
                              label=f"{name}: absolute error per step") if xs else \
            '<p class="muted">no steps in common between the record and the re-run</p>'
        notes = []
        if zero:
            notes.append('<span class="ok">bitwise equal: the difference is 0 at every step</span>')
        elif q.get("first_step") is not None and not q.get("ok", True):
            notes.append(f'<span class="bad">first out of tolerance at step {e(q["first_step"])}; '
                         f'max abs err {e(num(q.get("max_abs")))}</span>')
        if len(steps) != len(rsteps):
            notes.append(f"the record has {len(steps)} points, the re-run {len(rsteps)}")
        missing = sum(1 for x in err if x is None)
        if missing:
            notes.append(f"{missing} non-finite value(s) not drawn")
        out.append(f'<div class="plots"><figure><figcaption><b>{e(name)}</b> — recorded vs re-run'
                   f"</figcaption>{overlay}</figure><figure><figcaption><b>{e(name)}</b> — error per "
                   f"step, log scale</figcaption>{errchart}"
                   + (f'<p class="note">{"; ".join(notes)}</p>' if notes else "") + "</figure></div>")
    return "".join(out)


def _leaves(r: dict) -> str:
    qs = [q for q in r.get("quantities") or [] if q.get("kind") in ("weight", "grad")]
    if not qs:
        return ""
    if all(finite(q.get("max_rel")) == 0 and finite(q.get("max_abs")) == 0 for q in qs):
        return (f'<h4>Weights and gradients</h4><p class="ok">all {len(qs)} weight and gradient '
                "leaves are bitwise equal to the record</p>")
    def rank(q: dict) -> tuple[bool, float]:  # out of tolerance first, then the largest error
        v = finite(q.get("max_rel"))
        return (bool(q.get("ok")), -(v if v is not None else float("inf")))
    shown = sorted(qs, key=rank)[:MAX_BARS]
    bars = [{"label": q.get("label") or q.get("name"), "value": q.get("max_rel"), "ok": q.get("ok"),
             "tol": None if q.get("bitwise") else q.get("rtol")} for q in shown]
    bitwise = all(q.get("bitwise") for q in qs)
    legend = ("tolerance: bitwise — any bar above 0 fails" if bitwise
              else "dark tick: the leaf's rtol; red: out of tolerance")
    more = f"; {len(qs) - len(shown)} more in the table" if len(qs) > len(shown) else ""
    return (f'<h4>Weights and gradients: max relative error per leaf</h4><figure>'
            f"{hbar_chart(bars, label='max relative error per leaf')}"
            f'<figcaption class="muted">{e(legend)}{e(more)}</figcaption></figure>')


def _quantities(r: dict) -> str:
    qs = sorted(r.get("quantities") or [], key=lambda q: bool(q.get("ok")))
    if not qs:
        return ""
    def row(q: dict) -> str:
        step = "—" if q.get("first_step") is None else q["first_step"]
        res = '<span class="ok">ok</span>' if q.get("ok") else '<span class="bad">out</span>'
        return (f'<tr class="{"" if q.get("ok") else "badrow"}"><td>{e(q.get("label"))}</td><td>{res}</td>'
                f'<td class="r">{e(step)}</td><td class="r">{e(num(q.get("max_abs")))}</td>'
                f'<td class="r">{e(num(q.get("max_rel")))}</td>'
                f'<td class="r">{e(q.get("n_out"))}/{e(q.get("n_total"))}</td>'
                f'<td>{e(q.get("tolerance"))}</td><td>{e(q.get("note"))}</td></tr>')
    head = ("<tr><th>quantity</th><th></th><th>first step</th><th>max abs err</th><th>max rel err</th>"
            "<th>out</th><th>tolerance</th><th>note</th></tr>")
    rest = ""
    if len(qs) > MAX_ROWS:
        rest = (f'<details><summary>{len(qs) - MAX_ROWS} more</summary><table class="q">'
                + "".join(row(q) for q in qs[MAX_ROWS:]) + "</table></details>")
    n_bad = sum(1 for q in qs if not q.get("ok"))
    return (f'<h4>Quantities <span class="muted">({n_bad} of {len(qs)} out of tolerance)</span></h4>'
            f'<table class="q"><thead>{head}</thead><tbody>' + "".join(row(q) for q in qs[:MAX_ROWS])
            + "</tbody></table>" + rest)


def _changes(r: dict) -> str:
    ch = r.get("changes") or []
    if not ch:
        return '<h4>Changes since recording</h4>' \
            '<p class="muted">none: pins, spec and environment match the record</p>' \
            if r.get("compared") else ""
    rows = "".join(
        f'<tr class="{"numeric" if c.get("numeric", True) else "info"}"><td>{e(c.get("what"))}</td>'
        f'<td>{e(c.get("key"))}</td>'
        f'<td title="{e(_short(c.get("recorded"), 2000))}">{e(_short(c.get("recorded")))}</td>'
        f'<td title="{e(_short(c.get("current"), 2000))}">{e(_short(c.get("current")))}</td>'
        f'<td>{"may change the numbers" if c.get("numeric", True) else "informational"}</td></tr>'
        for c in sorted(ch, key=lambda c: not c.get("numeric", True)))
    return ("<h4>Changes since recording</h4><table class=\"q changes\"><thead><tr><th>what</th><th>key</th>"
            f"<th>recorded</th><th>now</th><th></th></tr></thead><tbody>{rows}</tbody></table>")


# ---------------------------------------------------------------- history


def _match(doc: dict, r: dict) -> dict | None:
    """The result for the same spec in another audit: same spec file, else the same unique name."""
    res = [x for x in doc.get("results") or [] if isinstance(x, dict)]
    same_path = [x for x in res if r.get("spec") and x.get("spec") == r.get("spec")]
    if same_path:
        return same_path[0]
    same_name = [x for x in res if x.get("name") == r.get("name")]
    return same_name[0] if len(same_name) == 1 else None


def _history(r: dict, timeline: list[dict]) -> str:
    if len(timeline) < 2:
        return ""
    found = [_match(d, r) for d in timeline]
    cells = []
    for d, x in zip(timeline, found):
        st = x.get("status", "?") if x else "absent"
        inc = "" if d.get("complete", True) else " (incomplete audit)"
        cells.append(f'<span class="cell" style="background:{COLORS.get(st, "#d5dae0")}" '
                     f'title="{e(d.get("started"))}: {e(st)}{inc}"></span>')
    first, last = (str(d.get("started", ""))[:16].replace("T", " ") for d in (timeline[0], timeline[-1]))
    out = [f"<h4>History <span class=\"muted\">(last {len(timeline)} audits)</span></h4>"
           f'<div class="strip">{"".join(cells)}<span class="muted"> {e(first)} → {e(last)}</span></div>']
    names = sorted({k for x in found if x for k in (x.get("metrics_final") or {})})
    charts = []
    for name in names:
        ys = [finite((x.get("metrics_final") or {}).get(name)) if x else None for x in found]
        vals = [y for y in ys if y is not None]
        chart = line_chart([{"label": f"final {name}", "xs": list(range(1, len(ys) + 1)), "ys": ys,
                             "color": RECORDED_C, "dots": True}],
                           width=380, height=170, xlabel="audit (oldest → newest)",
                           label=f"final {name} across audits")
        drift = (f"{num(vals[0], 6)} → {num(vals[-1], 6)}" if len(vals) >= 2 else "")
        charts.append(f"<figure><figcaption><b>final {e(name)}</b> "
                      f'<span class="muted">{e(drift)}</span></figcaption>{chart}</figure>')
    if charts:
        out.append('<div class="plots">' + "".join(charts) + "</div>")
    return "".join(out)


CSS = """
*{box-sizing:border-box}body{margin:0;background:#f4f6f8;color:#1d2630;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:0 0 8px}h1 .dir{font-family:ui-monospace,Menlo,Consolas,monospace;color:#3b6fb6}
h2{font-size:17px;margin:0 0 12px}h4{margin:18px 0 6px;font-size:14px}
header{margin-bottom:16px}
p.meta{display:flex;flex-wrap:wrap;gap:2px 20px;margin:0;color:#4a5561;font-size:13px}
p.meta b{font-weight:600;color:#1d2630}
.banner{margin-top:12px;padding:10px 14px;background:#fff3cd;border:2px solid #d08700;border-radius:6px;color:#6b4400}
section{background:#fff;border:1px solid #dde2e7;border-radius:8px;padding:16px 18px;margin-bottom:14px}
.tiles{display:flex;gap:10px;margin-bottom:14px}
.tile{border:2px solid #dde2e7;border-radius:8px;padding:6px 16px;min-width:86px;color:#4a5561}
.tile b{display:block;font-size:24px;color:#1d2630}.tile.zero{opacity:.55}
table{border-collapse:collapse;width:100%}th{text-align:left;font-weight:600;color:#4a5561;font-size:12px}
th,td{padding:5px 8px;border-bottom:1px solid #edf0f3;vertical-align:top}td.r{text-align:right;white-space:nowrap}
.badge{display:inline-block;min-width:48px;text-align:center;color:#fff;font-weight:700;font-size:12px;
padding:1px 8px;border-radius:10px;text-transform:uppercase;letter-spacing:.03em}
a{color:#2b5ea8;text-decoration:none}a:hover{text-decoration:underline}
.muted{color:#6b7682}.ok{color:#237a55}.bad{color:#c03535;font-weight:600}.errtext{color:#9a5200}
.cls{background:#fbe9e9;color:#9b2c2c;border-radius:3px;padding:0 4px;font-weight:600}
td.nm{white-space:nowrap}table.q{width:auto;min-width:70%}
.tools{margin:10px 0 0}button{font:inherit;font-size:12px;padding:2px 10px;border:1px solid #c5ccd3;
border-radius:4px;background:#f8f9fa;cursor:pointer}
section.spec{border-left:6px solid #7a8794;padding:10px 18px}
.spec-d>summary{cursor:pointer;font-size:16px;list-style-position:outside;padding:2px 0}
.spec-d>summary .name{font-weight:700;margin-left:6px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:12px 0 0;font-size:13px}
dl.facts dt{color:#6b7682}dl.facts dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:12px;word-break:break-all}
table.fp td{font-size:11px;padding:2px 6px}
pre{background:#f6f8fa;border:1px solid #e1e5e9;border-radius:6px;padding:10px;overflow:auto;
font-size:12px;max-height:420px;white-space:pre-wrap;word-break:break-word}pre.err{border-color:#e7b36a;background:#fff8ec}
.plots{display:flex;flex-wrap:wrap;gap:10px 18px}figure{margin:4px 0}
figcaption{font-size:13px;margin-bottom:2px}.note{font-size:12px;margin:2px 0 0 62px;max-width:470px}
svg.chart{display:block;background:#fff;max-width:100%;height:auto}
table.q{font-size:13px}table.q td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
tr.badrow td{background:#fdf1f1}tr.numeric td{background:#fff7e0}tr.info td{color:#6b7682}
.strip{display:flex;align-items:center;gap:3px;font-size:12px}
.cell{display:inline-block;width:22px;height:16px;border-radius:3px}
"""

SCRIPT = """(function(){var b=document.querySelectorAll('button[data-open]');for(var i=0;i<b.length;i++){
b[i].addEventListener('click',function(ev){var o=ev.currentTarget.getAttribute('data-open')==='1';
var d=document.querySelectorAll('details.spec-d');for(var j=0;j<d.length;j++){d[j].open=o;}});}
if(location.hash){var t=document.getElementById(location.hash.slice(1));
if(t){var s=t.querySelector('details.spec-d');if(s){s.open=true;}}}
var a=document.querySelectorAll('a[href^="#spec-"]');for(var k=0;k<a.length;k++){a[k].addEventListener('click',
function(ev){var t=document.getElementById(ev.currentTarget.getAttribute('href').slice(1));
if(t){var s=t.querySelector('details.spec-d');if(s){s.open=true;}}});}})();"""

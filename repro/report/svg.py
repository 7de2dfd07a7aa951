"""Hand-written SVG charts for the HTML report: line charts (linear or log y), horizontal bar
charts on a log scale, and their axes. No plotting library, no script: each function returns one
self-contained `<svg>` string. Every label is escaped here, so callers may pass user data.
"""
from __future__ import annotations

import math
from html import escape
from typing import Any

FONT = 'font-family="system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif" font-size="11"'
AXIS, GRID, TEXT = "#9aa3ad", "#e8ebef", "#4a5561"


def finite(x: Any) -> float | None:
    """`x` as a finite float, or None (JSON may carry "inf"/"nan" strings or nulls)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def num(x: Any, digits: int = 3) -> str:
    """A compact number for labels and tables: 0, 0.0123, 1.23e-07, inf."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "–" if x is None else str(x)
    if f == 0:
        return "0"
    if not math.isfinite(f):
        return str(f)
    if 1e-3 <= abs(f) < 1e5:
        return f"{f:.{digits}g}"
    return f"{f:.{max(digits - 1, 1)}e}".replace("e-0", "e-").replace("e+0", "e")


def _nice_step(span: float, n: int) -> float:
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def linear_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> tuple[float, float, list[float]]:
    """A padded domain and the 'nice' tick values inside it."""
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, n)
    if integer:
        step = max(1.0, round(step))
    lo2, hi2 = math.floor(lo / step) * step, math.ceil(hi / step) * step
    count = int(round((hi2 - lo2) / step))
    return lo2, hi2, [lo2 + k * step for k in range(count + 1)]


def log_ticks(lo: float, hi: float, max_ticks: int = 7) -> tuple[float, float, list[float]]:
    """Decade-aligned domain [10^a, 10^b] covering lo..hi, and decade ticks (every k-th)."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if b <= a:
        b = a + 1
    every = max(1, math.ceil((b - a) / max_ticks))
    return 10.0 ** a, 10.0 ** b, [10.0 ** e for e in range(a, b + 1) if (e - a) % every == 0]


def _decade(v: float) -> str:
    e = round(math.log10(v))
    return {0: "1", 1: "10", 2: "100", -1: "0.1", -2: "0.01"}.get(e, f"1e{e}")


class Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        self.a, self.b = a, b

    def __call__(self, v: float) -> float:
        v = math.log10(v) if self.log else v
        return self.a + (v - self.lo) / ((self.hi - self.lo) or 1.0) * (self.b - self.a)


def _text(x: float, y: float, s: object, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{TEXT}" {extra}>{escape(str(s))}</text>'


def _decimate(xs: list, ys: list, limit: int = 1200) -> tuple[list, list]:
    """At most ~`limit` points, keeping each bucket's min and max (spikes stay visible)."""
    if len(xs) <= limit:
        return xs, ys
    size = math.ceil(len(xs) / (limit // 2))
    ox, oy = [], []
    for s in range(0, len(xs), size):
        idx = [i for i in range(s, min(s + size, len(xs))) if ys[i] is not None]
        if not idx:
            continue
        pick = sorted({min(idx, key=lambda i: ys[i]), max(idx, key=lambda i: ys[i])})
        ox += [xs[i] for i in pick]
        oy += [ys[i] for i in pick]
    return ox, oy


def line_chart(series: list[dict], *, width: int = 500, height: int = 240, log_y: bool = False,
               xlabel: str = "step", ylabel: str = "", floor: float | None = None,
               floor_label: str = "0", label: str = "chart") -> str:
    """Lines over a shared x axis. Each series: {label, xs, ys, color, dash?, dots?, width?}.

    With `log_y`, values <= 0 are drawn on the `floor` line (labelled `floor_label`); None and
    non-finite values break the line.
    """
    ml, mr, mt, mb = 62, 14, 26, 38
    pts = [(x, y) for s in series for x, y in zip(s["xs"], s["ys"])
           if finite(x) is not None and finite(y) is not None]
    if not pts:
        return (f'<svg class="chart" width="{width}" height="60" viewBox="0 0 {width} 60" role="img" '
                f'aria-label="{escape(label)}" {FONT}>'
                f'{_text(width / 2, 34, "no finite values to plot", "middle")}</svg>')
    xs = [p[0] for p in pts]
    integer_x = all(float(x).is_integer() for x in xs)
    x0, x1, xt = linear_ticks(min(xs), max(xs), 6, integer=integer_x)
    low = 0.0   # log_y: where values <= 0 are drawn
    if log_y:
        pos = [p[1] for p in pts if p[1] > 0]
        low = floor or (min(pos) / 10 if pos else 1e-12)
        y0, y1, yt = log_ticks(low, max([*pos, low * 10]))
        low = max(low, y0)
        if not pos:  # everything is 0: no decades to show, the floor line in the middle says "0"
            y0, y1, yt = low / 10, low * 10, []
    else:
        ys = [p[1] for p in pts]
        y0, y1, yt = linear_ticks(min(ys), max(ys), 5)
    X = Scale(x0, x1, ml, width - mr)
    Y = Scale(y0, y1, height - mb, mt, log=log_y)
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{escape(label)}" {FONT}>']
    for t in yt:
        y = Y(t)
        out.append(f'<line x1="{ml}" x2="{width - mr}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(_text(ml - 6, y + 4, _decade(t) if log_y else num(t), "end"))
    for t in xt:
        x = X(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{height - mb}" y2="{height - mb + 4}" stroke="{AXIS}"/>')
        out.append(_text(x, height - mb + 16, num(t, 6) if integer_x else num(t), "middle"))
    out.append(f'<path d="M{ml},{mt} V{height - mb} H{width - mr}" fill="none" stroke="{AXIS}"/>')
    out.append(_text((ml + width - mr) / 2, height - 4, xlabel, "middle"))
    if ylabel:
        out.append(_text(12, (mt + height - mb) / 2, ylabel, "middle",
                         f'transform="rotate(-90 12 {(mt + height - mb) / 2:.1f})"'))
    if log_y and any((f := finite(y)) is not None and f <= 0 for s in series for y in s["ys"]):
        fy = Y(low)
        out.append(f'<line x1="{ml}" x2="{width - mr}" y1="{fy:.1f}" y2="{fy:.1f}" stroke="{AXIS}" '
                   f'stroke-dasharray="2 3"/>')
        out.append(_text(ml - 6, fy + 4, floor_label, "end") if not yt else
                   _text(width - mr - 2, fy - 4, floor_label, "end", 'font-size="10"'))
    for s in series:
        sx, sy = [], []
        for x, y in zip(s["xs"], s["ys"]):
            fx, fy_ = finite(x), finite(y)
            sx.append(fx)
            sy.append(None if fx is None or fy_ is None else (max(fy_, low) if log_y else fy_))
        sx, sy = _decimate(sx, sy)
        segs: list[list[str]] = []
        cur: list[str] = []
        for px, py in zip(sx, sy):
            if px is None or py is None:
                if cur:
                    segs.append(cur)
                cur = []
            else:
                cur.append(f"{X(px):.1f},{Y(py):.1f}")
        if cur:
            segs.append(cur)
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        w = s.get("width", 1.8)
        for seg in segs:
            out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{s["color"]}" '
                       f'stroke-width="{w}" stroke-linejoin="round"{dash}/>')
            if s.get("dots") or len(seg) == 1:
                out += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.6" fill="{s["color"]}"/>'
                        for p in seg]
    lx: float = ml
    for s in series:  # legend in the top margin, left to right
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="10" y2="10" stroke="{s["color"]}" stroke-width="2.4"{dash}/>')
        out.append(_text(lx + 23, 14, s["label"]))
        lx += 34 + 6.2 * len(str(s["label"]))
    out.append("</svg>")
    return "".join(out)


def hbar_chart(rows: list[dict], *, width: int = 500, xlabel: str = "max relative error",
               label: str = "bar chart") -> str:
    """Horizontal bars on a log x scale. Each row: {label, value, ok, tol?}. Zero values get a
    stub at the floor marked '0'; infinite or NaN ones run to the right edge. `tol` (a relative
    tolerance, None or 0 for bitwise) is drawn as a dark tick across the bar's row."""
    row_h, mt, mb = 20, 8, 36
    lw = min(230, 14 + 6.3 * max((len(str(r["label"])) for r in rows), default=4))
    ml, mr = int(lw), 58
    height = mt + row_h * len(rows) + mb
    vals = [finite(r["value"]) for r in rows] + [finite(r.get("tol")) for r in rows]
    pos = [v for v in vals if v is not None and v > 0]
    lo, hi, ticks = log_ticks(min(pos) / 10 if pos else 1e-9, max(pos) if pos else 1e-6)
    X = Scale(lo, hi, ml, width - mr, log=True)
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{escape(label)}" {FONT}>']
    base = height - mb
    for t in ticks:
        x = X(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{base}" stroke="{GRID}"/>')
        out.append(_text(x, base + 15, _decade(t), "middle"))
    out.append(f'<path d="M{ml},{mt} V{base} H{width - mr}" fill="none" stroke="{AXIS}"/>')
    out.append(_text((ml + width - mr) / 2, height - 5, xlabel, "middle"))
    for i, r in enumerate(rows):
        y = mt + i * row_h
        name = str(r["label"])
        short = name if len(name) <= 34 else name[:16] + "…" + name[-16:]
        out.append(f'<g><title>{escape(name)}: {escape(num(r["value"]))}</title>'
                   + _text(ml - 6, y + 14, short, "end"))
        v = finite(r["value"])
        raw = str(r["value"])
        end: float
        if v is None and raw.lower() in ("inf", "nan", "-inf"):
            end, text = width - mr, raw
        elif v is None or v <= 0:
            end, text = ml + 3, "0"
        else:
            end, text = max(X(max(v, lo)), ml + 3), num(v)
        color = "#2f9e6e" if r["ok"] else "#d64545"
        out.append(f'<rect x="{ml}" y="{y + 4}" width="{end - ml:.1f}" height="{row_h - 8}" rx="2" fill="{color}"/>')
        out.append(_text(end + 4, y + 14, text, "start", 'font-size="10"'))
        tol = finite(r.get("tol"))
        if tol and tol > 0:
            tx = X(min(max(tol, lo), hi))
            out.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{y + 1}" y2="{y + row_h - 1}" '
                       f'stroke="#1d2630" stroke-width="2"/>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)

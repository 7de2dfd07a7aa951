"""The audit's HTML report (repro.report.html): content and escaping from audit JSON documents,
and a screenshot in headless Chromium that must not be blank and must log nothing to the console.

tests/data/audit-sample.json is a real audit (one pass, one fail with `seeds.params` perturbed,
one error); tests/data/history/ holds the two audits before it (the newest is the sample itself,
as `repro.commands.audit.load_history` returns it after `save_history`).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from repro.commands.audit import load_history
from repro.report.html import render_html

DATA = Path(__file__).parent / "data"
FAIL_RGB = (0xD6, 0x45, 0x45)   # repro.report.html.COLORS["fail"]: badge, border, red bars


@pytest.fixture
def doc() -> dict:
    return json.loads((DATA / "audit-sample.json").read_text())


@pytest.fixture
def history() -> list[dict]:
    return load_history(DATA / "history")


def by_name(doc: dict, name: str) -> dict:
    return next(r for r in doc["results"] if r["name"] == name)


def section(html: str, doc: dict, name: str) -> str:
    """The HTML of one spec's section (sections are `id="spec-<index in results>"`)."""
    i = doc["results"].index(by_name(doc, name))
    m = re.search(rf'<section class="spec" id="spec-{i}".*?</section>', html, re.S)
    assert m, f"no section for {name}"
    return m.group(0)


# ------------------------------------------------------------------ content


def test_failing_spec_is_marked_fail_with_its_plots(doc, history):
    html = render_html(doc, history)
    fail = section(html, doc, "tiny-perturbed")
    assert ">fail</span>" in fail and "#d64545" in fail
    assert fail.count("<svg") >= 3              # curves overlaid, error per step, leaf bars
    assert "recorded" in fail and "re-run" in fail and "step" in fail
    assert "first out of tolerance at step 0" in fail
    assert "seeds.params" in fail and "may change the numbers" in fail
    assert "dd4a781b037209ef190b5b4a92986828da1c5176" in fail   # pinned commit
    assert "0f022d834735695c37b7617ebd039da42062547b2b1edf83fac25c51a7d3ff29" in fail  # data sha
    # the summary lists failing, then erroring, then passing specs, each linking to its section
    table = html[html.index('<table class="specs">'):html.index("</table>")]
    assert [m for m in re.findall(r">(fail|error|pass)</span>", table)] == ["fail", "error", "pass"]
    for i in range(3):
        assert f'href="#spec-{i}"' in table and f'id="spec-{i}"' in html
    assert "metric loss</b> at step 0" in table
    # failing and erroring specs are open, passing ones collapsed
    assert '<details class="spec-d" open>' in fail
    assert '<details class="spec-d">' in section(html, doc, "tiny")


def test_error_spec_shows_message_and_detail(doc):
    r = by_name(doc, "broken")
    r["error_detail"] = 'Traceback (most recent call last):\n  File "train.py", line 3\nValueError: x < 0 & y > "1"'
    html = section(render_html(doc, []), doc, "broken")
    assert ">error</span>" in html and '<pre class="err">specs/broken.yaml:2: code.commit' in html
    assert "ValueError: x &lt; 0 &amp; y &gt; &quot;1&quot;" in html


def test_all_zero_errors_say_bitwise(doc):
    html = section(render_html(doc, []), doc, "tiny")
    assert "bitwise equal: the difference is 0 at every step" in html
    assert "leaves are bitwise equal to the record" in html
    assert ">pass</span>" in html and html.count("<svg") >= 2


def test_every_string_from_the_json_is_escaped(doc):
    evil = "<script>alert(1)</script>"
    doc["directory"] = evil
    doc["machine"]["hostname"] = evil
    for r in doc["results"]:
        r["name"] = evil
        r["spec"] = r["code"] = r["compared_because"] = evil
        r["error"] = r["error_detail"] = evil
        r["notes"] = [evil]
        r["pins"] = {"commit": evil, "data": {evil: evil}, "image": evil, evil: evil}
        r["curves"] = {evil: c for c in list(r["curves"].values())[-1:]}  # noqa: B035
        r["metrics_final"] = {evil: 1.0}
        r["changes"] = [{"what": evil, "key": evil, "recorded": evil, "current": [evil], "numeric": True}]
        for q in r["quantities"]:
            q["name"] = q["label"] = q["note"] = q["tolerance"] = evil
        if r["first_divergence"]:
            r["first_divergence"]["quantity"] = evil
    html = render_html(doc, [copy.deepcopy(doc), doc])
    assert "<script>alert" not in html and "alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 1    # the report's own expand/collapse script


def test_incomplete_audit_shows_the_banner(doc):
    assert "INCOMPLETE" not in render_html(doc, [])
    doc["complete"] = False
    html = render_html(doc, [])
    assert 'class="banner"' in html and "INCOMPLETE" in html and "(incomplete)</title>" in html


def test_history_strip_and_drift(doc, history):
    assert len(history) == 2 and history[-1]["started"] == doc["started"]  # the doc is the last one
    html = render_html(doc, history)
    fail = section(html, doc, "tiny-perturbed")
    assert 'class="strip"' in fail and fail.count('class="cell"') == 2
    assert "final loss" in fail and "0.0062408 → 0.00449645" in fail
    # a history without the doc in it gives the same timeline (the doc is added as the newest)
    assert render_html(doc, history[:1]) == html
    # no history, or the doc alone: no history section
    assert 'class="strip"' not in render_html(doc, [])
    assert 'class="strip"' not in render_html(doc, [doc])
    # a spec missing from an older audit is shown as absent there
    older = copy.deepcopy(history[0])
    older["results"] = [r for r in older["results"] if r["name"] != "tiny"]
    html = render_html(doc, [older, doc])
    assert 'title="2026-11-28T04:12:13+00:00: absent"' in section(html, doc, "tiny")


def test_tolerance_mode_and_curves_of_different_length(doc):
    r = by_name(doc, "tiny-perturbed")
    r["compared"] = "tolerance"
    for q in r["quantities"]:
        q.update(bitwise=False, rtol=0.05, atol=1e-6, tolerance="rtol=0.05 atol=1e-06")
    q = r["quantities"][2]
    q["max_rel"], q["max_abs"] = "inf", "nan"
    c = r["curves"]["loss"]
    c["run_steps"], c["run"] = c["run_steps"][:10], c["run"][:9] + [float("nan")]
    html = section(render_html(doc, []), doc, "tiny-perturbed")
    assert ">tolerance</text>" in html                 # the tolerance envelope's legend
    assert "the record has 20 points, the re-run 10" in html
    assert "1 non-finite value(s) not drawn" in html
    assert ">inf</text>" in html and "dark tick: the leaf" in html


def test_minimal_and_empty_documents_render():
    assert "Summary" in render_html({"results": []}, [])
    html = render_html({"results": [{"name": "x", "status": "recorded"}], "complete": False}, [{}, {"x": 1}])
    assert ">recorded</span>" in html and "INCOMPLETE" in html


def test_report_is_self_contained(doc, history):
    html = render_html(doc, history)
    for needle in ("http://", "https://", " src=", "@import", "url(", "<link"):
        assert needle not in html, needle


# ------------------------------------------------------------------ PNG decoding (no PIL)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit, non-interlaced grey/RGB/RGBA PNG as an (H, W, channels) uint8 array. The
    filters are undone along anti-diagonals: pixel (r, i) needs only (r, i-1), (r-1, i) and
    (r-1, i-1), so each diagonal is one vectorised step whatever filter each row uses."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    assert depth == 8 and interlace == 0, header
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * channels)
    ftype, filtered = rows[:, 0], rows[:, 1:].reshape(h, w, channels).astype(np.int32)
    out = np.zeros((h + 1, w + 1, channels), np.int32)   # a zero row and column in front
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h - 1, d) + 1)
        i = d - r
        a, b, c = out[r + 1, i], out[r, i + 1], out[r, i]
        f = ftype[r][:, None]
        pred = np.select([f == 0, f == 1, f == 2, f == 3], [0, a, b, (a + b) // 2], _paeth(a, b, c))
        out[r + 1, i + 1] = (filtered[r, i] + pred) & 255
    return out[1:, 1:].astype(np.uint8)


def encode_png(img: np.ndarray, filters: np.ndarray) -> bytes:
    """RGB PNG with the given filter type per row (a test vector for decode_png)."""
    h, w, _ = img.shape
    x = img.astype(np.int32)
    a, b, c = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    a[:, 1:] = x[:, :-1]
    b[1:] = x[:-1]
    c[1:, 1:] = x[:-1, :-1]
    preds = [np.zeros_like(x), a, b, (a + b) // 2, _paeth(a, b, c)]
    body = b"".join(bytes([f]) + ((x[r] - preds[f][r]) & 255).astype(np.uint8).tobytes()
                    for r, f in enumerate(filters))
    chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))  # noqa: E731
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def test_png_decoder_undoes_every_filter():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img[:10] = 200                                    # flat areas too
    filters = np.array([0, 1, 2, 3, 4] * 8)[:37]
    rng.shuffle(filters)
    assert np.array_equal(decode_png(encode_png(img, filters)), img)


def blankness(img: np.ndarray) -> tuple[int, float]:
    """(distinct colours, fraction of pixels that differ from the most common colour)."""
    flat = img[..., :3].reshape(-1, 3).astype(np.uint32)
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    return len(values), 1.0 - counts.max() / packed.size


def looks_blank(img: np.ndarray) -> bool:
    """A report page has charts, badges and text in many colours over a good part of it."""
    colours, ink = blankness(img)
    return colours <= 50 or ink <= 0.2


# ------------------------------------------------------------------ headless Chromium


CONSOLE = re.compile(r":CONSOLE[(:]\d+\)?\]\s*(.*)")   # INFO:CONSOLE:12] "msg", source: … / CONSOLE(12)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("Debian's `chromium` is required in CI for the HTML report's screenshot test")
        pytest.skip("chromium not installed (apt-get install chromium); the CI job installs it")
    return path


def screenshot(chromium: str, page: Path, png: Path, size: str = "1280,2400") -> list[str]:
    """Render `page` headless into `png`; return the page's console messages. Chromium logs
    every console message (console.log/error, uncaught exceptions) as a CONSOLE line on
    stderr with --enable-logging=stderr; the report writes none, so any one is a failure."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={png.parent / (png.stem + '-profile')}", f"--screenshot={png}",
           f"--window-size={size}", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(png.parent)})
    assert proc.returncode == 0 and png.exists(), proc.stderr[-3000:]
    return [m.group(1) for line in proc.stderr.splitlines() if (m := CONSOLE.search(line))]


def test_console_error_detection_catches_errors(chromium, tmp_path):
    """The check below must be able to fail: a page that throws is caught, a clean one is not."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><p>x</p><script>console.error("oops")</script>'
                   '<script>throw new Error("boom")</script>')
    messages = screenshot(chromium, bad, tmp_path / "bad.png", "400,300")
    assert any("Uncaught Error: boom" in m for m in messages), messages
    assert any("oops" in m for m in messages), messages
    good = tmp_path / "good.html"
    good.write_text("<!doctype html><p>x</p><script>document.title = 'ok';</script>")
    assert screenshot(chromium, good, tmp_path / "good.png", "400,300") == []
    # and the blank-screenshot check rejects a page with next to nothing on it
    assert looks_blank(decode_png((tmp_path / "good.png").read_bytes()))


def test_report_screenshot_is_not_blank_and_logs_nothing(chromium, doc, history, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(doc, history), encoding="utf-8")
    png = tmp_path / "report.png"
    assert screenshot(chromium, page, png) == []
    if os.environ.get("REPRO_REPORT_SCREENSHOT"):      # keep it to look at
        shutil.copy(png, os.environ["REPRO_REPORT_SCREENSHOT"])
    img = decode_png(png.read_bytes())
    assert img.shape[:2] == (2400, 1280)
    assert not looks_blank(img), blankness(img)
    fail_px = np.all(img[..., :3] == FAIL_RGB, axis=-1).sum()
    assert fail_px > 500, f"the failing spec's red is missing from the screenshot ({fail_px} px)"


def test_injected_markup_does_not_run_in_the_browser(chromium, doc, tmp_path):
    payload = '<img src=x onerror="console.error(1)"><script>console.error("injected")</script>'
    for r in doc["results"]:
        r["name"], r["error"], r["notes"] = payload, payload, [payload]
    page = tmp_path / "evil.html"
    page.write_text(render_html(doc, []), encoding="utf-8")
    assert screenshot(chromium, page, tmp_path / "evil.png", "1000,800") == []


def test_long_curves_and_many_leaves_stay_small(doc):
    r = by_name(doc, "tiny-perturbed")
    n = 20000
    r["curves"]["loss"] = {"steps": list(range(n)), "recorded": [1.0 / (1 + s) for s in range(n)],
                           "run_steps": list(range(n)), "run": [1.0 / (1 + s) + (s == 777) for s in range(n)]}
    r["quantities"] += [{**r["quantities"][3], "name": f"layer{k}/w", "label": f"weights layer{k}/w"}
                        for k in range(200)]
    html = render_html(doc, [])
    assert len(html) < 600_000, len(html)
    assert "174 more in the table" in html and "180 more</summary>" in html
    assert html.count('<rect x=') == 30

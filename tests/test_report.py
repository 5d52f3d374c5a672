"""``analyze-trace report``: one self-contained HTML file, escaped, never over the user's files,
and every image loads in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from analysis.cli import main  # noqa: E402
from synthetic import T0, event, write_run  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "straggler.html"
    assert main(["report", str(SAMPLES / "straggler"), "--compare", str(SAMPLES / "healthy"), "-o", str(path)]) == 0
    return path


def test_report_is_one_self_contained_file(report):
    text = report.read_text()
    images = re.findall(r"<img [^>]*src=\"([^\"]*)\"", text)
    assert len(images) >= 7 and all(src.startswith("data:image/png;base64,") for src in images)
    # nothing fetched, nothing run: no script, no stylesheet or frame from elsewhere
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert "@import" not in text and "url(" not in text
    # what diagnose found, and the baseline it was compared against
    assert "<b>straggler</b>: rank 0 (labs-host0) spent 10" in text and "more outside communication" in text
    assert "The recording is complete." in text and "<h2>The recording</h2>" in text
    assert "straggler against healthy" in text and "The baseline, healthy" in text


def test_trace_text_is_escaped(tmp_path):
    """Host and group names come from other people's machines: they must not become markup."""
    evil = '<img src=x onerror="alert(1)">'
    rows = [
        event(r, s, "all_reduce", 2, 4096, 4096, T0 + s * 10**6, T0 + s * 10**6 + 10**5, pg=evil)
        for s in range(3)
        for r in range(2)
    ]
    run_dir = write_run(tmp_path / "run", rows, 2, hosts={0: evil, 1: "<b>host</b>"})
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "-o", str(out)]) == 0
    text = out.read_text()
    assert evil not in text and "<b>host</b>" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text and "&lt;b&gt;host&lt;/b&gt;" in text


def test_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "mine.html"
    out.write_text("the user's own file")
    assert main(["report", str(SAMPLES / "healthy"), "-o", str(out)]) == 2
    assert out.read_text() == "the user's own file"
    assert "exists" in capsys.readouterr().err
    assert main(["report", str(SAMPLES / "healthy"), "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob("*.tmp"))
    assert main(["report", str(SAMPLES / "healthy"), "-o", str(tmp_path / "no" / "such" / "dir.html")]) == 2


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (./dev setup installs Debian's chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    """Every image decodes in a real browser, read from the file alone (no network, no other file)."""
    count = len(re.findall(r"<img ", report.read_text()))
    # The report has no script; a copy gets one that, once the page has loaded, writes each image's
    # decoded size into the page for --dump-dom to print.
    probe = """<script>window.addEventListener("load", () => {
        const sizes = Array.from(document.images, (img) => [img.complete, img.naturalWidth, img.naturalHeight]);
        const out = document.createElement("pre"); out.id = "commtrace-probe";
        out.textContent = JSON.stringify(sizes); document.body.appendChild(out); });</script>"""
    page = tmp_path / "probe.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
    flags += ["--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'<pre id="commtrace-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not finish loading: {dom[-500:]}"
    sizes = json.loads(found.group(1))
    assert len(sizes) == count >= 7
    assert all(complete and width > 300 and height > 100 for complete, width, height in sizes), sizes
    # and a screenshot, for a person to look at (kept with the test's files)
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 50_000

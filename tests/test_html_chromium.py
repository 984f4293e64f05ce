"""report.html rendered in headless Chromium: plots decode, tables show, no console errors.

Chromium is installed by ``make test`` (Debian package ``chromium``); the test installs nothing.
Without it the test skips locally and fails in CI (CI=true).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from geofuse.reporting.study_report import write_study_report
from test_study_report import make_study

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\]\s*(.*)")
IMAGE_PROBE = """<script>window.addEventListener("load", () => {
const all = [...document.images];
const ok = all.filter(i => i.complete && i.naturalWidth > 0).length;
document.body.insertAdjacentHTML("beforeend", `<div id="imgcheck">${ok}/${all.length}</div>`);
});</script></body>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of the chromium binary; skip locally, fail in CI, when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "chromium not installed (make test installs it: apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _run(chromium: str, page: Path, tmp: Path, *extra: str) -> tuple[str, list[str]]:
    """Run headless chromium on ``page``; returns stdout and the console messages."""
    user_dir = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    proc = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={user_dir}", *extra, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [m.group(1) for m in CONSOLE.finditer(proc.stderr)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_study(tmp_path_factory.mktemp("chromium") / "study")
    return write_study_report(root).with_suffix(".html")


def test_console_error_detection_works(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom');"
                    "undefinedFunction();</script></body></html>")
    _, messages = _run(chromium, page, tmp_path, "--dump-dom")
    assert any("boom" in m for m in messages)
    assert any("undefinedFunction" in m for m in messages)


def test_screenshot_shows_plots_and_tables(chromium: str, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    _, messages = _run(chromium, report, tmp_path, f"--screenshot={shot}",
                       "--window-size=1280,2000")
    assert messages == []
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.std() > 0.08  # not blank
    assert (pixels.mean(axis=-1) < 0.9).mean() > 0.05  # text, tables and plots drawn
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.01  # coloured plot pixels (bars, heatmap) in view


def test_dom_has_tables_and_decoded_images(chromium: str, report: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", IMAGE_PROBE))
    dom, messages = _run(chromium, probe, tmp_path, "--dump-dom")
    assert messages == []
    sources = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', dom)
    assert len(sources) >= 6
    for src in sources:
        assert base64.b64decode(src, validate=True)[:8] == b"\x89PNG\r\n\x1a\n"
    # every image was decoded by the browser (naturalWidth > 0)
    assert f'<div id="imgcheck">{len(sources)}/{len(sources)}</div>' in dom
    assert dom.count("<table>") >= 6
    assert "<th>p_holm</th>" in dom and "<th>95% CI of diff</th>" in dom
    assert "MODEL COLLAPSE DETECTED" in dom
    assert re.search(r"<pre><code>name: fusion-ablation\nseed: 42", dom)
    assert not re.search(r"(src|href)=\"(https?:|//)", dom)

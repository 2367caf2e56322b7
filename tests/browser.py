"""A real headless Chromium (Debian's ``chromium``; ``make system-deps`` installs it where missing) opening a
page as a person would, and reporting what it rendered.

The page is copied with a probe script appended that, once the page has loaded, writes into the DOM what
the browser made of it: each image's load state and the text shown. ``--dump-dom`` then returns that DOM.
The page under test itself carries no script; only the copy does.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const found = {
    title: document.title,
    images: images.length,
    loaded: images.filter((image) => image.complete && image.naturalWidth > 0).length,
    segments: [...document.querySelectorAll("section.segment h3")].map((h) => h.textContent),
    text: document.body.innerText,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""
# The flags a closed network needs (no background connections refused by the dozen), as root (no sandbox).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class Rendered:
    title: str
    images: int
    loaded: int
    segments: list[str]
    text: str


def chromium() -> str:
    """The browser's path, or a failure saying how to get it (a missing browser is not a skipped test)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError("no chromium on PATH: make system-deps installs it (as root on Debian/Ubuntu)")
    return found


def render(page: Path, workdir: Path) -> Rendered:
    """Open ``page`` in headless Chromium and return what it rendered."""
    probed = workdir / f"probed-{page.name}"
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = _chromium(workdir, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert match, f"chromium rendered no probe (exit {result.returncode}): {result.stderr[-2000:]}"
    return Rendered(**json.loads(html.unescape(match.group(1))))


@dataclass(frozen=True)
class Page:
    title: str
    text: str  # the rendered DOM's text, tags replaced by " | "


def render_url(url: str, workdir: Path, budget_ms: int = 20000) -> Page:
    """Open ``url`` (an application that renders itself with scripts, e.g. the MLflow UI) and return the
    title and text of the DOM the browser built, once its scripts and requests settled."""
    result = _chromium(workdir, f"--virtual-time-budget={budget_ms}", "--dump-dom", url, timeout=180)
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", result.stdout, flags=re.DOTALL)
    title = re.search(r"<title>(.*?)</title>", dom, re.DOTALL)
    assert title, f"chromium rendered no page (exit {result.returncode}): {result.stderr[-2000:]}"
    text = re.sub(r"(\s*\|\s*)+", " | ", html.unescape(re.sub(r"<[^>]+>", " | ", dom)))
    return Page(html.unescape(title.group(1)), text)


def screenshot(page: Path, output: Path, workdir: Path) -> Path:
    """A PNG of the page as the browser draws it (for a person to look at; tests check it is drawn)."""
    _chromium(workdir, "--window-size=1280,1800", f"--screenshot={output}", page.as_uri()).check_returncode()
    return output


def _chromium(workdir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with the closed-network flags and a profile in ``workdir``."""
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={workdir / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )

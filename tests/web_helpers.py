"""The real pieces the browser tests (tests/test_web.py) and bench/web.py drive: a static file server
on 127.0.0.1 in a thread, headless Chromium through Playwright, and a page that records its console."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: where Chromium is looked for: $NAMEGEN_CHROMIUM, then Debian's package, then PATH
CHROMIUM_ENV = "NAMEGEN_CHROMIUM"
INSTALL_HINT = "needs Chromium: apt-get install chromium (or set NAMEGEN_CHROMIUM to a Chromium binary)"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        return given if Path(given).is_file() else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """A static file server for ``directory`` on 127.0.0.1 (a free port); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium(executable: str):
    """Headless Chromium (the system browser, not Playwright's download) with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Opened:
    """A page and what it reported while loading: console errors, uncaught exceptions, failed requests."""

    page: object
    errors: list = field(default_factory=list)
    failed: list = field(default_factory=list)


def open_page(browser, url: str, *, viewport=None, wait: bool = True, timeout_ms: int = 120_000) -> Opened:
    """Open ``url`` in a new context and, with ``wait``, wait until the first generation (or the error) is shown."""
    context = browser.new_context(viewport=viewport or {"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    opened = Opened(page)
    page.on("console", lambda msg: opened.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: opened.errors.append(f"uncaught: {exc}"))
    page.on("requestfailed", lambda req: opened.failed.append(req.url))
    page.on("response", lambda r: opened.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url)
    if wait:
        page.wait_for_function("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'")
    return opened

"""The web page's size, load time and speed, measured in the browser the tests use.

    python bench/web.py --ckpt checkpoints/small/best.ckpt              # prints the figures
    python bench/web.py --ckpt ... --screenshot docs/web-page.png       # and saves the page's screenshot

``namegen export --ckpt CKPT --web $TMP/site`` writes the site (the real command, onnxruntime-web from
the cache or the npm registry); tests/web_helpers.py serves it with http.server on 127.0.0.1 and opens
it in headless Chromium (Debian's chromium, or $NAMEGEN_CHROMIUM) through Playwright. Measured:

- the site's total size on disk, and the training names payload (names.txt);
- load time: from navigation start to the model being ready (the page's own
  ``performance.now()`` when ``Sampler.load`` returns), in a fresh browser context each
  time (nothing cached), --runs times;
- the time to generate 1,000 names with the page's defaults (temperature 1, no top-k,
  max length block_size), timed inside the page around ``window.namegen.generate``, --runs times.

Medians (and the range) are printed with the 1-minute load average before and after: on a busy
machine the figures are slower than a visitor's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from namegen.cli import main as namegen_main  # noqa: E402
from web_helpers import INSTALL_HINT, chromium, find_chromium, open_page, serve  # noqa: E402

GENERATE_1000 = """async () => {
  await window.namegen.ready;
  const t0 = performance.now();
  const result = await window.namegen.generate({n: 1000});
  return [performance.now() - t0, result.names.length];
}"""


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ms (median of {len(values)}; {min(values):.0f}-{max(values):.0f})"


def measure(site: Path, executable: str, runs: int, screenshot: Path | None) -> dict:
    loads, gens = [], []
    with serve(site) as url, chromium(executable) as browser:
        for _ in range(runs):
            opened = open_page(browser, url + "?n=1")
            assert opened.errors == [], opened.errors
            loads.append(opened.page.evaluate("window.namegen.timings.readyMs"))
            ms, count = opened.page.evaluate(GENERATE_1000)
            assert count == 1000
            gens.append(ms)
            opened.page.context.close()
        if screenshot is not None:
            opened = open_page(browser, url + "?n=24&temperature=0.8&seed=7", viewport={"width": 900, "height": 860})
            opened.page.screenshot(path=str(screenshot), full_page=True)
            opened.page.context.close()
    return {"load": loads, "generate": gens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="the checkpoint to export (a trained one gives real names)")
    parser.add_argument("--runs", type=int, default=5, help="page loads (fresh contexts) and 1,000-name runs")
    parser.add_argument("--screenshot", type=Path, default=None, help="also save the page's screenshot here")
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        sys.exit(f"bench/web.py {INSTALL_HINT}")
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        if namegen_main(["export", "--ckpt", args.ckpt, "--web", str(site)]) != 0:
            return 2
        files = {str(p.relative_to(site)): p.stat().st_size for p in site.rglob("*") if p.is_file()}
        before = _load()
        figures = measure(site, executable, args.runs, args.screenshot)
        after = _load()
    print(f"site: {sum(files.values()):,} bytes in {len(files)} files "
          f"(onnxruntime-web wasm {files['ort/ort-wasm-simd-threaded.wasm']:,}, "
          f"its JS {files['ort/ort.wasm.bundle.min.mjs']:,}, model.onnx {files['model.onnx']:,}, "
          f"training names {files.get('names.txt', 0):,}, page {sum(files[f] for f in ('index.html', 'app.js', 'sampler.js', 'style.css')):,})")
    print(f"load (navigation start -> model ready): {_summary(figures['load'])}")
    print(f"1,000 names: {_summary(figures['generate'])}")
    print(f"load average (1, 5, 15 min): before {before}, after {after}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

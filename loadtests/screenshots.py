"""The README's pictures of the dashboard and the explanation page, from a running stack.

Run after ``make demo`` (two trained MiniLM versions served with an A/B experiment):
``make screenshots`` or ``python -m loadtests.screenshots [--gateway URL] [--out docs]``. It
opens ``/dashboard`` and ``/explain`` in headless Chromium (Debian's ``chromium``, driven by
playwright), explains the first of the demo's sample reviews, and writes
``dashboard-autopilot.png`` and ``explain.png``: pictures of trained models, not of the tiny
random model the tests use.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# Debian's Chromium in a container or CI runner: no sandbox, no GPU, no background traffic.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLE_REVIEW = "I loved it! I will recommend this to everyone."


def take(gateway: str, out: Path) -> list[Path]:
    """Screenshots of the dashboard and the explanation page; the files written."""
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Chromium is missing: apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    dashboard, explain = out / "dashboard-autopilot.png", out / "explain.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{gateway}/dashboard")
            # The page has drawn the report (or said why there is none).
            expect(page.locator("#verdict")).not_to_have_text("loading the report…")
            page.screenshot(
                path=str(dashboard),
                full_page=True,
                clip={"x": 0, "y": 0, "width": 1280, "height": 1100},
            )
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(f"{gateway}/explain")
            page.fill("#text", SAMPLE_REVIEW)
            page.click("#explain")
            expect(page.locator("#result")).to_be_visible(timeout=60_000)
            page.screenshot(path=str(explain), full_page=True)
        finally:
            browser.close()
    return [dashboard, explain]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gateway", default="http://127.0.0.1:8000", help="the running gateway (make demo's)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where the PNGs go")
    args = parser.parse_args(argv)
    for path in take(args.gateway.rstrip("/"), args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

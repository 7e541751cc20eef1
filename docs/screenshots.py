"""Pictures of `limbscan serve` for the README: the worklist page with results, and one overlay.

    .venv/bin/python docs/screenshots.py BUNDLE IMAGE [IMAGE ...] [--out docs/images]

Starts the service on BUNDLE (a free port on 127.0.0.1), uploads the images through the page
with Playwright and Debian's chromium (/usr/bin/chromium; never `playwright install`), opens
the most suspicious row, and writes OUT/serve.png (the page) and OUT/overlay.png (that row's
overlay as the server made it). Images are shown by their file names in the page screenshot:
use anonymised files with neutral names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def screenshots(bundle: Path, images: list[Path], out: Path, *, width: int = 1440, height: int = 900,
                timeout_s: float = 300.0) -> tuple[Path, Path]:
    import httpx
    from playwright.sync_api import expect, sync_playwright

    from limbscan.serve import background_server, create_app

    out.mkdir(parents=True, exist_ok=True)
    timeout_ms = timeout_s * 1000
    serve_png, overlay_png = out / "serve.png", out / "overlay.png"
    with background_server(create_app(bundle)) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.goto(base + "/")
            expect(page.locator("#model-info")).to_contain_text("model: ")
            page.set_input_files("#picker", [str(image) for image in images])
            pending = page.locator("#worklist tbody tr[data-state='queued'], #worklist tbody tr[data-state='analysing']")
            expect(pending).to_have_count(0, timeout=timeout_ms)
            top = page.locator("#worklist tbody tr").first
            if top.get_attribute("data-state") != "done":
                raise SystemExit("no image was scored: " + " | ".join(page.locator("#worklist tbody tr").all_inner_texts()))
            # The overlay the page shows (as a blob: URL), exactly as the API serves it.
            with page.expect_response(lambda r: "/v1/overlays/" in r.url, timeout=timeout_ms) as answer:
                top.click()
            # Chromium keeps no body for this no-store answer: fetch the same overlay again.
            overlay = httpx.get(answer.value.url, timeout=60)
            overlay.raise_for_status()
            overlay_png.write_bytes(overlay.content)
            overlay = page.locator("#overlay")
            expect(overlay).to_be_visible(timeout=timeout_ms)
            expect(overlay).to_have_js_property("complete", True)
            page.screenshot(path=str(serve_png), full_page=True)
        finally:
            browser.close()
    return serve_png, overlay_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="a bundle folder made by `limbscan export`")
    parser.add_argument("images", type=Path, nargs="+", help="DICOM / PNG / JPEG files to upload")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images",
                        help="folder for serve.png and overlay.png (default: docs/images)")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} is absent: `apt-get install -y chromium`")
    serve_png, overlay_png = screenshots(args.bundle, args.images, args.out, width=args.width, height=args.height)
    print(f"wrote {serve_png} and {overlay_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

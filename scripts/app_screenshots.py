"""Screenshots of the web app (``mimaface app``) for the README: ``docs/app/{video,image,motion,audio}.png``.

Starts the app with the mesh-warp engine on this machine and drives it in Debian's chromium
(``apt-get install chromium``) through playwright, as a person would: the scikit-image astronaut as
the source; as driving, a clip of matplotlib's Grace Hopper saying the bundled ``talk.json`` (made
here by ``mimaface animate``), one of its frames, the motion editor on ``talk.json`` (raised brows
keyed with its sliders), and a sentence spoken by espeak-ng. Each tab is shot with its preview and its
finished job: the result, the side-by-side and the motion files.
Run: ``python scripts/app_screenshots.py [--out docs/app]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib.cbook
import skimage.data
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from mimaface.app import create_app, serve
from mimaface.audio.espeak import synthesise
from mimaface.demo import asset_path
from mimaface.pipelines.animate import AnimateOptions, animate

CHROMIUM = "/usr/bin/chromium"
SENTENCE = "Hello! This portrait is talking, with the lips following the words."
PREVIEW_FRAME = 14  # talk.json: the mouth open, the head turned
RAISED_BROWS = {"browInnerUp": 1.0, "browOuterUpLeft": 0.5, "browOuterUpRight": 0.5}  # keyed at PREVIEW_FRAME
SPOKEN_AT = 1.2  # seconds into the sentence: a word being said


def make_inputs(folder: Path) -> dict[str, Path]:
    inputs = {"source": folder / "astronaut.png", "video": folder / "grace_hopper_talking.mp4",
              "frames": folder / "frames", "speech": folder / "speech.wav"}
    Image.fromarray(skimage.data.astronaut()).save(inputs["source"])
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as photo:
        Image.open(photo).convert("RGB").save(folder / "grace_hopper.png")
    animate(folder / "grace_hopper.png", asset_path("talk.json"), inputs["video"],
            AnimateOptions(engine="warp", frames_dir=str(inputs["frames"])), progress=False)
    inputs["image"] = inputs["frames"] / f"frame_{PREVIEW_FRAME:06d}.png"
    synthesise(SENTENCE).write_wav(inputs["speech"])
    return inputs


def set_slider(page: Page, slider: str, value: float, preview: str) -> None:
    """Type a value into a slider's box and wait for the preview it drives to change."""
    image = page.locator(f"{preview} img")
    before = image.get_attribute("src") if image.count() else None
    box = page.locator(f"{slider} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    expect(image).to_have_count(1)
    if before is not None:
        expect(image).not_to_have_attribute("src", before)


def animate_and_shoot(page: Page, tab: str, path: Path, at: float | None = None) -> None:
    """Animate, wait for the job's outputs, show the videos at ``at`` seconds and shoot the page; the PNG
    is reduced to 256 colours (a third of the size, no visible loss on a page of flat colours)."""
    page.click(f"#{tab}-animate")
    kind = "img" if at is None else "video"
    result, panels = page.locator(f"#{tab}-result {kind}"), page.locator(f"#{tab}-side-by-side {kind}")
    expect(result).to_have_count(1, timeout=300_000)
    expect(panels).to_have_count(1)
    expect(page.locator(f"#{tab}-motion-files a")).to_have_count(2)
    if at is not None:
        for video in (result, panels):
            video.evaluate("(video, t) => new Promise(done => { video.onseeked = done; video.currentTime = t; })",
                           at)
    time.sleep(0.5)
    page.screenshot(path=str(path), full_page=True)
    Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/app", help="folder of the PNGs (default docs/app)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="app-shots-") as tmp:
        inputs = make_inputs(Path(tmp))
        app = create_app("warp", output_dir=tmp)
        url = serve(app, block=False)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(120_000)
                expect.set_options(timeout=120_000)
                page.goto(url)
                page.locator("#source input[type=file]").set_input_files(inputs["source"])
                expect(page.locator("#face-status")).to_contain_text("found")

                page.locator("#video-driving input[type=file]").set_input_files(inputs["video"])
                expect(page.locator("#video-info")).to_contain_text("frame(s)")
                set_slider(page, "#video-frame", PREVIEW_FRAME, "#video-preview")
                animate_and_shoot(page, "video", out / "video.png", at=PREVIEW_FRAME / 25)

                page.get_by_role("tab", name="Image").click()
                page.locator("#image-driving input[type=file]").set_input_files(inputs["image"])
                expect(page.locator("#image-preview img")).to_have_count(1)
                animate_and_shoot(page, "image", out / "image.png")

                page.get_by_role("tab", name="Motion editor").click()
                set_slider(page, "#motion-frame", PREVIEW_FRAME, "#motion-preview")
                page.get_by_role("button", name="Brows").click()  # its sliders' group
                for name, value in RAISED_BROWS.items():
                    set_slider(page, f"#slider-{name}", value, "#motion-preview")
                page.click("#motion-set")
                expect(page.locator("#motion-keys")).to_contain_text(name)
                animate_and_shoot(page, "motion", out / "motion.png", at=PREVIEW_FRAME / 25)

                page.get_by_role("tab", name="Audio").click()
                page.locator("#audio-driving input[type=file]").set_input_files(inputs["speech"])
                page.locator("#audio-transcript textarea").fill(SENTENCE)
                animate_and_shoot(page, "audio", out / "audio.png", at=SPOKEN_AT)
                browser.close()
        finally:
            app.close()


if __name__ == "__main__":
    main()

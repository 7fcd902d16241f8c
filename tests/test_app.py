"""The web app (``mimaface app``): the motion editor's keyframe edits, animate's progress / cancel hook
(both engines), the handlers behind the page, and the page itself in a real browser (Debian's
chromium through playwright) talking only to this machine."""

from __future__ import annotations

import io
import itertools
import json
import types
import wave
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import PIL.Image
import pytest
import skimage.data

from mimaface.app import create_app, keyframes, serve
from mimaface.app.handlers import Controls, Handlers
from mimaface.cli import main as cli_main
from mimaface.errors import InputError
from mimaface.face3d.coefficients import load_motion, motion_from_json, motion_json_text
from mimaface.face3d.landmarks import detect_face
from mimaface.face3d.model import FaceModel
from mimaface.media import has_audio, load_image, probe_video, read_video
from mimaface.pipelines.animate import AnimateOptions, Cancelled, animate
from mimaface.pipelines.engines import Engine
from mimaface.pipelines.options import SamplingOptions
from mimaface.provenance.watermark import detect

CHROMIUM = "/usr/bin/chromium"  # Debian's package (make test installs it); playwright cannot download one here
SHORT_MOTION = {"fps": 25, "num_frames": 6, "interpolation": "linear",
                "frames": [{"frame": 0, "jawOpen": 0.0, "yaw": 0}, {"frame": 5, "jawOpen": 0.8, "yaw": 8}]}
LIPS = [0, 13, 14, 17, 61, 291]  # face-mesh landmarks around the mouth
# Gradio 6's own calls into pandas 3 (its queue statistics) and numpy 1.26 warn about names they deprecate.
pytestmark = [pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|The copy keyword is deprecated)"),
              pytest.mark.filterwarnings("ignore:`np.bool8` is a deprecated alias")]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> types.SimpleNamespace:
    """A small portrait (the astronaut at 256 px), a photo without a face, a short and a long MOTION.json
    and a 1 s tone (sound without speech)."""
    root = tmp_path_factory.mktemp("app_inputs")
    portrait, no_face = root / "astronaut.png", root / "coffee.png"
    motion, long_motion, tone = root / "short.json", root / "long.json", root / "tone.wav"
    PIL.Image.fromarray(skimage.data.astronaut()).resize((256, 256), PIL.Image.LANCZOS).save(portrait)
    PIL.Image.fromarray(skimage.data.coffee()).resize((300, 200), PIL.Image.LANCZOS).save(no_face)
    motion.write_text(json.dumps(SHORT_MOTION))
    long_motion.write_text(json.dumps({**SHORT_MOTION, "num_frames": 1000}))
    rate = 16000
    samples = (0.3 * 32767 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.int16)
    with wave.open(str(tone), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return types.SimpleNamespace(portrait=portrait, no_face=no_face, motion=motion, long_motion=long_motion, tone=tone)


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> Handlers:
    return Handlers(Engine.load("warp"), tmp_path_factory.mktemp("app_outputs"))


def controls(source: Path, face: int | None = 0, **changed) -> list:
    """The shared controls as the page sends them (Controls' field order), at their defaults but ``changed``."""
    values = {"source": str(source), "face": face, "mode": "relative", "pose_scale": 1.0, "expression_scale": 1.0,
              "gaze_scale": 1.0, "keep_pose": False, "keep_gaze": False, "engine": "warp", "steps": 25,
              "guidance": 2.0, "seed": 0, "scheduler": "ddim", "ica": True} | changed
    assert list(values) == Controls.names()
    return list(values.values())


def session(name: str = "session") -> types.SimpleNamespace:
    return types.SimpleNamespace(session_hash=name)  # what a handler reads of gr.Request


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2)))


def mouth_box(image: np.ndarray) -> tuple[slice, slice]:
    x0, y0 = detect_face(image).landmarks[LIPS, :2].min(0).astype(int) - 4
    x1, y1 = detect_face(image).landmarks[LIPS, :2].max(0).astype(int) + 4
    return slice(y0, y1), slice(x0, x1)


# -- the motion editor's edits ---------------------------------------------------------------------
def test_keyframes_set_read_list_and_remove():
    spec = {"fps": 10, "interpolation": "linear", "frames": [{"jawOpen": 0.0}, {"time": 0.4, "jawOpen": 0.4}]}
    edited = keyframes.set_keys(spec, 2, {"jawOpen": 1.0, "yaw": 5})
    assert spec["frames"][1] == {"time": 0.4, "jawOpen": 0.4}  # the original is not touched
    assert [entry["frame"] for entry in edited["frames"]] == [0, 2, 4]  # position and time became frames
    assert keyframes.listed(edited) == [[0, "jawOpen 0"], [2, "jawOpen 1, yaw 5"], [4, "jawOpen 0.4"]]
    motion = motion_from_json(keyframes.parse(motion_json_text(edited)))
    assert [keyframes.value_at(motion, f, "jawOpen") for f in range(5)] == pytest.approx([0, 0.5, 1.0, 0.7, 0.4])
    grown = keyframes.set_keys({"num_frames": 3, "frames": [{"frame": 0}]}, 7, {"yaw": 12.5})
    assert grown["num_frames"] == 8 and keyframes.value_at(motion_from_json(grown), 7, "yaw") == 12.5
    restored = motion_from_json(keyframes.remove_keys(edited, 2))
    assert keyframes.value_at(restored, 2, "jawOpen") == pytest.approx(0.2) and restored.num_frames == 5
    shortened = keyframes.remove_keys(edited, 4)  # the last keyframe: the motion keeps its 5 frames
    assert motion_from_json(shortened).num_frames == 5 and keyframes.listed(shortened)[-1][0] == 2
    with pytest.raises(InputError, match="unknown channel 'jawClosed'"):
        keyframes.set_keys(spec, 0, {"jawClosed": 1.0})
    with pytest.raises(InputError, match="frame 3 has no keyframe"):
        keyframes.remove_keys(spec, 3)
    with pytest.raises(InputError, match="not valid JSON"):
        keyframes.parse('{"frames": [')


def test_sliders_are_grouped_and_key_only_what_moved(handlers, capsys):
    groups = handlers.slider_groups
    assert list(groups) == ["Head pose", "Jaw and mouth", "Brows", "Eyes", "Cheeks and nose", "Gaze"]
    names = [slider.name for slider in handlers.sliders]
    assert names[:3] == ["yaw", "pitch", "roll"] and names[-4:] == ["gazeLeftX", "gazeLeftY", "gazeRightX", "gazeRightY"]
    assert sorted(names[3:-4]) == sorted(FaceModel.load().expression_names)  # every blendshape, once
    assert {s.name for s in groups["Brows"]} == {"browInnerUp", "browOuterUpLeft", "browOuterUpRight",
                                                "browDownLeft", "browDownRight"}
    assert "cheekPuff" in {s.name for s in groups["Cheeks and nose"]} and "jawOpen" == groups["Jaw and mouth"][0].name
    text = json.dumps(SHORT_MOTION)
    shown = dict(zip(names, handlers.slider_values(text, 2)))  # linear: 2/5 of the way
    assert shown["jawOpen"] == 0.32 and shown["yaw"] == 3.0 and shown["mouthSmileLeft"] == 0.0
    values = [*shown.values()]
    values[names.index("mouthSmileLeft")] = 0.9
    keyed = keyframes.parse(handlers.set_keys(text, 2, *values))
    assert keyed["frames"][1] == {"frame": 2, "mouthSmileLeft": 0.9}  # the moved slider only
    assert handlers.slider_values(motion_json_text(keyed), 2)[names.index("mouthSmileLeft")] == 0.9
    assert handlers.set_keys(text, 2, *shown.values()) == {"__type__": "update"}  # the text stays
    assert "No slider was moved" in capsys.readouterr().out  # gr.Info, outside a page


# -- animate's progress hook -------------------------------------------------------------------------
def test_progress_hook_counts_warped_frames_and_cancels(files, tmp_path):
    reports = []
    animate(files.portrait, files.motion, tmp_path / "out.mp4", AnimateOptions(engine="warp"), progress=False,
            on_progress=lambda done, total: reports.append((done, total)))
    assert reports == [(i, 6) for i in range(1, 7)]

    def cancel_at_three(done, total):
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        animate(files.portrait, files.motion, tmp_path / "cancelled.mp4", AnimateOptions(engine="warp"),
                progress=False, on_progress=cancel_at_three)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # nothing half-written


def test_progress_hook_counts_denoising_steps_and_cancels(files, tmp_path):
    reports = []
    options = AnimateOptions(engine="diffusion", sampling=SamplingOptions(num_inference_steps=2))
    result = animate(files.portrait, files.motion, tmp_path / "out.mp4", options, progress=False,
                     on_progress=lambda done, total: reports.append((done, total)))
    assert result.num_clips == 1 and reports == [(1, 2), (2, 2)]  # 6 frames: one clip of the bundled model's 8
    # Independent clips two at a time report by group; the last report is still the whole.
    reports.clear()
    batched = AnimateOptions(engine="diffusion", sampling=SamplingOptions(num_inference_steps=2, use_ica=False,
                                                                          clip_length=2, batch_size=2))
    animate(files.portrait, files.motion, tmp_path / "batched.mp4", batched, progress=False,
            on_progress=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (6, 6) and all(b[0] >= a[0] for a, b in itertools.pairwise(reports))

    def cancel_at_first(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        animate(files.portrait, files.motion, tmp_path / "cancelled.mp4", options, progress=False,
                on_progress=cancel_at_first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batched.mp4", "out.mp4"]


# -- the handlers ----------------------------------------------------------------------------------------
def test_faces_are_listed_largest_first_or_reported_missing(handlers, files):
    boxed, picker, status = handlers.faces(str(files.portrait))
    assert picker["choices"][0][1] == 0 and len(picker["choices"]) == 1 and picker["value"] == 0
    assert status == "**1 face found.**"
    assert boxed.shape == (256, 256, 3) and not np.array_equal(boxed, load_image(files.portrait))  # boxes drawn
    _, picker, status = handlers.faces(str(files.no_face))
    assert picker["choices"] == [] and picker["value"] is None and status.startswith("**No face found**")


def test_preview_is_the_frame_animate_makes(handlers, files, tmp_path):
    frames_dir = tmp_path / "frames"
    animate(files.portrait, files.motion, tmp_path / "out.mp4", AnimateOptions(engine="warp", paste=False,
                                                                               frames_dir=str(frames_dir)),
            progress=False)
    for frame in (0, 5):  # the same warp, and the same invisible watermark
        preview = handlers.preview_driving(str(files.motion), frame, *controls(files.portrait))
        written = load_image(frames_dir / f"frame_{frame:06d}.png")
        assert preview.shape == written.shape and psnr(preview, written) > 45
        mark = detect([preview])
        assert mark.found and mark.payload == detect([written]).payload
    still = handlers.preview_driving(str(files.motion), 0, *controls(files.portrait))
    opened = handlers.preview_driving(str(files.motion), 5, *controls(files.portrait))
    mouth = mouth_box(still)
    assert np.abs(opened[mouth].astype(float) - still[mouth]).mean() > 10  # jawOpen 0.8 shows


def test_cancel_stops_the_running_job(handlers, files):
    request = session("cancelling")
    reports = []

    def progress(value, desc=None, unit=None):  # the page's bar; the user presses Cancel at the first report
        reports.append(value)
        if isinstance(value, tuple):
            handlers.cancel(request)

    before = set(handlers.output_dir.rglob("*.mp4"))
    assert handlers.animate_motion(files.motion.read_text(), request, progress,
                                   *controls(files.portrait)) == (None, None, None)
    assert reports == [0, (1, 6)] and set(handlers.output_dir.rglob("*.mp4")) == before
    done, _, _ = handlers.animate_motion(files.motion.read_text(), request, lambda *a, **k: None,
                                         *controls(files.portrait))
    assert probe_video(done).num_frames == 6  # the next job runs: a cancel belongs to one job


def test_job_gives_side_by_side_and_the_motion_it_animated(handlers, files):
    result, panels, (json_file, npz_file) = handlers.animate_motion(
        files.motion.read_text(), session(), lambda *a, **k: None, *controls(files.portrait))
    assert probe_video(panels).num_frames == 6 and probe_video(result).num_frames == 6
    frames, _ = read_video(panels)
    assert frames.shape == (6, 256, 1024, 3)  # source | driving | I_R | result, 256 px each
    assert psnr(frames[0][:, :256], load_image(files.portrait)) > 28
    npz, written = load_motion(npz_file), load_motion(json_file)
    assert Path(json_file).name == "MOTION.json" and npz.num_frames == written.num_frames == 6
    np.testing.assert_allclose(written.expression, npz.expression, atol=1e-6)  # the .npz keeps float32
    np.testing.assert_allclose(written.pose, npz.pose, atol=1e-4)
    jaw = npz.expression_names.index("jawOpen")
    # relative: the source's own jaw + 0.8, within [0, 1]
    assert npz.expression[5, jaw] == pytest.approx(min(npz.expression[0, jaw] + 0.8, 1.0), abs=1e-5)
    assert npz.expression[5, jaw] - npz.expression[0, jaw] > 0.5
    assert npz.pose[5, 0] - npz.pose[0, 0] == pytest.approx(8, abs=1e-4)  # and the yaw's 8 degrees
    # A driving image: the result and its side-by-side are pictures, the motion one frame.
    picture, panel, (_, npz_file) = handlers.animate_driving(str(files.portrait), session(), lambda *a, **k: None,
                                                             *controls(files.portrait))
    assert load_image(picture).shape == (256, 256, 3) and load_image(panel).shape == (256, 1024, 3)
    assert load_motion(npz_file).num_frames == 1


def test_diffusion_engine_is_loaded_on_first_use_with_its_scheduler(handlers, files):
    assert handlers.default_engine == "warp" and handlers.diffusion_model == "the bundled tiny model"
    reports = []
    result, panels, _ = handlers.animate_motion(
        files.motion.read_text(), session(), lambda value, desc=None, unit=None: reports.append((value, desc)),
        *controls(files.portrait, engine="diffusion", steps=2, scheduler="euler"))
    engine = handlers.engine("diffusion")
    assert probe_video(result).num_frames == 6 and probe_video(panels).num_frames == 6
    assert type(engine.pipeline.scheduler).__name__ == "EulerDiscreteScheduler"  # the page's choice
    assert reports[0] == (0, "loading the diffusion engine") and reports[-1] == ((2, 2), "denoising")
    reports.clear()
    handlers.animate_motion(files.motion.read_text(), session(), lambda value, desc=None, unit=None:
                            reports.append((value, desc)), *controls(files.portrait, engine="diffusion", steps=1))
    assert handlers.engine("diffusion") is engine and reports[0] == (0, "finding the face and reading the motion")


def test_audio_job_has_the_sound_and_its_length(handlers, files):
    with pytest.warns(UserWarning, match="no speech found"):  # passed on to the page as a warning
        out, _, _ = handlers.animate_audio(str(files.tone), "", 1.0, True, False, session(), lambda *a, **k: None,
                                     *controls(files.portrait))
    assert probe_video(out).num_frames == 25 and has_audio(out)  # 1 s at 25 fps


def test_app_command_checks_its_engine_before_serving(capsys):
    assert cli_main(["app", "--engine", "warp", "--checkpoint", "some/model"]) == 2
    assert "the warp engine uses none" in capsys.readouterr().err


# -- the page in a browser ---------------------------------------------------------------------------
def test_page_in_a_browser(files, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)"
    app = create_app("warp", output_dir=tmp_path)
    url = serve(app, block=False)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # we are root
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(60_000)  # a slow, shared 2-core machine
            expect.set_options(timeout=60_000)
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)

            def fetch(src: str) -> bytes:
                return page.request.get(src).body()

            def picture(src: str) -> np.ndarray:
                return np.asarray(PIL.Image.open(io.BytesIO(fetch(src))).convert("RGB"), float)

            def set_number(element: str, value) -> None:  # type into a slider's box, as a person does
                box = page.locator(f"{element} input[type=number]")
                box.fill(str(value))
                box.press("Enter")

            # A photo without a face: the picker says so, and a job asked of it fails with a message.
            page.locator("#source input[type=file]").set_input_files(files.no_face)
            expect(page.locator("#face-status")).to_contain_text("No face found")
            page.get_by_role("tab", name="Motion editor").click()
            page.click("#motion-animate")
            expect(page.get_by_text("No face to animate in the source portrait.")).to_be_visible()
            page.locator("#source button[aria-label='Remove Image']").click()
            page.locator("#source input[type=file]").set_input_files(files.portrait)
            expect(page.locator("#face-status")).to_contain_text("1 face found")

            # The engine: the sampling panel (with the scheduler) shows for the diffusion model only.
            expect(page.locator("#scheduler")).to_be_hidden()
            page.locator("#engine").get_by_label("diffusion").check()
            expect(page.locator("#scheduler")).to_be_visible()
            page.locator("#engine").get_by_label("warp").check()
            expect(page.locator("#scheduler")).to_be_hidden()

            with page.expect_file_chooser() as chooser:
                page.click("#motion-open")
            chooser.value.set_files(files.motion)
            expect(page.locator("#motion-status")).to_contain_text("6 frame(s) at 25 fps")
            expect(page.locator("#motion-json")).to_contain_text('"jawOpen": 0.8')
            expect(page.locator("#motion-keys")).to_contain_text("jawOpen 0.8, yaw 8")
            preview = page.locator("#motion-preview img")
            expect(preview).to_have_count(1)
            first = preview.get_attribute("src")
            set_number("#motion-frame", 5)
            expect(preview).not_to_have_attribute("src", first)
            expect(page.locator("#slider-jawOpen input[type=number]")).to_have_value("0.8")  # the sliders follow
            expect(page.locator("#slider-yaw input[type=number]")).to_have_value("8")
            opened = preview.get_attribute("src")
            assert np.abs(picture(first) - picture(opened)).mean() > 2  # the mouth open, the head turned

            # A slider: the lips pucker from frame 2 on (keyed at 2, and not at 0), seen live before keying.
            set_number("#motion-frame", 2)
            expect(page.locator("#slider-jawOpen input[type=number]")).to_have_value("0.32")  # interpolated
            expect(preview).not_to_have_attribute("src", opened)
            at_two = preview.get_attribute("src")
            set_number("#slider-mouthPucker", 1)
            expect(preview).not_to_have_attribute("src", at_two)  # the live preview, nothing keyed yet
            before = picture(at_two)
            mouth = mouth_box(before.astype(np.uint8))
            assert np.abs(picture(preview.get_attribute("src"))[mouth] - before[mouth]).mean() > 5  # measured 11.9
            expect(page.locator("#motion-keys")).not_to_contain_text("mouthPucker")
            page.click("#motion-set")
            expect(page.locator("#motion-keys")).to_contain_text("mouthPucker 1")
            # The table leads to a keyframe's frame (the first cell showing "0": frame 0).
            page.locator("#motion-keys").get_by_text("0", exact=True).filter(visible=True).first.click()
            expect(page.locator("#motion-frame input[type=number]")).to_have_value("0")
            expect(page.locator("#slider-jawOpen input[type=number]")).to_have_value("0")  # frame 0's values came
            expect(page.locator("#slider-mouthPucker input[type=number]")).to_have_value("1")  # held before it
            set_number("#slider-mouthPucker", 0)
            page.click("#motion-set")
            expect(page.locator("#motion-keys")).to_contain_text("jawOpen 0, yaw 0, mouthPucker 0")
            expect(page.locator("#motion-json")).to_contain_text('"mouthPucker": 1.0')

            # Animate the MOTION.json: the video, its side-by-side and the motion it animated, downloaded.
            page.click("#motion-animate")
            video = page.locator("#motion-result video")
            expect(video).to_have_count(1, timeout=120_000)
            panels = page.locator("#motion-side-by-side video")
            expect(panels).to_have_count(1)
            links = page.locator("#motion-motion-files a")
            expect(links).to_have_count(2)
            for name, locator in [("result.mp4", video), ("side_by_side.mp4", panels), *(
                    (Path(links.nth(i).get_attribute("href")).name, links.nth(i)) for i in range(2))]:
                src = locator.get_attribute("src" if name.endswith(".mp4") else "href")
                (downloads / name).write_bytes(fetch(src))

            # A long job, cancelled while it runs: the bar showed its frames, no result comes.
            with page.expect_file_chooser() as chooser:
                page.click("#motion-open")
            chooser.value.set_files(files.long_motion)
            expect(page.locator("#motion-status")).to_contain_text("1000 frame(s)")
            page.click("#motion-animate")
            expect(page.locator("#motion-result")).to_contain_text("/1000 frames")
            page.click("#motion-cancel")
            expect(page.get_by_text("Cancelled: nothing was written.")).to_be_visible()
            expect(video).to_have_count(0)
            browser.close()
    finally:
        app.close()

    frames, fps = read_video(downloads / "result.mp4")
    portrait = load_image(files.portrait)
    assert frames.shape == (6, 256, 256, 3) and fps == 25
    assert len(list(tmp_path.rglob("animated.mp4"))) == 1  # the cancelled job left nothing
    assert psnr(frames[0], portrait) > 28  # relative motion: frame 0 is the photo (H.264, 4:2:0, watermark)
    mouth = mouth_box(portrait)
    assert np.abs(frames[0][mouth].astype(float) - portrait[mouth]).mean() < 15  # measured 8.7
    assert np.abs(frames[5][mouth].astype(float) - portrait[mouth]).mean() > 30  # jawOpen 0.8, puckered: 41.1
    panel_frames, _ = read_video(downloads / "side_by_side.mp4")
    assert panel_frames.shape == (6, 256, 1024, 3)  # source | driving | I_R | result
    motion, written = load_motion(downloads / "motion.npz"), load_motion(downloads / "MOTION.json")
    assert motion.num_frames == written.num_frames == 6
    np.testing.assert_allclose(written.expression, motion.expression, atol=1e-6)
    pucker = motion.expression[:, motion.expression_names.index("mouthPucker")]
    assert pucker.tolist() == pytest.approx([0, 0.5, 1, 1, 1, 1], abs=1e-6)  # the keys, on the photo's 0
    local = {urlsplit(url).netloc}
    assert requested and {urlsplit(u).netloc for u in requested if urlsplit(u).scheme in ("http", "https", "ws")} \
        == local, "the page asked for something outside this machine"

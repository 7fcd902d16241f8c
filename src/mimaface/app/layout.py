"""The page: the source portrait and its face picker, the motion-transfer settings, the engine and its
sampling settings, and one tab per kind of driving (video, image, the motion editor, speech), each
with a one-frame preview through the mesh warp where it has frames to show, Animate / Cancel, and the
job's result, side-by-side and motion files."""

from __future__ import annotations

import gradio as gr

from mimaface.app.handlers import BUNDLED_MODEL, Controls, Handlers
from mimaface.audio import AudioMotionOptions
from mimaface.demo import asset_path
from mimaface.face3d.coefficients import motion_from_json
from mimaface.pipelines.options import ENGINES, SCHEDULER_NAMES, SamplingOptions
from mimaface.pipelines.retarget import RetargetConfig

EXAMPLE_MOTION = asset_path("talk.json")  # what the motion editor starts with
BUNDLED_NOTE = ("the bundled tiny model (13 MiB, trained on this project's synthetic 64 px SynthTalk faces: on a "
                "real photo it gives a smear; `mimaface app --checkpoint DIR` serves a trained one)")
JOBS = {"concurrency_id": "jobs", "concurrency_limit": 1}  # one generation at a time: it takes the CPU
PREVIEWS = {"concurrency_id": "previews", "concurrency_limit": 1, "trigger_mode": "always_last",
            "show_progress": "minimal"}
OPEN_GROUPS = ("Head pose", "Jaw and mouth")  # the editor's slider groups shown open


def build_app(handlers: Handlers) -> gr.Blocks:
    """The Gradio page over ``handlers`` (default theme)."""
    retarget, sampling, audio = RetargetConfig(), SamplingOptions(), AudioMotionOptions()
    diffusion_model = BUNDLED_NOTE if handlers.diffusion_model == BUNDLED_MODEL else handlers.diffusion_model
    with gr.Blocks(title="MIMAFace", analytics_enabled=False, delete_cache=(3600, 7200)) as app:
        gr.Markdown("# MIMAFace\nAnimate a portrait with a driving video, an image, hand-edited motion or speech. "
                    "Each job gives the result, a side-by-side (source | driving | I_R | result) and the motion it "
                    "animated (MOTION.json and `.npz`).")
        with gr.Row():
            source = gr.Image(label="Source portrait", type="filepath", sources=["upload", "clipboard"],
                              elem_id="source", height=320)
            with gr.Column():
                faces = gr.Image(label="Faces found", interactive=False, format="png", elem_id="faces", height=260)
                face = gr.Dropdown(label="Face to animate (0 = the largest)", choices=[], elem_id="face")
                face_status = gr.Markdown(elem_id="face-status")
        engine = gr.Radio(list(ENGINES), value=handlers.default_engine, label="Engine", elem_id="engine",
                          info="warp: the photo itself moves with the face mesh (learning-free). diffusion: the "
                               "MIMAFace model, loaded on its first job. Previews of single frames always use the warp.")
        gr.Markdown(f"The diffusion engine here is {diffusion_model}.", elem_id="engine-note")
        with gr.Accordion("Motion transfer", open=False):
            with gr.Row():
                mode = gr.Radio(["relative", "absolute"], value=retarget.mode, label="Mode",
                                info="relative: the driving's change from its first frame, on the source's own pose")
                keep_pose = gr.Checkbox(retarget.keep_pose, label="Keep the source's head pose")
                keep_gaze = gr.Checkbox(retarget.keep_gaze, label="Keep the source's gaze")
            with gr.Row():
                pose = gr.Slider(0, 2, retarget.pose_multiplier, step=0.05, label="Head motion")
                expression = gr.Slider(0, 2, retarget.expression_multiplier, step=0.05, label="Expression")
                gaze = gr.Slider(0, 2, retarget.gaze_multiplier, step=0.05, label="Gaze")
        with gr.Accordion("Sampling (diffusion engine)", visible=handlers.default_engine == "diffusion",
                          elem_id="sampling") as sampling_panel, gr.Row():
            steps = gr.Slider(1, 100, sampling.num_inference_steps, step=1, label="Denoising steps")
            guidance = gr.Slider(1, 5, sampling.guidance_scale, step=0.1, label="Guidance scale")
            seed = gr.Number(sampling.seed, precision=0, label="Seed")
            scheduler = gr.Dropdown(list(SCHEDULER_NAMES), value=sampling.scheduler, label="Scheduler",
                                    elem_id="scheduler")
            ica = gr.Checkbox(sampling.use_ica, label="ICA: each clip continues the last")
        engine.change(lambda name: gr.update(visible=name == "diffusion"), engine, sampling_panel,
                      show_progress="hidden", queue=False)
        named = {"source": source, "face": face, "mode": mode, "pose_scale": pose, "expression_scale": expression,
                 "gaze_scale": gaze, "keep_pose": keep_pose, "keep_gaze": keep_gaze, "engine": engine,
                 "steps": steps, "guidance": guidance, "seed": seed, "scheduler": scheduler, "ica": ica}
        controls = [named[name] for name in Controls.names()]
        preview_triggers = [face.change, mode.change, pose.change, expression.change, gaze.change, keep_pose.change,
                            keep_gaze.change]
        source.change(handlers.faces, source, [faces, face, face_status])

        with gr.Tabs():
            with gr.Tab("Video", id="video"):
                with gr.Row():
                    with gr.Column():
                        video = gr.Video(label="Driving video", sources=["upload"], elem_id="video-driving", height=360)
                        video_info = gr.Markdown(elem_id="video-info")
                        video_frame = gr.Slider(0, 1, 0, step=1, label="Preview frame", visible=False,
                                                elem_id="video-frame")
                    with gr.Column():
                        video_preview = gr.Image(label="This frame (mesh warp)", interactive=False, format="png",
                                                 elem_id="video-preview", height=360)
                _job_row(handlers, handlers.animate_driving, [video, *controls], gr.Video, "video")
                video.change(handlers.driving_loaded, video, [video_frame, video_info]).then(
                    handlers.preview_driving, [video, video_frame, *controls], video_preview, **PREVIEWS)
                gr.on([video_frame.change, *preview_triggers], handlers.preview_driving,
                      [video, video_frame, *controls], video_preview, **PREVIEWS)

            with gr.Tab("Image", id="image"):
                with gr.Row():
                    image = gr.Image(label="Driving image (its expression and head turn)", type="filepath",
                                     sources=["upload", "clipboard"], elem_id="image-driving", height=360)
                    image_preview = gr.Image(label="Preview (mesh warp)", interactive=False, format="png",
                                             elem_id="image-preview", height=360)
                first_frame = gr.State(0)
                _job_row(handlers, handlers.animate_driving, [image, *controls], gr.Image, "image")
                gr.on([image.change, *preview_triggers], handlers.preview_driving, [image, first_frame, *controls],
                      image_preview, **PREVIEWS)

            with gr.Tab("Motion editor", id="motion"):
                _motion_editor(handlers, controls, preview_triggers, app)

            with gr.Tab("Audio", id="audio"):
                with gr.Row():
                    speech = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                      elem_id="audio-driving")
                    with gr.Column():
                        transcript = gr.Textbox(label="Transcript (optional)", lines=2, elem_id="audio-transcript",
                                                info="what is said: aligned to the audio for better lip sync")
                        mouth = gr.Slider(0, 2, audio.mouth_scale, step=0.05, label="Mouth motion")
                        with gr.Row():
                            blink = gr.Checkbox(audio.blink, label="Blinks")
                            still = gr.Checkbox(audio.still, label="The mouth only (no head motion, gaze, brows)")
                _job_row(handlers, handlers.animate_audio, [speech, transcript, mouth, blink, still, *controls],
                         gr.Video, "audio")
    return app


def _motion_editor(handlers: Handlers, controls: list, preview_triggers: list, app: gr.Blocks) -> None:
    """The Motion editor tab: a frame, its sliders (the values there), a live preview of them, the
    keyframes (set from the sliders moved, listed, removed), the MOTION.json they make, its Animate."""
    example = EXAMPLE_MOTION.read_text(encoding="utf-8")
    frames = motion_from_json(EXAMPLE_MOTION).num_frames
    with gr.Row():
        with gr.Column(scale=5):
            frame = gr.Slider(0, frames - 1, 0, step=1, label="Frame", elem_id="motion-frame")
            with gr.Row():
                render = gr.Image(label="I_R over the source", interactive=False, format="png",
                                  elem_id="motion-render", height=260)
                preview = gr.Image(label="On the source (mesh warp)", interactive=False, format="png",
                                   elem_id="motion-preview", height=260)
            with gr.Row():
                set_keys = gr.Button("Set keyframe (the sliders moved)", size="sm", variant="primary",
                                     elem_id="motion-set")
                remove_keys = gr.Button("Remove this frame's keyframe", size="sm", elem_id="motion-remove")
            table = gr.Dataframe(headers=["frame", "channels keyed"], datatype=["number", "str"], interactive=False,
                                 label="Keyframes (click one to go to its frame)", elem_id="motion-keys",
                                 column_widths=["15%", "85%"], wrap=True, max_height=260)
            status = gr.Markdown(f"{frames} frame(s)", elem_id="motion-status")
        with gr.Column(scale=7):
            sliders = []
            for group, channels in handlers.slider_groups.items():
                with gr.Accordion(group, open=group in OPEN_GROUPS), gr.Row():
                    sliders += [gr.Slider(c.minimum, c.maximum, 0.0, step=c.step, label=c.name, min_width=200,
                                          elem_id=f"slider-{c.name}") for c in channels]
    with gr.Accordion("MOTION.json", open=True):
        text = gr.Code(example, language="json", lines=8, max_lines=16, label="MOTION.json (editable)",
                       elem_id="motion-json")
        with gr.Row():
            upload = gr.UploadButton("Open a MOTION.json", file_types=[".json"], elem_id="motion-open", size="sm")
            export = gr.Button("Export .json and .npz", size="sm", elem_id="motion-export")
        exported = gr.File(label="Motion files", file_count="multiple", visible=False, elem_id="motion-files")
    _job_row(handlers, handlers.animate_motion, [text, *controls], gr.Video, "motion")

    show = {"fn": handlers.preview_motion, "inputs": [text, frame, *sliders, *controls], "outputs": [render, preview],
            **PREVIEWS}
    values = {"fn": handlers.slider_values, "inputs": [text, frame], "outputs": sliders, "show_progress": "hidden"}
    # The text is the truth: a new one (typed, opened, keyed) is checked and listed; a new text or frame
    # sets the sliders to its values (one event, so the last one wins) and shows them; a slider moved
    # by hand (not by a new frame) shows itself at once.
    text.change(handlers.motion_checked, text, [frame, status, table], trigger_mode="always_last")
    gr.on([text.change, frame.change], **values, trigger_mode="always_last").then(**show)
    gr.on([slider.input for slider in sliders] + preview_triggers, **show)
    set_keys.click(handlers.set_keys, [text, frame, *sliders], text)
    remove_keys.click(handlers.remove_keys, [text, frame], text)
    table.select(handlers.pick_keyframe, text, frame)
    upload.upload(handlers.open_motion, upload, text)
    export.click(handlers.export_motion, text, exported)
    app.load(handlers.motion_checked, text, [frame, status, table]).then(**values).then(**show)


def _job_row(handlers: Handlers, job, inputs: list, result_kind: type[gr.Component], name: str) -> None:
    """Animate and Cancel buttons and one tab's outputs: the result, the side-by-side (each with its
    download button) and the motion files."""
    with gr.Row():
        run = gr.Button("Animate", variant="primary", elem_id=f"{name}-animate")
        stop = gr.Button("Cancel", variant="stop", elem_id=f"{name}-cancel")
    options = {"format": "png", "type": "filepath"} if result_kind is gr.Image else {}
    with gr.Row():
        result = result_kind(label="Result", interactive=False, elem_id=f"{name}-result", height=420, scale=2,
                             **options)
        with gr.Column(scale=3):
            panels = result_kind(label="Side by side: source | driving | I_R | result", interactive=False,
                                 elem_id=f"{name}-side-by-side", height=300, **options)
            files = gr.File(label="The motion animated (the driving on the source): MOTION.json, .npz",
                            file_count="multiple", interactive=False, elem_id=f"{name}-motion-files")
    run.click(job, inputs, [result, panels, files], show_progress_on=[result], **JOBS)
    stop.click(handlers.cancel, None, None, concurrency_limit=None, show_progress="hidden")

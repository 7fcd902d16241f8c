"""The ``mimaface`` command line."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from pathlib import Path

from mimaface.errors import InputError, MimafaceError
from mimaface.pipelines.options import ENGINES, SCHEDULER_NAMES, SamplingOptions, check_sampling

VIDEO_OUT = (".mp4",)
IMAGE_OUT = (".png", ".jpg", ".jpeg")


def _cmd_extract(args: argparse.Namespace) -> None:
    from mimaface.face3d.pipeline import ExtractConfig, extract_motion
    from mimaface.media import check_output_file

    check_output_file(args.output, (".npz",), {"input": args.input})
    config = ExtractConfig(face_index=args.face_index, max_gap=args.max_gap, smooth=not args.no_smooth)
    motion = extract_motion(args.input, config, progress=not args.quiet)
    motion.save(args.output)
    print(f"wrote {args.output}: {motion.num_frames} frame(s) at {motion.fps:g} fps, "
          f"{motion.image_size[0]}x{motion.image_size[1]}")


def _cmd_render(args: argparse.Namespace) -> None:
    from mimaface.face3d.coefficients import load_motion
    from mimaface.face3d.pipeline import output_size, render_motion
    from mimaface.face3d.render import overlay
    from mimaface.limits import check_count, limits
    from mimaface.media import (
        check_output_file,
        is_video_path,
        iter_video_frames,
        load_image,
        write_image,
        write_video,
    )
    from mimaface.values import is_finite_number

    out = Path(args.output)
    suffix = out.suffix.lower()
    check_output_file(out, VIDEO_OUT + IMAGE_OUT, {"motion file": args.motion, "overlay": args.overlay})
    if not (is_finite_number(args.alpha) and 0 <= args.alpha <= 1):
        raise InputError(f"--alpha must be a number from 0 to 1, got {args.alpha}")
    motion = load_motion(args.motion)
    backgrounds = None
    size: int | tuple[int, int] | None = args.size
    if args.overlay:
        if is_video_path(args.overlay):
            backgrounds = iter_video_frames(args.overlay)
            first = next(backgrounds, None)
            if first is None:
                raise InputError(f"{args.overlay}: video has no frames")
            backgrounds = itertools.chain([first], backgrounds)
        else:
            first = load_image(args.overlay)
            backgrounds = itertools.repeat(first)
        size = (first.shape[1], first.shape[0])
    width, height = output_size(motion, size)
    check_count(max(width, height), limits().output_side, f"pixels wide or high ({width}x{height})",
                where=f"{out}: the render", name="output_side")
    frames = render_motion(motion, (width, height), progress=not args.quiet)
    if backgrounds is not None:
        frames = (overlay(bg, image, mask, args.alpha) for (image, mask), bg in zip(frames, backgrounds))
    else:
        frames = (image for image, _ in frames)
    if suffix in IMAGE_OUT:
        if not 0 <= args.frame < motion.num_frames:
            raise InputError(f"--frame {args.frame} is out of range: the motion has {motion.num_frames} frame(s)")
        write_image(out, next(itertools.islice(frames, args.frame, None)))
    else:
        write_video(out, frames, motion.fps)
    print(f"wrote {out}")


def _cmd_synth(args: argparse.Namespace) -> None:
    from mimaface.data.contact_sheets import make_contact_sheets
    from mimaface.synthtalk import SynthConfig, generate_dataset

    for name in ("identities", "clips_per_identity", "frames", "size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    config = SynthConfig(identities=args.identities, clips_per_identity=args.clips_per_identity, frames=args.frames,
                         size=args.size, seed=args.seed, fps=args.fps, test_fraction=args.test_fraction,
                         workers=args.workers)
    counts = generate_dataset(args.output, config, progress=not args.quiet)
    print(f"{args.output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not args.no_sheets:
        for path in make_contact_sheets(args.output, Path(args.output) / "contact_sheets"):
            print(f"wrote {path}")


def _cmd_preprocess(args: argparse.Namespace) -> None:
    from mimaface.data.preprocess import PreprocessConfig, preprocess_videos

    config = PreprocessConfig(size=args.size, crop_scale=args.crop_scale, max_clip_frames=args.max_clip_frames,
                              min_clip_frames=args.min_clip_frames, workers=args.workers,
                              identities_csv=args.identities_csv, test_fraction=args.test_fraction,
                              retry_failed=args.retry_failed)
    counts = preprocess_videos(args.video_dir, args.output, config, progress=not args.quiet)
    print(f"{args.output}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if not isinstance(v, (list, dict))))


def _cmd_sheets(args: argparse.Namespace) -> None:
    from mimaface.data.contact_sheets import make_contact_sheets

    for path in make_contact_sheets(args.data, args.output, identities=args.identities):
        print(f"wrote {path}")


def _cmd_train(args: argparse.Namespace) -> None:
    from mimaface.training.config import load_config
    from mimaface.training.trainer import train

    overrides = list(args.overrides)
    for flag, key in ((args.data, "data.root"), (args.vae, "model.vae"), (args.pretrained, "model.pretrained")):
        if flag is not None:
            overrides.append(f"{key}={Path(flag).resolve()}")
    config = load_config(args.config, overrides)
    command = "mimaface " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0] else None
    train(config, args.stage, args.output, resume=args.resume, stop_after=args.stop_after, command=command,
          progress=not args.quiet)


def _cmd_train_estimator(args: argparse.Namespace) -> None:
    from mimaface.evaluation.estimator import EstimatorTraining, train_estimator

    if args.steps < 1 or args.batch_size < 1:
        raise InputError("--steps and --batch-size must be at least 1")
    training = EstimatorTraining(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    record = train_estimator(args.data, args.output, training, progress=not args.quiet)
    held = record["held_out"]
    print(f"wrote {args.output} ({record['train_seconds'] / 60:.1f} min); on {held['identities']} held-out identities: "
          f"pose {held['pose_angle_mae_deg']:.2f} deg, expression {held['expression_mae']:.4f}, gaze "
          f"{held['gaze_mae']:.4f} mean absolute error (predicting the mean: {held['pose_angle_mae_deg_predicting_mean']:.2f}, "
          f"{held['expression_mae_predicting_mean']:.4f}, {held['gaze_mae_predicting_mean']:.4f}); identity rank-1 "
          f"{held.get('identity_rank1', float('nan')):.3f}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from mimaface.evaluation.evaluate import MODES, EvaluateOptions, evaluate

    if args.max_clips is not None and args.max_clips < 2:
        raise InputError("--max-clips must be at least 2")
    sampling = _sampling_options(args)
    options = EvaluateOptions(
        **({"engine": args.engine} if args.engine else {}), split=args.split, modes=MODES if args.mode == "both" else (args.mode,), num_inference_steps=sampling.num_inference_steps,
        guidance_scale=sampling.guidance_scale, seed=sampling.seed, use_ica=sampling.use_ica, max_clips=args.max_clips,
        estimator=args.estimator, lpips_net=args.lpips_net, lpips_backbone=args.lpips_backbone,
        lpips_linear=args.lpips_linear, fid_weights=args.fid_weights)
    evaluate(args.checkpoint, args.data, args.output, options, progress=not args.quiet)
    print((Path(args.output) / "metrics.md").read_text())
    print(f"wrote {args.output}/ (metrics.md, metrics.json, metrics.csv, per_pair.json, distributions.png, "
          f"over_frames.png, figures/, generated/)")


#: The sampling flags, by SamplingOptions field.
SAMPLING_FLAGS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "seed": "--seed",
                  "scheduler": "--scheduler", "clip_length": "--clip-length", "overlap": "--overlap",
                  "batch_size": "--batch-size"}


def _sampling_options(args: argparse.Namespace):
    """SamplingOptions from the sampling flags a command has (the others keep their defaults); a value out
    of range is one line naming its flag."""
    values = {name: getattr(args, flag[2:].replace("-", "_"), None) for name, flag in SAMPLING_FLAGS.items()}
    values = {name: value for name, value in values.items() if value is not None}
    check_sampling(values, SAMPLING_FLAGS)
    options = SamplingOptions(**values)
    if getattr(args, "no_ica", False):
        options.use_ica = False
    return options


def _cmd_animate(args: argparse.Namespace) -> None:
    sampling = _sampling_options(args)  # before importing torch: a bad flag fails at once
    from mimaface.audio import is_audio_path
    from mimaface.pipelines.animate import AnimateOptions, animate
    from mimaface.pipelines.retarget import RetargetConfig

    # Audio driving: the group scales shape the motion made from the audio (--expression-scale: the
    # brows, --mouth-scale: the lips), so the retargeting itself is left at 1.
    from_audio = args.from_audio or is_audio_path(args.driving)
    scales = (1.0, 1.0, 1.0) if from_audio else (args.pose_scale, args.expression_scale, args.gaze_scale)
    options = AnimateOptions(
        engine=args.engine, sampling=sampling,
        retarget=RetargetConfig(mode="absolute" if args.absolute else "relative", pose_multiplier=scales[0],
                                expression_multiplier=scales[1], gaze_multiplier=scales[2],
                                keep_pose=args.keep_pose, keep_gaze=args.keep_gaze),
        face_index=args.face_index, driving_face_index=args.driving_face_index, max_gap=args.max_gap,
        paste=not args.crop, side_by_side=args.side_by_side, frames_dir=args.frames_dir, fps=args.fps,
        from_audio=args.from_audio, audio=_audio_motion_options(args), audio_track=args.audio,
        provenance=_provenance_options(args))
    result = animate(args.source, args.driving, args.output, options, checkpoint=args.checkpoint,
                     progress=not args.quiet)
    print(f"wrote {args.output}: {result.num_frames} frame(s) in {result.num_clips} clip(s)")


def _audio_motion_options(args: argparse.Namespace):
    """AudioMotionOptions from the audio flags (animate's --fps, when given, sets the motion's rate)."""
    from mimaface.audio import AudioMotionOptions
    from mimaface.media import is_existing_path

    transcript = args.transcript
    if transcript is not None and is_existing_path(transcript) and Path(transcript).is_file():
        try:
            transcript = Path(transcript).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{args.transcript}: cannot read the transcript ({exc})") from None
    values = {"transcript": transcript, "lip_sync": args.lip_sync, "mouth_scale": args.mouth_scale,
              "pose_scale": args.pose_scale, "expression_scale": args.expression_scale, "gaze_scale": args.gaze_scale,
              "blink": args.blink, "still": args.still, "pose_from": args.pose_from, "seed": args.seed}
    if args.fps is not None:
        values["fps"] = args.fps
    return AudioMotionOptions(**values)


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """What the inputs are warned about (UserWarning: no speech found, transcript words not in the audio, a
    video cut short, an animated image read as its first frame) as one line each on stderr, like the
    errors, when the command ends (not through its progress bars); other warnings are shown as Python shows
    them."""
    import warnings

    caught = []
    with warnings.catch_warnings():
        show = warnings.showwarning

        def keep(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UserWarning):
                caught.append(message)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = keep
        try:
            yield
        finally:
            for message in caught:
                print(f"mimaface {command}: warning: {message}", file=sys.stderr)


def _cmd_audio2motion(args: argparse.Namespace) -> None:
    from mimaface.audio import audio_to_motion, save_motion
    from mimaface.media import check_output_file

    check_output_file(args.output, (".npz", ".json"), {"audio": args.audio, "--pose-from motion": args.pose_from,
                                                       "transcript": args.transcript})
    motion = audio_to_motion(args.audio, _audio_motion_options(args), progress=not args.quiet)
    save_motion(motion, args.output)
    source = {"align": "the aligned transcript", "loop": "recognised phones", "loudness": "loudness"}[motion.extra["mode"]]
    print(f"wrote {args.output}: {motion.num_frames} frame(s) at {motion.fps:g} fps, lip sync from {source}, "
          f"mouth moving in {motion.extra['speaking'].mean():.0%} of the frames")


def _add_audio_arguments(p: argparse.ArgumentParser, *, animate: bool) -> None:
    """The flags of motion made from audio, their defaults from AudioMotionOptions (animate already has
    --seed, --fps and the three scales)."""
    from mimaface.audio.motion import LIP_SYNC_MODES, AudioMotionOptions

    d = AudioMotionOptions()
    p.add_argument("--transcript", default=None, metavar="TEXT_OR_FILE",
                   help="what is said (text, or a text file): forced alignment instead of the phone loop")
    p.add_argument("--lip-sync", choices=LIP_SYNC_MODES, default=d.lip_sync,
                   help=f"mouth from recognised phones, or from loudness alone (the baseline) (default {d.lip_sync})")
    p.add_argument("--mouth-scale", type=float, default=d.mouth_scale, help=f"lip motion (default {d.mouth_scale:g})")
    p.add_argument("--blink", action=argparse.BooleanOptionalAction, default=d.blink, help="blinks (default on)")
    p.add_argument("--still", action="store_true", help="the mouth only: no head motion, gaze, brows or blinks")
    p.add_argument("--pose-from", default=None, metavar="MOTION",
                   help="take the head motion from this .npz / MOTION.json (relative to its first frame, looped)")
    if animate:
        return
    p.add_argument("--fps", type=float, default=d.fps, help=f"frame rate (default {d.fps:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed of head motion, blinks, gaze (default {d.seed})")
    p.add_argument("--pose-scale", type=float, default=d.pose_scale, help=f"head motion (default {d.pose_scale:g})")
    p.add_argument("--expression-scale", type=float, default=d.expression_scale,
                   help=f"brows, the face besides mouth and lids (default {d.expression_scale:g})")
    p.add_argument("--gaze-scale", type=float, default=d.gaze_scale, help=f"eye movements (default {d.gaze_scale:g})")


def _cmd_demo(args: argparse.Namespace) -> None:
    from mimaface.demo import run_demo

    run_demo(Path(args.output), checkpoint=args.checkpoint, steps=_sampling_options(args).num_inference_steps,
             progress=not args.quiet, provenance=_provenance_options(args))


def _cmd_app(args: argparse.Namespace) -> None:
    from mimaface.app import create_app, serve

    serve(create_app(args.engine, args.checkpoint), host=args.host, port=args.port)


def _provenance_options(args: argparse.Namespace):
    from mimaface.provenance import ProvenanceOptions

    return ProvenanceOptions(enabled=not args.no_watermark, sign_cert=args.sign_cert, sign_key=args.sign_key)


def _add_provenance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-watermark", action="store_true",
                   help="research only: no invisible watermark and no C2PA manifest (the outputs carry no provenance)")
    p.add_argument("--sign-cert", default=None, metavar="CHAIN.pem",
                   help="sign the manifests with this certificate chain (signer first; default: signing.toml in the "
                        "config folder, else a local CA made once there: valid, but trusted by no one else)")
    p.add_argument("--sign-key", default=None, metavar="KEY.pem", help="the private key of --sign-cert")


def _cmd_verify(args: argparse.Namespace) -> int:
    from mimaface.provenance.verify import exit_code, table, verify_file

    results = [verify_file(path, args.trust) for path in args.files]
    print(table(results))
    return exit_code(results)


def _add_sampling_arguments(p: argparse.ArgumentParser, *, full: bool) -> None:
    """The sampling flags, their defaults from SamplingOptions (``full``: all of them, else steps,
    guidance, seed and --no-ica)."""
    d = SamplingOptions()
    p.add_argument("--steps", type=int, default=d.num_inference_steps, help=f"denoising steps (default {d.num_inference_steps})")
    p.add_argument("--guidance", type=float, default=d.guidance_scale,
                   help=f"classifier-free guidance scale (default {d.guidance_scale:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--no-ica", action="store_true", help="generate clips independently (the ablation)")
    if not full:
        return
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=d.scheduler, help=f"sampler (default {d.scheduler})")
    p.add_argument("--clip-length", type=int, default=d.clip_length, help="frames per clip F (default: as trained)")
    p.add_argument("--overlap", type=int, default=d.overlap, help="ICA frames k carried from clip to clip (default: as trained)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"independent clips (--no-ica) or frames (image driving) per forward pass (default {d.batch_size})")


def _add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: OMP_NUM_THREADS, else the cores this process may use)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimaface",
        description="MIMAFace face animation. Commands: extract (motion coefficients from an image or "
                    "video), render (coefficients or MOTION.json to the I_R face render), synth (the SynthTalk "
                    "data set), preprocess (real videos into the same format), sheets (contact sheets of a "
                    "data set), train (the latent codec, stage 1 and stage 2), train-estimator (the evaluation's SynthTalk estimator), evaluate (the paper's metrics on a test split), animate (a portrait driven by a video, image, audio or motion file), audio2motion (motion coefficients from speech), demo (the main job on the bundled example), verify (the watermark and C2PA manifest of generated files), app (the web app).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('mimaface').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("extract", help="fit pose, expression, gaze and identity to the face in an image or video")
    p.add_argument("input", help="image or video file")
    p.add_argument("-o", "--output", required=True, help="output .npz")
    p.add_argument("--face-index", type=int, default=None, help="which face: 0 = largest (default), 1 = second largest, ...")
    p.add_argument("--max-gap", type=int, default=12, help="longest run of faceless video frames to interpolate (default 12)")
    p.add_argument("--no-smooth", action="store_true", help="turn off temporal (One-Euro) smoothing of video coefficients")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("render", help="render coefficients (.npz) or a MOTION.json as I_R (grey face on black)")
    p.add_argument("motion", help="COEFFS.npz or MOTION.json")
    p.add_argument("-o", "--output", required=True, help="OUT.mp4, or OUT.png for one frame")
    p.add_argument("--size", type=int, default=None, help="output height in pixels (default: the source's size)")
    p.add_argument("--overlay", default=None,
                   help="image, or video (frame by frame; the output ends with the shorter), to draw the render over; sets the size")
    p.add_argument("--alpha", type=float, default=0.6, help="opacity of the render in --overlay (default 0.6)")
    p.add_argument("--frame", type=int, default=0, help="frame written to an image output (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("synth", help="generate SynthTalk, a synthetic talking-head data set with exact ground truth")
    p.add_argument("-o", "--output", required=True, help="output folder (re-running resumes)")
    p.add_argument("--identities", type=int, default=100, help="number of identities (default 100)")
    p.add_argument("--clips-per-identity", type=int, default=4, help="clips per identity (default 4)")
    p.add_argument("--frames", type=int, default=48, help="frames per clip (default 48)")
    p.add_argument("--size", type=int, default=128, choices=(64, 128, 256, 512), help="frame size (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="fraction of identities held out (default 0.1)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-sheets", action="store_true", help="do not write contact sheets")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("preprocess", help="turn a folder of talking-head videos into a data set (SynthTalk's format)")
    p.add_argument("video_dir", help="folder of videos; identity = sub-folder name unless --identities-csv")
    p.add_argument("-o", "--output", required=True, help="output folder (re-running resumes)")
    p.add_argument("--size", type=int, default=256, help="side of the square crops (default 256)")
    p.add_argument("--crop-scale", type=float, default=1.8, help="crop side / face extent (default 1.8)")
    p.add_argument("--max-clip-frames", type=int, default=250, help="longer videos are cut into clips (default 250)")
    p.add_argument("--min-clip-frames", type=int, default=16, help="shorter videos are skipped (default 16)")
    p.add_argument("--identities-csv", default=None, help="CSV mapping video file -> identity")
    p.add_argument("--test-fraction", type=float, default=0.0, help="fraction of identities for the test split")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--retry-failed", action="store_true", help="try again videos that failed in an earlier run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("sheets", help="contact sheets (PNG grids) of a data set's identities and of one clip")
    p.add_argument("data", help="a data set folder (from synth or preprocess)")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    p.add_argument("--identities", type=int, default=16, help="identities on the identity sheet (default 16)")
    p.set_defaults(func=_cmd_sheets)

    p = sub.add_parser("train", help="train the latent codec (--stage vae), stage 1 (images) or stage 2 (clips); "
                                     "several processes: accelerate launch -m mimaface.train ...")
    p.add_argument("--config", required=True, help="training config (configs/tiny.yaml, configs/sd15.yaml)")
    p.add_argument("--stage", required=True, choices=("vae", "1", "2"), help="what to train")
    p.add_argument("--output", required=True, help="run folder (checkpoints, logs, validation grids, final/)")
    p.add_argument("--data", default=None, help="data set folder (sets data.root)")
    p.add_argument("--vae", default=None, help="latent codec folder, e.g. RUN_VAE/final (sets model.vae)")
    p.add_argument("--pretrained", default=None, help="stage 2: the stage-1 model, RUN_1/final (sets model.pretrained)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                   help="checkpoint and leave after this many steps (continue later with --resume)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides with dotted names, e.g. stage1.steps=200 data.size=64")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("train-estimator", help="train the SynthTalk estimator (pose, expression, gaze, identity "
                                               "embedding) that evaluation measures generated frames with")
    p.add_argument("--data", required=True, help="a SynthTalk data set folder (train split to learn, test to measure)")
    p.add_argument("-o", "--output", required=True, help="folder for the estimator (config.json, model.safetensors, "
                                                       "estimator.json with its held-out accuracy)")
    p.add_argument("--steps", type=int, default=4000, help="training steps (default 4000)")
    p.add_argument("--batch-size", type=int, default=128, help="frames per step (default 128)")
    p.add_argument("--seed", type=int, default=0)
    _add_threads_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_estimator)

    p = sub.add_parser("evaluate", help="the paper's metrics for a trained model on a SynthTalk test split")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="the engine to evaluate (default: the diffusion model; warp: the learning-free mesh warp)")
    p.add_argument("--checkpoint", default=None, help="a trained model folder (default: the bundled tiny model)")
    p.add_argument("--data", required=True, help="a SynthTalk data set folder")
    p.add_argument("--split", default="test", choices=("train", "test"), help="which split (default test)")
    p.add_argument("--mode", default="both", choices=("same", "cross", "both"), help="same- or cross-identity")
    p.add_argument("-o", "--output", required=True, help="report folder")
    _add_sampling_arguments(p, full=False)
    _add_threads_argument(p)
    p.add_argument("--max-clips", type=int, default=None, help="only the first N clips of the split")
    p.add_argument("--estimator", default=None, help="estimator folder (default: the bundled SynthTalk estimator)")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"), help="LPIPS backbone (default alex)")
    p.add_argument("--lpips-backbone", default=None, help="torchvision ImageNet weights of that backbone (.pth)")
    p.add_argument("--lpips-linear", default=None, help="the lpips package's weights/v0.1/{alex,vgg}.pth")
    p.add_argument("--fid-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("animate", help="animate a portrait with a driving video, image, audio, coefficients or MOTION.json")
    p.add_argument("--source", required=True, help="the portrait (image)")
    p.add_argument("--driving", required=True, help="VIDEO, IMAGE, AUDIO (speech), COEFFS.npz or MOTION.json")
    p.add_argument("-o", "--output", required=True, help="OUT.mp4 (or OUT.png for a single driving image)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="warp (learning-free, the photo itself moves; the default without --checkpoint) or diffusion "
                        "(the MIMAFace model: --checkpoint, or the bundled tiny model, which knows only synthetic faces)")
    p.add_argument("--checkpoint", default=None, help="a trained model folder (RUN_DIR/final); default: the bundled tiny model")
    _add_sampling_arguments(p, full=True)
    _add_threads_argument(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--relative", action="store_true", help="transfer motion relative to the driving's first frame (default)")
    mode.add_argument("--absolute", action="store_true", help="use the driving coefficients as they are")
    p.add_argument("--pose-scale", type=float, default=1.0, help="multiplier of the head motion (default 1)")
    p.add_argument("--expression-scale", type=float, default=1.0,
                   help="multiplier of the expression motion (audio: of the brows; --mouth-scale: the lips) (default 1)")
    p.add_argument("--gaze-scale", type=float, default=1.0, help="multiplier of the gaze motion (default 1)")
    p.add_argument("--keep-pose", action="store_true", help="keep the source's head pose")
    p.add_argument("--keep-gaze", action="store_true", help="keep the source's gaze")
    p.add_argument("--face-index", type=int, default=None, help="which face of the source: 0 = largest (default)")
    p.add_argument("--driving-face-index", type=int, default=None, help="which face of the driving video")
    p.add_argument("--max-gap", type=int, default=12, help="longest faceless run of driving frames to interpolate")
    p.add_argument("--crop", action="store_true", help="write the generated crop instead of pasting it back")
    p.add_argument("--side-by-side", default=None, metavar="SBS.mp4", help="also write source | driving | I_R | result")
    p.add_argument("--frames-dir", default=None, help="also write PNG frames here")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the driving's; audio: 25)")
    p.add_argument("--from-audio", action="store_true",
                   help="drive with the speech in the driving video's audio track, not its face (audio files: always)")
    p.add_argument("--audio", default=None, metavar="AUDIO",
                   help="the sound of the output (default: the driving's own, when it has one)")
    _add_audio_arguments(p, animate=True)
    _add_provenance_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_animate)

    p = sub.add_parser("audio2motion", help="motion coefficients of a face saying what an audio file says "
                                            "(lip sync, head motion, blinks, gaze, brows)")
    p.add_argument("audio", help="wav, mp3, m4a, flac, ... or a video (its audio track)")
    p.add_argument("-o", "--output", required=True, help="MOTION.npz or MOTION.json")
    _add_audio_arguments(p, animate=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_audio2motion)

    p = sub.add_parser("demo", help="the main job: the bundled model animates a held-out SynthTalk identity")
    p.add_argument("-o", "--output", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--checkpoint", default=None, help="a trained model folder (default: the bundled tiny model)")
    p.add_argument("--steps", type=int, default=SamplingOptions.num_inference_steps,
                   help=f"denoising steps (default {SamplingOptions.num_inference_steps})")
    _add_threads_argument(p)
    _add_provenance_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("verify", help="is there a mimaface watermark, and a valid C2PA manifest, in these files?",
                       description="One row per file: the invisible watermark (found or not, the fraction of its 32 "
                                   "known bits read right, the chance of that many without a watermark, the payload: "
                                   "format version and model hash) and the C2PA manifest (absent, valid: signed and "
                                   "unchanged but the signer is not trusted, trusted, or invalid with the reason). "
                                   "Exit status: 0 every file carries provenance (watermark or a valid manifest) and "
                                   "no manifest is invalid; 1 some file carries none; 3 some manifest is invalid; "
                                   "2 a file could not be read.")
    p.add_argument("files", nargs="+", metavar="FILE", help="videos or images")
    p.add_argument("--trust", action="append", default=[], metavar="CA.pem",
                   help="a CA whose signers count as trusted (repeatable; also: trust = [...] in signing.toml)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("app", help="the web app: animate a portrait in the browser (video, image, motion editor, speech)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="the page's default engine, chosen as for animate (the page switches per job and loads the "
                        "other on its first use; previews always use the warp)")
    p.add_argument("--checkpoint", default=None,
                   help="a trained model folder for the diffusion engine (default: the bundled tiny model)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or the next free one)")
    _add_threads_argument(p)
    p.set_defaults(func=_cmd_app)
    return parser


@contextlib.contextmanager
def _native_logs_silenced():
    """Send what native libraries (MediaPipe's TFLite/absl logging) write to fd 2 to /dev/null,
    while Python's own stderr (progress bars, our error line, tracebacks) still reaches the user.
    ``MIMAFACE_DEBUG=1`` keeps the native logs."""
    if os.environ.get("MIMAFACE_DEBUG") or not hasattr(sys.stderr, "fileno"):
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (OSError, ValueError):  # stderr is not a real file (e.g. captured by a test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    python_stderr = sys.stderr
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
        os.dup2(devnull, fd)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        sys.stderr.close()
        sys.stderr = python_stderr
        os.close(saved)
        os.close(devnull)


#: libgomp (torch's OpenMP) spins this many times before a waiting thread sleeps. Its default
#: (300000) made `mimaface demo` 4.4x slower beside one other CPU-bound job on 2 cores, because the
#: spinning threads of both jobs take the cores from each other; 1000 gave 1.7x, at the price of
#: about 30 % on the full demo alone (benchmarks/bench_threads.py, README "Threads"). It must be
#: set before torch loads; a user's own GOMP_SPINCOUNT wins.
GOMP_SPINCOUNT = "1000"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides of `train` may stand anywhere among its options.
    if extra and args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with _native_logs_silenced():
        return _run(args)


def _set_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads (without it, OMP_NUM_THREADS or torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    try:
        _set_threads(getattr(args, "threads", None))
        with _warnings_as_lines(args.command):
            code = args.func(args)  # verify returns its exit status; the others None
    except MimafaceError as exc:
        print(f"mimaface {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mimaface {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``mimaface`` command line."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from pathlib import Path

from mimaface.errors import InputError, MimafaceError

VIDEO_OUT = (".mp4",)
IMAGE_OUT = (".png", ".jpg", ".jpeg")


def _cmd_extract(args: argparse.Namespace) -> None:
    from mimaface.face3d.pipeline import ExtractConfig, extract_motion

    if Path(args.output).suffix.lower() != ".npz":
        raise InputError(f"{args.output}: the output of extract must be a .npz file")
    config = ExtractConfig(face_index=args.face_index, max_gap=args.max_gap, smooth=not args.no_smooth)
    motion = extract_motion(args.input, config, progress=not args.quiet)
    motion.save(args.output)
    print(f"wrote {args.output}: {motion.num_frames} frame(s) at {motion.fps:g} fps, "
          f"{motion.image_size[0]}x{motion.image_size[1]}")


def _cmd_render(args: argparse.Namespace) -> None:
    from mimaface.face3d.coefficients import load_motion
    from mimaface.face3d.pipeline import render_motion
    from mimaface.face3d.render import overlay
    from mimaface.media import (
        is_video_path,
        iter_video_frames,
        load_image,
        write_image,
        write_video,
    )

    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in VIDEO_OUT + IMAGE_OUT:
        raise InputError(f"{out}: unsupported output format (use .mp4, .png or .jpg)")
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
    frames = render_motion(motion, size, progress=not args.quiet)
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


def _cmd_demo(args: argparse.Namespace) -> None:
    from mimaface.demo import run_demo

    run_demo(Path(args.output), progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimaface",
        description="MIMAFace face animation. Commands: extract (motion coefficients from an image or "
                    "video), render (coefficients or MOTION.json to the I_R face render), demo (the "
                    "main job on the bundled example).")
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

    p = sub.add_parser("demo", help="the main job: extraction and rendering on the bundled example")
    p.add_argument("-o", "--output", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _native_logs_silenced():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        args.func(args)
    except MimafaceError as exc:
        print(f"mimaface {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mimaface {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

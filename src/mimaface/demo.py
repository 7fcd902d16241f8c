"""``mimaface demo``: the main job on the bundled example, and the warped-photo test clip."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image

from mimaface.face3d.coefficients import motion_from_json
from mimaface.face3d.pipeline import extract_motion, render_motion
from mimaface.face3d.render import overlay
from mimaface.media import load_image, write_image, write_video


def asset_path(name: str) -> Path:
    return Path(str(importlib.resources.files("mimaface") / "assets" / name))


def warped_clip(image: np.ndarray, num_frames: int = 40, *, max_roll: float = 20.0, max_shift: float = 0.08,
                max_zoom: float = 0.15) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A video made by rotating, shifting and zooming a photo smoothly over time.

    Returns ``(frames (T,H,W,3), truth)`` where ``truth`` holds the per-frame in-plane rotation
    ``roll`` (degrees, counter-clockwise), ``shift`` (pixels, x right / y down) and ``zoom``
    (scale factor), all about the image centre.
    """
    h, w = image.shape[:2]
    phase = np.linspace(0.0, 2.0 * np.pi, num_frames)
    roll = max_roll * np.sin(phase)
    shift = np.stack([max_shift * w * np.sin(2 * phase), max_shift * h * (1 - np.cos(phase)) / 2], -1)
    zoom = 1.0 + max_zoom * np.sin(phase / 2)
    frames = []
    centre = np.array([w / 2.0, h / 2.0])
    for angle, offset, z in zip(roll, shift, zoom):
        a = np.deg2rad(angle)
        # Output pixel p comes from input pixel centre + R^-1 (p - centre - offset) / z (y down, so a
        # counter-clockwise rotation on screen is a clockwise one in array coordinates).
        inv = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / z
        src_origin = centre - inv @ (centre + offset)
        coeffs = (inv[0, 0], inv[0, 1], src_origin[0], inv[1, 0], inv[1, 1], src_origin[1])
        frames.append(np.asarray(Image.fromarray(image).transform((w, h), Image.AFFINE, coeffs, Image.BICUBIC)))
    return np.stack(frames), {"roll": roll, "shift": shift, "zoom": zoom}


def run_demo(output: Path, progress: bool = True) -> None:
    """Extract and render motion on the bundled portrait, a MOTION.json and a generated video."""
    output.mkdir(parents=True, exist_ok=True)
    portrait = load_image(asset_path("portrait.jpg"))
    write_image(output / "portrait.png", portrait)

    # 1. One image: fit, render I_R, overlay.
    motion = extract_motion(output / "portrait.png", progress=progress)
    motion.save(output / "portrait.npz")
    render, mask = next(render_motion(motion, progress=False))
    write_image(output / "portrait_render.png", render)
    write_image(output / "portrait_overlay.png", overlay(portrait, render, mask))
    yaw, pitch, roll = motion.pose[0, :3]
    print(f"portrait: yaw {yaw:+.1f}°, pitch {pitch:+.1f}°, roll {roll:+.1f}°; "
          f"strongest blendshapes: {_top_blendshapes(motion.expression[0], motion.expression_names)}")

    # 2. Hand-written motion, rendered with the portrait's identity.
    talk = motion_from_json(asset_path("talk.json"))
    talk.identity = motion.identity
    talk.image_size = motion.image_size
    talk.pose[:, 3:] = motion.pose[0, 3:]  # keep the portrait's placement and size
    talk_frames = [image for image, _ in render_motion(talk, progress=progress)]
    write_video(output / "motion_json_render.mp4", talk_frames, talk.fps)

    # 3. A video made from the photo (known rotation/shift/zoom): extract, compare, overlay.
    frames, truth = warped_clip(portrait)
    write_video(output / "warped.mp4", frames, 25.0)
    tracked = extract_motion(output / "warped.mp4", progress=progress)
    tracked.save(output / "warped.npz")
    overlays = (np.concatenate([bg, overlay(bg, im, m)], 1)
                for bg, (im, m) in zip(frames, render_motion(tracked, progress=False)))
    write_video(output / "warped_side_by_side.mp4", overlays, tracked.fps)
    roll_change = tracked.pose[:, 2] - tracked.pose[0, 2]
    error = np.abs(roll_change - (truth["roll"] - truth["roll"][0]))
    print(f"video: {tracked.num_frames} frames; roll follows the known rotation within "
          f"{error.mean():.2f}° on average ({error.max():.2f}° at worst)")
    _contact_sheet(output, portrait, render, mask, talk_frames)
    print(f"outputs in {output}/")


def _top_blendshapes(weights: np.ndarray, names: tuple[str, ...], count: int = 3) -> str:
    order = np.argsort(-weights)[:count]
    return ", ".join(f"{names[i]} {weights[i]:.2f}" for i in order)


def _contact_sheet(output: Path, portrait: np.ndarray, render: np.ndarray, mask: np.ndarray,
                   talk_frames: list[np.ndarray]) -> None:
    """One PNG a person can glance at: photo | I_R | overlay, then frames of the MOTION.json render."""
    top = np.concatenate([portrait, render, overlay(portrait, render, mask)], 1)
    picks = np.linspace(0, len(talk_frames) - 1, 6).round().astype(int)
    strip = np.concatenate([talk_frames[i] for i in picks], 1)
    strip = np.asarray(Image.fromarray(strip).resize((top.shape[1], round(strip.shape[0] * top.shape[1] / strip.shape[1]))))
    write_image(output / "summary.png", np.concatenate([top, strip], 0))

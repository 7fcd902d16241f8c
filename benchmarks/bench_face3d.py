"""Throughput of the face3d stages on this machine: landmark detection, fitting, rendering.

Prints frames/s; not a test. Run: ``python benchmarks/bench_face3d.py [--frames N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mimaface.demo import asset_path
from mimaface.face3d.camera import normalized_to_pixels
from mimaface.face3d.fitting import FaceFitter, FitConfig
from mimaface.face3d.landmarks import LandmarkDetector
from mimaface.face3d.model import FaceModel
from mimaface.face3d.render import render_grey
from mimaface.media import load_image


def rate(frames: int, seconds: float) -> str:
    return f"{frames / seconds:8.1f} frames/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    n = args.frames
    model = FaceModel.load()
    rng = np.random.default_rng(0)
    pose = np.stack([rng.uniform(-30, 30, n), rng.uniform(-15, 15, n), rng.uniform(-10, 10, n),
                     np.zeros(n), np.zeros(n), np.full(n, 0.8)], 1)
    expression = rng.uniform(0, 0.6, (n, model.num_expressions))
    identity = rng.normal(size=model.num_identities)
    landmarks = normalized_to_pixels(model.landmarks(pose, identity, expression), 256, 256)
    print(f"torch threads: {torch.get_num_threads()}, frames: {n}")

    image = load_image(asset_path("portrait.jpg"))
    with LandmarkDetector(max_faces=1, video=True) as detector:
        detector.detect(image)
        start = time.perf_counter()
        for _ in range(50):
            detector.detect(image)
        print(f"landmarks (MediaPipe, 256x256, video mode)   {rate(50, time.perf_counter() - start)}")

    fitter = FaceFitter(model, FitConfig(smooth=False))
    start = time.perf_counter()
    fitter.fit(landmarks, 256, 256, identity=identity)
    print(f"fitting, identity known (pose+expr+gaze)     {rate(n, time.perf_counter() - start)}")
    start = time.perf_counter()
    fitter.fit(landmarks, 256, 256)
    print(f"fitting, identity fitted too (a whole video) {rate(n, time.perf_counter() - start)}")

    faces = torch.as_tensor(model.triangles)
    verts = torch.as_tensor(model.posed_vertices(pose, identity, expression), dtype=torch.float32)
    for size in (256, 512):
        for batch in (1, 16):
            render_grey(verts[:batch], faces, size, size)
            start = time.perf_counter()
            for i in range(0, n, batch):
                render_grey(verts[i:i + batch], faces, size, size)
            print(f"render I_R {size}x{size}, batch {batch:2d}              {rate(n, time.perf_counter() - start)}")


if __name__ == "__main__":
    main()

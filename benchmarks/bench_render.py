"""Frames/s of the grey face render: the torch rasteriser (``render_grey``) against moderngl (EGL).

Both do the same job on the same face-like mesh (a 22x22 grid on an ellipsoid cap with a nose,
484 vertices, 882 triangles, covering a bit under half the image, turned a few degrees per
frame): area-weighted vertex normals, per-pixel interpolated normals, Lambert shading, and the
image read back into a numpy array.

    python benchmarks/bench_render.py                 # CPU torch + moderngl, sizes 64..512
    python benchmarks/bench_render.py --device cuda   # torch on the GPU
    python benchmarks/bench_render.py --threads 2 --sizes 128 256 --seconds 1

moderngl needs an EGL driver: on Debian, ``apt-get install libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri``
(without a GPU that is Mesa's llvmpipe software renderer).
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from mimaface.face3d.render import render_grey

LIGHT = (0.3, 0.3, 1.0)
AMBIENT = 0.25


def face_mesh(n: int = 22) -> tuple[np.ndarray, np.ndarray]:
    """A face-sized open surface: an n x n grid warped onto an ellipsoid cap with a nose bump.

    Returns vertices (n*n, 3) in normalised image coordinates and triangles (2(n-1)^2, 3).
    """
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    # Square to disc, so the outline is an ellipse like a face's.
    dx = u * np.sqrt(1 - v**2 / 2)
    dy = v * np.sqrt(1 - u**2 / 2)
    a, b = 0.66, 0.86
    x, y = a * dx, b * dy
    z = 0.45 * np.sqrt(np.clip(1 - dx**2 - dy**2, 0, None))
    z += 0.22 * np.exp(-(x**2 / 0.012 + (y + 0.05) ** 2 / 0.05))  # nose: overlaps when the head turns
    verts = np.stack([x, y, z], -1).reshape(-1, 3)
    idx = np.arange(n * n).reshape(n, n)
    a_, b_, c_, d_ = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tris = np.concatenate([np.stack([a_, b_, d_], -1).reshape(-1, 3), np.stack([a_, d_, c_], -1).reshape(-1, 3)])
    return verts.astype(np.float32), tris.astype(np.int64)


def posed_frames(verts: np.ndarray, count: int) -> np.ndarray:
    """``count`` poses of the mesh: yaw and pitch swinging by a few degrees per frame."""
    out = np.empty((count, *verts.shape), np.float32)
    for k in range(count):
        yaw, pitch = math.radians(25 * math.sin(0.21 * k)), math.radians(12 * math.sin(0.13 * k + 1))
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        rot = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        out[k] = verts @ rot.T.astype(np.float32)
    return out


def measure(step, frames_per_call: int, seconds: float, rounds: int = 3) -> float:
    """frames/s of ``step(call_index)``.

    After a warm-up call, ``rounds`` rounds of calls are timed for ``seconds / rounds`` each (at
    least 3 calls a round); a round scores its median call time and the best round counts, so a
    burst of other work on the machine does not end up in the figure.
    """
    step(0)
    calls, best = 0, float("inf")
    for _ in range(rounds):
        times: list[float] = []
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds / rounds or len(times) < 3:
            start = time.perf_counter()
            calls += 1
            step(calls)
            times.append(time.perf_counter() - start)
        best = min(best, float(np.median(times)))
    return frames_per_call / best


def bench_torch(frames: np.ndarray, faces: np.ndarray, size: int, batch: int, device: str, seconds: float) -> float:
    verts = torch.as_tensor(frames, device=device)
    faces_t = torch.as_tensor(faces, device=device)
    n = len(frames) // batch

    def step(k: int) -> None:
        start = (k % n) * batch
        image, mask = render_grey(verts[start:start + batch], faces_t, size, size, LIGHT, AMBIENT)
        image.cpu().numpy()
        mask.cpu().numpy()

    return measure(step, batch, seconds)


_VERTEX_SHADER = """
#version 330
in vec3 in_pos;
in vec3 in_normal;
out vec3 v_normal;
void main() {
    v_normal = in_normal;
    // Normalised image coords are clip space for a square image; larger z is closer, GL wants smaller.
    gl_Position = vec4(in_pos.xy, -in_pos.z * 0.25, 1.0);
}
"""
_FRAGMENT_SHADER = """
#version 330
in vec3 v_normal;
uniform vec3 light;
uniform float ambient;
out vec4 colour;
void main() {
    vec3 n = normalize(v_normal);
    // The same rule as render_grey: turn the normal toward the camera if it points away.
    if (n.z < 0.0) n = -n;
    float shade = ambient + (1.0 - ambient) * max(dot(n, light), 0.0);
    colour = vec4(vec3(shade), 1.0);
}
"""


def vertex_normals_np(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = verts[faces]
    face_n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(verts)
    for k in range(3):
        for c in range(3):
            normals[:, c] += np.bincount(faces[:, k], face_n[:, c], minlength=len(verts))
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


class ModernGLRenderer:
    """The same render with OpenGL through a headless EGL context; a batch is drawn as tiles of one
    framebuffer and read back at once."""

    def __init__(self, faces: np.ndarray, num_vertices: int, size: int, batch: int):
        import moderngl

        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.size, self.batch = size, batch
        self.prog = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        light = np.asarray(LIGHT, np.float32)
        self.prog["light"].value = tuple(light / np.linalg.norm(light))
        self.prog["ambient"].value = AMBIENT
        self.vbo = self.ctx.buffer(reserve=num_vertices * 6 * 4, dynamic=True)
        self.ibo = self.ctx.buffer(np.ascontiguousarray(faces, dtype=np.int32).tobytes())
        self.vao = self.ctx.vertex_array(self.prog, [(self.vbo, "3f 3f", "in_pos", "in_normal")], self.ibo)
        self.fbo = self.ctx.simple_framebuffer((size, size * batch), components=4)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.faces = faces

    @property
    def renderer(self) -> str:
        return self.ctx.info["GL_RENDERER"]

    def render(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,H,W,3) uint8 images and (B,H,W) bool masks, rows top to bottom."""
        self.fbo.use()
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        for k, verts in enumerate(frames):
            normals = vertex_normals_np(verts, self.faces)
            self.vbo.write(np.concatenate([verts, normals], 1).astype(np.float32).tobytes())
            self.fbo.viewport = (0, k * self.size, self.size, self.size)
            self.vao.render()
        data = np.frombuffer(self.fbo.read(components=4, viewport=(0, 0, self.size, self.size * len(frames))), np.uint8)
        tiles = data.reshape(len(frames), self.size, self.size, 4)[:, ::-1]
        return tiles[..., :3], tiles[..., 3] > 0

    def release(self) -> None:
        self.ctx.release()


def bench_moderngl(frames: np.ndarray, faces: np.ndarray, size: int, batch: int, seconds: float) -> float:
    renderer = ModernGLRenderer(faces, frames.shape[1], size, batch)
    n = len(frames) // batch
    try:
        return measure(lambda k: renderer.render(frames[(k % n) * batch:(k % n + 1) * batch]), batch, seconds)
    finally:
        renderer.release()


def moderngl_status() -> str | None:
    """None if a headless EGL context can be made, else why not.

    The first attempt runs in a child process: a broken EGL driver can crash rather than raise.
    """
    try:
        import moderngl  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
        return f"{type(exc).__name__}: {exc}"
    probe = "import moderngl; moderngl.create_standalone_context(backend='egl').release()"
    try:
        child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "creating an EGL context timed out"
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines()
        return lines[-1] if lines else f"EGL probe exited with status {child.returncode}"
    return None


def agreement(frames: np.ndarray, faces: np.ndarray, size: int) -> str:
    """How closely the two renders agree (a check that both do the same job)."""
    images, masks = render_grey(torch.as_tensor(frames), torch.as_tensor(faces), size, size, LIGHT, AMBIENT)
    ours, masks = (images.numpy() * 255).round(), masks.numpy()
    renderer = ModernGLRenderer(faces, frames.shape[1], size, len(frames))
    try:
        gl_images, gl_masks = renderer.render(frames)
    finally:
        renderer.release()
    both = masks & gl_masks
    diff = np.abs(ours[both] - gl_images[both].astype(np.float64))
    iou = both.sum() / max(1, (masks | gl_masks).sum())
    return (f"mask IoU {iou:.5f}, grey levels on common pixels differ by {diff.mean():.3f} on average, "
            f"{diff.max():.0f} at most (of 255), over {len(frames)} poses")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device for render_grey (cpu, cuda)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement (3 rounds)")
    parser.add_argument("--no-moderngl", action="store_true")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    verts, faces = face_mesh()
    frames = posed_frames(verts, 64)
    device = torch.device(args.device)
    torch_name = f"torch {torch.__version__} on {args.device}"
    if device.type == "cpu":
        torch_name += f" ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    elif device.type == "cuda":
        torch_name += f" ({torch.cuda.get_device_name(device)})"
    print(f"mesh: {len(verts)} vertices, {len(faces)} triangles, {len(frames)} poses")
    print(f"torch: {torch_name}")

    gl_reason = "disabled by --no-moderngl" if args.no_moderngl else moderngl_status()
    if gl_reason is None:
        renderer = ModernGLRenderer(faces, len(verts), 64, 1)
        print(f"moderngl: EGL, {renderer.renderer}")
        renderer.release()
        print(f"agreement at 256 px: {agreement(frames[:16], faces, 256)}")
    else:
        print(f"moderngl unavailable: {gl_reason}")

    print()
    print("| size | batch | torch render_grey (frames/s) | moderngl EGL (frames/s) |")
    print("|-----:|------:|-----------------------------:|------------------------:|")
    for size in args.sizes:
        for batch in args.batches:
            fps_torch = bench_torch(frames, faces, size, batch, args.device, args.seconds)
            fps_gl = "n/a" if gl_reason else f"{bench_moderngl(frames, faces, size, batch, args.seconds):.0f}"
            print(f"| {size} | {batch} | {fps_torch:.0f} | {fps_gl} |", flush=True)


if __name__ == "__main__":
    main()

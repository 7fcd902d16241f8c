"""Head pose: Euler angles, rotation matrices and the weighted similarity (Umeyama) fit.

A pose is the 6-vector ``[yaw, pitch, roll, tx, ty, scale]``: angles in degrees, translation
and scale in the normalised image frame of :mod:`mimaface.face3d.camera`. A model-space
point ``v`` is posed as ``scale * R @ v + [tx, ty, 0]`` with
``R = Rz(roll) @ Ry(yaw) @ Rx(-pitch)``, so that

* ``yaw > 0`` turns the face towards the image's right (the subject's left),
* ``pitch > 0`` tilts the face up,
* ``roll > 0`` tilts the head counter-clockwise as seen in the image.
"""

from __future__ import annotations

import numpy as np

POSE_NAMES = ("yaw", "pitch", "roll", "tx", "ty", "scale")


def euler_to_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` from angles in degrees (broadcast together)."""
    y, p, r = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (yaw, pitch, roll))
    y, p, r = np.broadcast_arrays(y, p, r)
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(y), np.zeros_like(y)
    rx = np.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).reshape(*y.shape, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*y.shape, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*y.shape, 3, 3)
    return rz @ ry @ rx


def matrix_to_euler(rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`euler_to_matrix`: (yaw, pitch, roll) in degrees for ``(..., 3, 3)``."""
    rot = np.asarray(rotation, dtype=np.float64)
    yaw = np.arcsin(np.clip(-rot[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(-rot[..., 2, 1], rot[..., 2, 2])
    roll = np.arctan2(rot[..., 1, 0], rot[..., 0, 0])
    return np.rad2deg(yaw), np.rad2deg(pitch), np.rad2deg(roll)


def pose_to_similarity(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(..., 6)`` poses into rotation ``(..., 3, 3)``, translation ``(..., 3)`` and scale ``(...)``."""
    pose = np.asarray(pose, dtype=np.float64)
    rot = euler_to_matrix(pose[..., 0], pose[..., 1], pose[..., 2])
    trans = np.concatenate([pose[..., 3:5], np.zeros_like(pose[..., :1])], -1)
    return rot, trans, pose[..., 5]


def similarity_to_pose(rotation: np.ndarray, translation: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pose_to_similarity` (the translation's z is dropped: the camera is orthographic)."""
    yaw, pitch, roll = matrix_to_euler(rotation)
    translation = np.asarray(translation, dtype=np.float64)
    return np.stack([yaw, pitch, roll, translation[..., 0], translation[..., 1], np.asarray(scale, np.float64)], -1)


def apply_pose(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Pose model-space points ``(..., N, 3)`` with poses ``(..., 6)``."""
    rot, trans, scale = pose_to_similarity(pose)
    return scale[..., None, None] * np.einsum("...ij,...nj->...ni", rot, points) + trans[..., None, :]


def umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity mapping ``source`` onto ``target``.

    Both are ``(..., N, 3)`` (batched over leading axes); returns rotation ``(..., 3, 3)``,
    translation ``(..., 3)`` and scale ``(...)`` minimising
    ``sum_i w_i |s R source_i + t - target_i|^2`` (Umeyama 1991).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n = source.shape[-2]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum(-1, keepdims=True)
    mu_s = np.einsum("...n,...nd->...d", w, source)
    mu_t = np.einsum("...n,...nd->...d", w, target)
    src = source - mu_s[..., None, :]
    tgt = target - mu_t[..., None, :]
    cov = np.einsum("...n,...ni,...nj->...ij", w, tgt, src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones_like(sigma)
    sign[..., 2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ (sign[..., :, None] * vt)
    var_s = np.einsum("...n,...nd->...", w, src**2)
    scale = (sigma * sign).sum(-1) / var_s
    trans = mu_t - scale[..., None] * np.einsum("...ij,...j->...i", rot, mu_s)
    return rot, trans, scale

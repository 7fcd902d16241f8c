"""Fit the face model to detected landmarks: pose, expression and gaze per frame, identity per subject.

Per frame, pose and expression are estimated alternately: a weighted similarity (Umeyama) fit
gives the pose, then, with the landmarks mapped back into model space, the expression is the
solution of a bounded, regularised least-squares problem (blendshape coefficients in
``[0, 1]``); the next pose fit uses the shape with that expression. The first pose fit weighs
the vertices that no blendshape moves (nose bridge, temples, forehead), so an open mouth does not
tilt the head. The identity is fitted jointly with the expressions of up to
``max_identity_frames`` frames spread over the sequence, then held fixed. Gaze is read from
the iris landmarks in model space. For videos, the coefficient tracks are smoothed by a
One-Euro filter (on by default).

The landmarks are MediaPipe's, and MediaPipe follows an opening jaw only part of the way (on exact
renders its chin drops about half as far as the model's ``jawOpen`` moves it; the lips follow).
So the fit reads ``jawOpen`` with the displacement the detector reports for it, measured on
SynthTalk renders by ``scripts/calibrate_reader.py`` (the asset ``reader_response.npz``): a true
0.6 was read as 0.37 with the model's own jaw, and within a few hundredths of it with the
response. ``FitConfig(detector_response=False)`` reads with the model's own basis (for landmarks
that are the model's exact vertices).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field

import numpy as np

from mimaface.errors import InputError
from mimaface.face3d.blendshapes import similarity_tangents
from mimaface.face3d.camera import pixels_to_normalized
from mimaface.face3d.coefficients import check_finite, check_fps, whole_number
from mimaface.face3d.model import NUM_LANDMARKS, NUM_VERTICES, FaceModel
from mimaface.face3d.pose import similarity_to_pose, umeyama
from mimaface.face3d.smoothing import OneEuroConfig, one_euro_filter
from mimaface.limits import check_count, limits


@dataclass
class FitConfig:
    """Settings of :class:`FaceFitter`."""

    iterations: int = 5  # pose/expression alternations per frame
    depth_weight: float = 0.5  # weight of the (less reliable) depth coordinate
    expression_prior: float = 1e-5  # ridge on expression coefficients
    identity_prior: float = 1e-4  # ridge on identity coefficients (standard-normal prior)
    identity_bound: float = 4.0  # |identity coefficient| <= this
    max_identity_frames: int = 24
    detector_response: bool = True  # read jawOpen as MediaPipe sees it (see the module's docstring)
    smooth: bool = True
    smoothing: OneEuroConfig = field(default_factory=OneEuroConfig)


@dataclass
class FrameFit:
    """Per-frame fit results (``T`` frames)."""

    pose: np.ndarray  # (T,6)
    expression: np.ndarray  # (T,K)
    gaze: np.ndarray  # (T,4)
    identity: np.ndarray  # (M,)
    rms_error: np.ndarray  # (T,) landmark residual in model units


def solve_box_qp(hessian: np.ndarray, linear: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                 max_iterations: int = 50) -> np.ndarray:
    """Minimise ``x.H.x/2 - b.x`` subject to ``lower <= x <= upper`` (bounds may be infinite).

    Projected Newton with an active set (Bertsekas 1982): Newton steps on the free variables,
    projected onto the box with a backtracking arc search. ``linear`` may be batched
    ``(B, n)`` with one shared ``hessian`` ``(n, n)``; convergence is exact in a few steps.
    """
    linear = np.asarray(linear, np.float64)
    if linear.ndim == 2:
        return np.stack([solve_box_qp(hessian, b, lower, upper, max_iterations) for b in linear])

    def objective(v: np.ndarray) -> float:
        return 0.5 * v @ hessian @ v - linear @ v

    x = np.clip(np.linalg.solve(hessian, linear), lower, upper)
    for _ in range(max_iterations):
        grad = hessian @ x - linear
        blocked = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
        free = ~blocked
        step = np.zeros_like(x)
        if free.any():
            step[free] = -np.linalg.solve(hessian[np.ix_(free, free)], grad[free])
        f0, length = objective(x), 1.0
        while True:
            candidate = np.clip(x + length * step, lower, upper)
            if objective(candidate) <= f0 or length < 1e-6:
                break
            length *= 0.5
        if np.abs(candidate - x).max() < 1e-10:
            return candidate
        x = candidate
    return x


RESPONSE_ASSET = "reader_response.npz"


def detector_response(model: FaceModel) -> np.ndarray:
    """``model``'s expression basis with the calibrated blendshapes replaced by the displacement MediaPipe
    reports for them (:data:`RESPONSE_ASSET`). A blendshape whose basis differs from the one the response
    was measured on (another face model) keeps the model's own."""
    basis = model.expression_basis.copy()
    with importlib.resources.as_file(importlib.resources.files("mimaface") / "assets" / RESPONSE_ASSET) as path:
        data = np.load(path)
        for name in (str(n) for n in data["names"]):
            if name in model.expression_names:
                column = model.expression_names.index(name)
                if np.allclose(data[f"model_{name}"], basis[column], atol=1e-5):
                    basis[column] = data[f"detected_{name}"]
    return basis


class FaceFitter:
    """Fits :class:`FaceModel` coefficients to 478-point landmarks."""

    def __init__(self, model: FaceModel | None = None, config: FitConfig | None = None):
        self.model = model or FaceModel.load()
        self.config = config or FitConfig()
        m, cfg = self.model, self.config
        self._coord_weight = np.tile([1.0, 1.0, cfg.depth_weight], NUM_VERTICES)
        self._reading_basis = detector_response(m) if cfg.detector_response else m.expression_basis
        # Expression columns are solved together with the 7 similarity tangents (a linearised pose
        # correction), so that the blendshapes cannot absorb a residual pose error.
        self._exp = np.concatenate([self._reading_basis.reshape(m.num_expressions, -1),
                                    similarity_tangents(m.mean_shape)])
        self._id = m.identity_basis.reshape(m.num_identities, -1)
        k = m.num_expressions
        prior = np.zeros(len(self._exp))
        prior[:k] = cfg.expression_prior
        self._exp_hessian = (self._exp * self._coord_weight) @ self._exp.T + np.diag(prior)
        self._exp_lower = np.concatenate([np.zeros(k), np.full(7, -np.inf)])
        self._exp_upper = np.concatenate([np.ones(k), np.full(7, np.inf)])
        self._cross = (self._id * self._coord_weight) @ self._exp.T  # (M,K+7)
        self._id_gram = (self._id * self._coord_weight) @ self._id.T
        # Vertices that expressions barely move anchor the first pose estimate.
        motion = np.linalg.norm(m.expression_basis, axis=-1).max(0)
        self._rigid_weight = (1.0 - motion / motion.max()) ** 8 + 1e-3

    # -- public API --------------------------------------------------------------------------
    def fit(self, landmarks_px: np.ndarray, width: int, height: int, identity: np.ndarray | None = None,
            smooth: bool | None = None, fps: float = 25.0) -> FrameFit:
        """Fit a sequence of ``(T, 478, 3)`` pixel landmarks (one image: ``T = 1``).

        ``identity`` fixes the subject's identity coefficients instead of fitting them.
        ``smooth`` overrides ``config.smooth`` (smoothing is only applied when ``T > 1``); ``fps`` is
        the frame rate the smoothing cutoffs refer to. A wrong type, shape or value of any argument is an
        :class:`~mimaface.errors.InputError`.
        """
        points = pixels_to_normalized(_checked_landmarks(landmarks_px), _pixel_side(width, "width"),
                                      _pixel_side(height, "height"))
        if identity is not None:
            identity = self._checked_identity(identity)
        if smooth is not None and not isinstance(smooth, (bool, np.bool_)):
            raise InputError(f"smooth must be True, False or None, got {smooth!r}")
        fps = check_fps(fps, "fps")
        if identity is None:
            identity = self.fit_identity(points)
        pose, expression, model_points, rms = self._fit_frames(points, identity)
        gaze = self.model.gaze_from_landmarks(model_points)
        smooth = self.config.smooth if smooth is None else smooth
        if smooth and len(points) > 1:
            cfg = self.config.smoothing
            pose, gaze = one_euro_filter(pose, fps, cfg), one_euro_filter(gaze, fps, cfg)
            expression = np.clip(one_euro_filter(expression, fps, cfg), 0.0, 1.0)
        return FrameFit(pose, expression, gaze, np.asarray(identity, np.float64), rms)

    def fit_identity(self, points: np.ndarray) -> np.ndarray:
        """Identity coefficients from normalised landmarks ``(T, 478, 3)`` (jointly with expressions)."""
        cfg, m = self.config, self.model
        count = min(len(points), cfg.max_identity_frames)
        keys = points[np.unique(np.linspace(0, len(points) - 1, count).round().astype(int))]
        identity = np.zeros(m.num_identities)
        for _ in range(3):
            _, _, model_points, _ = self._fit_frames(keys, identity)
            identity = self._solve_identity_and_expression(model_points[:, :NUM_VERTICES])
        return identity

    # -- internals ---------------------------------------------------------------------------
    def _checked_identity(self, identity) -> np.ndarray:
        count = self.model.num_identities
        try:
            values = np.asarray(identity, np.float64)
        except (TypeError, ValueError):
            raise InputError(f"identity must be an array of {count} numbers, got {type(identity).__name__}") from None
        if values.shape != (count,):
            raise InputError(f"identity must have shape ({count},) (the face model's identity coefficients), "
                             f"got {values.shape}")
        check_finite(values, "identity")
        return values

    def _fit_frames(self, points: np.ndarray, identity: np.ndarray):
        """Alternate pose and expression for every frame (vectorised over frames)."""
        m, cfg = self.model, self.config
        mesh = points[:, :NUM_VERTICES]
        base = m.vertices(identity)
        rot, trans, scale = umeyama(base, mesh, self._rigid_weight)
        expression = np.zeros((len(points), m.num_expressions))
        for _ in range(cfg.iterations):
            model_mesh = self._to_model_space(mesh, rot, trans, scale)
            expression = self._solve_expression(model_mesh - base)
            rot, trans, scale = umeyama(self._read_shape(identity, expression), mesh)
        model_points = self._to_model_space(points, rot, trans, scale)
        residual = model_points[:, :NUM_VERTICES] - self._read_shape(identity, expression)
        rms = np.sqrt((residual**2).sum(-1).mean(-1))
        return similarity_to_pose(rot, trans, scale), expression, model_points, rms

    def _read_shape(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """The shape the detector would report for these coefficients (model space)."""
        return self.model.vertices(identity) + np.einsum("...k,kvd->...vd", expression, self._reading_basis)

    @staticmethod
    def _to_model_space(points, rot, trans, scale):
        return np.einsum("tji,tnj->tni", rot, points - trans[:, None, :]) / scale[:, None, None]

    def _solve_expression(self, offsets: np.ndarray) -> np.ndarray:
        linear = (offsets.reshape(len(offsets), -1) * self._coord_weight) @ self._exp.T
        solution = solve_box_qp(self._exp_hessian, linear, self._exp_lower, self._exp_upper)
        return solution[:, : self.model.num_expressions]

    def _solve_identity_and_expression(self, model_mesh: np.ndarray) -> np.ndarray:
        """Joint bounded least squares for one identity and each frame's expression."""
        cfg, m = self.config, self.model
        t, k, n_id = len(model_mesh), len(self._exp), m.num_identities
        offsets = (model_mesh - m.mean_shape).reshape(t, -1) * self._coord_weight
        size = n_id + t * k
        hessian = np.zeros((size, size))
        hessian[:n_id, :n_id] = t * self._id_gram + cfg.identity_prior * np.eye(n_id)
        for f in range(t):
            block = slice(n_id + f * k, n_id + (f + 1) * k)
            hessian[:n_id, block] = self._cross
            hessian[block, :n_id] = self._cross.T
            hessian[block, block] = self._exp_hessian
        linear = np.concatenate([(offsets @ self._id.T).sum(0), (offsets @ self._exp.T).ravel()])
        lower = np.concatenate([np.full(n_id, -cfg.identity_bound), np.tile(self._exp_lower, t)])
        upper = np.concatenate([np.full(n_id, cfg.identity_bound), np.tile(self._exp_upper, t)])
        solution = solve_box_qp(hessian, linear, lower, upper)
        return solution[:n_id]


def _checked_landmarks(landmarks) -> np.ndarray:
    """``(T, 478, 3)`` pixel landmarks as float64, or an InputError saying what is wrong with them."""
    shape = f"(T, {NUM_LANDMARKS}, 3)"
    if not isinstance(landmarks, (np.ndarray, list, tuple)) or (
            isinstance(landmarks, np.ndarray) and landmarks.dtype.kind not in "fiu"):
        got = f"a {landmarks.dtype} array" if isinstance(landmarks, np.ndarray) else type(landmarks).__name__
        raise InputError(f"landmarks must be an array of numbers of shape {shape}, got {got}")
    try:
        points = np.asarray(landmarks, np.float64)
    except (TypeError, ValueError):
        raise InputError(f"landmarks must be an array of numbers of shape {shape}, got a {type(landmarks).__name__} "
                         "that is not one") from None
    if points.shape == (NUM_LANDMARKS, 3):
        raise InputError(f"landmarks must have shape {shape}, got {points.shape}: for one image use landmarks[None]")
    if points.ndim != 3:
        raise InputError(f"landmarks must have shape {shape}, got {points.shape}")
    if points.shape[1] != NUM_LANDMARKS:
        raise InputError(f"expected {NUM_LANDMARKS} landmarks (MediaPipe with iris), got {points.shape[1]}")
    if points.shape[2] != 3:
        raise InputError(f"expected 3 coordinates (x, y, z) per landmark, got {points.shape[2]}")
    if len(points) == 0:
        raise InputError("landmarks hold no frames")
    check_count(len(points), limits().frames, "frames", where="landmarks", name="frames")
    check_finite(points, "landmarks")
    return points


def _pixel_side(value, name: str) -> int:
    """The width or height of the image the landmarks are in: a whole number of at least 1."""
    side = whole_number(value, name)
    if side < 1:
        raise InputError(f"{name} must be at least 1 pixel, got {side}")
    return side

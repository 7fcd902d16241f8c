"""The learning-free engine: the source photo itself, warped by the face mesh (``MeshWarpPipeline``)."""

from mimaface.warp.engine import MeshWarpPipeline, WarpConfig
from mimaface.warp.mesh import WarpMesh

__all__ = ["MeshWarpPipeline", "WarpConfig", "WarpMesh"]

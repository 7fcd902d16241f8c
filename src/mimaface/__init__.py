"""MIMAFace: face animation via motion-identity modulated appearance learning."""

__version__ = "0.1.0"

# The network needs torch/diffusers/transformers; import it only when asked for, so the face3d
# tools and the CLI start without them.
_LAZY = {"MIMAFaceModel": "mimaface.models", "MIMAFaceConfig": "mimaface.models",
         "MIMAFacePipeline": "mimaface.pipelines.pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mimaface' has no attribute {name!r}")

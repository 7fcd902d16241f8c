"""Inference: the denoising loop (and, on top of it, the long-video pipeline)."""

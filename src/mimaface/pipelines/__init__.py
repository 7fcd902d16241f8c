"""Inference: the sampling options, the generation pipeline (a diffusers DiffusionPipeline) and, on top of it,\nthe source face, retargeting, paste-back and the animate command."""

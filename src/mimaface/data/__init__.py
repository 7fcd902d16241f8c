"""Talking-head data: the clip format, SynthTalk, real-video preprocessing, PyTorch datasets."""

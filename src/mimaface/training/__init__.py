"""Training: the latent codec (``--stage vae``), stage 1 (images) and stage 2 (clips), with Accelerate."""

from mimaface.training.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]

"""The MIMAFace network: appearance encoder + MIA, conditioned SD UNet, ICA, motion modules.

Importing this package imports torch, diffusers and transformers.
"""

from mimaface.errors import ModelLoadError
from mimaface.models.appearance import AppearanceEncoder, MotionIdentityAppearance
from mimaface.models.config import (
    AugmentConfig,
    ICAConfig,
    IdentityLossConfig,
    MIAConfig,
    MIMAFaceConfig,
)
from mimaface.models.ica import (
    ICACondition,
    ica_condition_from_previous,
    sample_ica_condition,
)
from mimaface.models.identity_loss import (
    IdentityContrastiveLoss,
    IdentityMemoryBank,
    PhotometricAugment,
)
from mimaface.models.mimaface_model import (
    AppearanceOutput,
    MIMAFaceModel,
    MIMAFaceOutput,
)
from mimaface.models.unet import ConditionedUNet

__all__ = [
    "AppearanceEncoder",
    "AppearanceOutput",
    "AugmentConfig",
    "ConditionedUNet",
    "ICACondition",
    "ICAConfig",
    "IdentityContrastiveLoss",
    "IdentityLossConfig",
    "IdentityMemoryBank",
    "MIAConfig",
    "MIMAFaceConfig",
    "MIMAFaceModel",
    "MIMAFaceOutput",
    "ModelLoadError",
    "MotionIdentityAppearance",
    "PhotometricAugment",
    "ica_condition_from_previous",
    "sample_ica_condition",
]

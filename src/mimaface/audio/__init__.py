"""Audio-driven animation: a voice recording -> motion coefficients (lip sync from phones, and the
head motion, blinks, gaze and brows of a talking face). See :mod:`mimaface.audio.motion`."""

from mimaface.audio.motion import AudioMotionOptions, audio_to_motion, save_motion
from mimaface.audio.speech import is_audio_path

__all__ = ["AudioMotionOptions", "audio_to_motion", "is_audio_path", "save_motion"]

"""MIMAFace: face animation via motion-identity modulated appearance learning."""

__version__ = "0.1.0"

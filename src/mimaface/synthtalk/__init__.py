"""SynthTalk: a synthetic talking-head data set rendered from the face model.

Every frame's pose, expression, gaze and identity is known. Each synthetic person has a face
shape (the model's identity coefficients), skin, eyes, brows, hair, clothes, background and
light drawn from a seed (:mod:`.appearance`); clips move the head, the jaw and lips, brows,
lids and eyes (:mod:`.motion`); frames are rendered with what the grey I_R render does not show
— eyes and irises, teeth and the mouth's inside, forehead lines and smile folds, hair
(:mod:`.geometry`, :mod:`.scene`); :mod:`.generator` writes the data set in the clip-store format.

    from mimaface.synthtalk import SynthConfig, generate_dataset
    generate_dataset("data/synth", SynthConfig(identities=100, size=128))
"""

from mimaface.synthtalk.generator import (
    SynthConfig,
    generate_dataset,
    held_out_identities,
    render_clip,
    render_identity,
)

__all__ = ["SynthConfig", "generate_dataset", "held_out_identities", "render_clip", "render_identity"]

"""Find a Wan checkpoint on this machine and check its diffusers layout.

``model`` is a local directory or a Hugging Face repo id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``)
looked up in the local Hugging Face cache only: nothing is ever downloaded. Every problem is one
:class:`~dance.errors.ModelLayoutError` line naming the missing path and the expected layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dance.errors import ModelLayoutError
from dance.models.model_layout import DiffusersLayout, check_diffusers_weights


def _wan_layout(model: str, expected: str) -> DiffusersLayout:
    """The files and classes every Wan checkpoint has; transformers and image encoders are checked
    by :func:`resolve_checkpoint` from what model_index.json lists."""
    return DiffusersLayout(
        model=model,
        expected=expected,
        files=(
            "model_index.json",
            "vae/config.json",
            "text_encoder/config.json",
            "scheduler/scheduler_config.json",
        ),
        dirs=("tokenizer",),
        frozen=("vae", "text_encoder"),
        classes={"vae": "AutoencoderKLWan", "text_encoder": "UMT5EncoderModel"},
    )


T2V_LAYOUT = _wan_layout(
    "Wan",
    "expected the diffusers Wan layout (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan2.2-TI2V-5B-"
    "Diffusers, Wan2.2-T2V-A14B-Diffusers): model_index.json, transformer/ (and transformer_2/"
    " for A14B), vae/, text_encoder/, tokenizer/, scheduler/",
)
I2V_LAYOUT = _wan_layout(
    "Wan image-to-video",
    "expected the diffusers Wan image-to-video layout (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers):"
    " model_index.json, transformer/, vae/, text_encoder/, tokenizer/, image_encoder/,"
    " image_processor/, scheduler/; Wan2.2 I2V-A14B has transformer_2/ and no image encoder,"
    " Wan2.2-TI2V-5B has neither",
)


@dataclass(frozen=True)
class WanCheckpoint:
    """A checked Wan checkpoint and what its model_index.json says about the pipeline."""

    path: Path
    experts: tuple[str, ...]  # ("transformer",) or ("transformer", "transformer_2")
    boundary_ratio: float | None  # A14B: transformer serves t >= ratio * 1000
    expand_timesteps: bool  # TI2V-5B: one timestep per latent token
    has_image_encoder: bool  # Wan2.1 I2V's CLIP image encoder


def resolve_checkpoint(model: str, layout: DiffusersLayout) -> WanCheckpoint:
    """The checked checkpoint directory for ``model`` (a local path or a cached repo id)."""
    path = layout.resolve(model)
    index = json.loads((path / "model_index.json").read_text())

    def present(component: str) -> bool:
        entry = index.get(component)
        return bool(entry) and entry[-1] is not None

    experts = tuple(c for c in ("transformer", "transformer_2") if present(c))
    if "transformer" not in experts:
        raise ModelLayoutError(
            f"model directory {path} has no transformer in model_index.json; {layout.expected}"
        )
    boundary = index.get("boundary_ratio")
    if len(experts) == 2 and boundary is None:
        raise ModelLayoutError(
            f"model directory {path} has transformer_2 but model_index.json has no"
            " boundary_ratio (the noise level where the experts switch)"
        )
    for expert in experts:
        if not (path / expert / "config.json").is_file():
            raise ModelLayoutError(f"model directory {path} has no {expert}/config.json")
        check_diffusers_weights(path, expert, layout.expected)
    encoder = present("image_encoder")
    if encoder:
        for folder in ("image_encoder", "image_processor"):
            if not (path / folder).is_dir():
                raise ModelLayoutError(
                    f"model directory {path} has no {folder}/; {layout.expected}"
                )
    return WanCheckpoint(
        path=path,
        experts=experts,
        boundary_ratio=None if len(experts) == 1 else float(boundary),
        expand_timesteps=bool(index.get("expand_timesteps", False)),
        has_image_encoder=encoder,
    )

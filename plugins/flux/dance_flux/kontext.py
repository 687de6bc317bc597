"""The FLUX.1 Kontext policy (``flux-kontext``): image editing, a prompt and a source image in,
the edited image out.

FLUX.1 Kontext is FLUX.1-dev's transformer trained to read, after the noisy latent tokens, the
tokens of a source image. Everything follows diffusers' ``FluxKontextPipeline``
(pipelines/flux/pipeline_flux_kontext.py):

- the source image is resized to a working size (by default the pipeline's rule: the preferred
  Kontext resolution closest to its aspect ratio, floored to a multiple of 16), mapped to [-1, 1]
  by the pipeline's ``VaeImageProcessor``, VAE-encoded (the posterior mean, ``argmax``) and
  normalised as ``(z - shift_factor) * scaling_factor``;
- its latents are packed into 2x2 patch tokens and concatenated to the noisy tokens along the
  sequence, with position ids (1, row, col): the first coordinate 1 marks them as the condition
  (the noisy tokens keep 0);
- only the noisy tokens' output is the velocity; guidance is FLUX.1-dev's embedded guidance
  (2.5 as the pipeline's example and Black Forest Labs' reference use).

Rewards receive the source image with the prompt (``prompts[i].image``), so an edit reward can
compare the edit with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dance.config import option
from dance.diffusers_policy import (
    EmbeddingCache,
    image_key,
    latent_image_ids,
    override,
    pack_latents,
)
from dance.errors import UsageError
from dance.interfaces import Conditioning, Prompt, Runtime
from dance.models.finetune import TrainedNetwork
from dance_flux.policy import FluxConfig, FluxPolicy

__all__ = ["FluxKontextConfig", "FluxKontextPolicy", "preferred_size"]

# Position-id coordinate 0 of the source image's tokens (FluxKontextPipeline.prepare_latents sets
# image_ids[..., 0] = 1; the noisy tokens' ids have 0 there).
CONDITION_ID = 1.0


@dataclass
class FluxKontextConfig(FluxConfig):
    """Options of the FLUX.1 Kontext policy."""

    height: int = override("height", 1024, " Kontext: the pipeline's 1024x1024 area.", FluxConfig)
    width: int = override("width", 1024, " Kontext: the pipeline's 1024x1024 area.", FluxConfig)
    guidance: float = override(
        "guidance",
        2.5,
        " Kontext: 2.5, the value of FluxKontextPipeline's example and BFL's reference.",
        FluxConfig,
    )
    image_size: str = option(
        "preferred",
        "Working size of the source image before VAE encoding: 'preferred' is the pipeline's"
        " rule (the Kontext training resolution closest to the image's aspect ratio, e.g."
        " 1024x1024 or 1184x880); 'source' keeps the image's own size (the pipeline's"
        " _auto_resize=False); 'output' uses policy.height x policy.width. Either way the size is"
        " floored to a multiple of 16. The images of one batch must come to the same size.",
        choices=("preferred", "source", "output"),
    )


def preferred_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) of the preferred Kontext resolution whose aspect ratio is closest to
    ``width / height`` (ties to the smaller width), floored to ``multiple``: the pipeline's
    _auto_resize rule over its PREFERRED_KONTEXT_RESOLUTIONS list."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    aspect = width / height
    _, best_w, best_h = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return best_h // multiple * multiple, best_w // multiple * multiple


class FluxKontextPolicy(FluxPolicy):
    """FLUX.1 Kontext image editing (black-forest-labs/FLUX.1-Kontext-dev): FLUX.1's components,
    the transformer reading the source image's tokens after the noisy ones."""

    name = "flux-kontext"
    config_class = FluxKontextConfig
    takes_image = True
    image_task = "image editing"
    checkpoint_kind = "a diffusers FLUX.1 Kontext directory"
    checkpoint_example = "black-forest-labs/FLUX.1-Kontext-dev"
    trained_network = TrainedNetwork(
        component="transformer", pipeline="FluxKontextPipeline", model="FLUX.1 Kontext"
    )
    config: FluxKontextConfig

    def __init__(self, config: FluxKontextConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        from diffusers.image_processor import VaeImageProcessor

        # The pipeline's own preprocessing (resize, [0, 1] -> [-1, 1]), at its multiple of 16.
        self.multiple = self.vae_scale_factor * 2
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.multiple)
        self._image_cache = EmbeddingCache(config.prompt_cache_size, config.cache_prompts)

    # --- the source image ----------------------------------------------------------------------

    def working_size(self, image: torch.Tensor) -> tuple[int, int]:
        """(height, width) the source image ``[C, H, W]`` is resized to (policy.image_size)."""
        mode, m = self.config.image_size, self.multiple
        if mode == "output":
            return self.config.height // m * m, self.config.width // m * m
        # VaeImageProcessor.get_default_height_width: the image's own size (a multiple of 16).
        height, width = self.image_processor.get_default_height_width(image[None])
        if mode == "preferred":
            return preferred_size(height, width, m)
        return height // m * m, width // m * m

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """[C, H, W] in [0, 1] -> [1, 3, h, w] in [-1, 1] at the working size, as the pipeline's
        step 3 does it (image_processor.resize, then preprocess)."""
        pixels = image.float()[None]
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        height, width = self.working_size(image)
        pixels = self.image_processor.resize(pixels, height, width)
        return self.image_processor.preprocess(pixels, height, width)

    def _encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Packed normalised latents [S_img, C*4] (fp32) of one source image and its token grid
        (rows, cols): FluxKontextPipeline._encode_vae_image and the packing of prepare_latents."""
        vae, device = self.vae, self.runtime.device
        pixels = self.prepare_image(image).to(device, vae.dtype)
        with self._offload.on_device(vae):
            latent = vae.encode(pixels).latent_dist.mode()  # retrieve_latents(sample_mode="argmax")
        latent = (latent.float() - vae.config.shift_factor) * vae.config.scaling_factor
        rows, cols = latent.shape[2] // 2, latent.shape[3] // 2
        return pack_latents(latent)[0], rows, cols

    def _encode_extra(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """``image_latents [B, S_img, C*4]`` and ``image_grid [B, 2]`` (token rows, cols) of the
        prompts' source images, each distinct image encoded once and cached."""

        def encode(images: list[torch.Tensor]) -> list[torch.Tensor]:
            encoded = [self._encode_image(image) for image in images]
            grids = [torch.tensor([rows, cols]) for _, rows, cols in encoded]
            return [torch.stack([latent for latent, _, _ in encoded]), torch.stack(grids)]

        sizes = sorted({self.working_size(p.image) for p in prompts})
        if len(sizes) > 1:
            # One batch is one tensor: every source image must give the same number of tokens.
            raise UsageError(
                "the source images of one batch come to different working sizes"
                f" ({', '.join(f'{h}x{w}' for h, w in sizes)} pixels); give images of one aspect"
                " ratio, or set policy.image_size=output to resize every image to policy.height"
                " x policy.width"
            )
        latents, grid = self._image_cache.lookup([p.image for p in prompts], encode, image_key)
        return {"image_latents": latents, "image_grid": grid}

    # --- prediction ----------------------------------------------------------------------------

    def _transformer_tokens(
        self, latents: torch.Tensor, cond: Conditioning
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[noisy tokens, source image tokens] along the sequence [B, S + S_img, C], with ids
        [(0, row, col) of the noisy grid; (1, row, col) of the image grid]."""
        image = cond["image_latents"].to(latents.device, latents.dtype)  # [B, S_img, C]
        rows, cols = (int(v) for v in cond["image_grid"][0])
        key = (f"cond {rows}x{cols}", rows * cols)
        if key not in self._ids_cache:
            ids = latent_image_ids(rows, cols, self.runtime.device)
            ids[:, 0] = CONDITION_ID
            self._ids_cache[key] = ids
        # The noisy ids check the latent size; the image ids follow them (dim 0: sequence).
        ids = torch.cat([self._image_ids(latents.shape[1]), self._ids_cache[key]])
        return torch.cat([latents, image], dim=1), ids

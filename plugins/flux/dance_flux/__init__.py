"""FLUX.1 policy plugin for dance: FLUX text-to-image models and FLUX.1 Kontext image editing."""

from dance_flux.kontext import FluxKontextConfig, FluxKontextPolicy
from dance_flux.policy import FluxConfig, FluxPolicy

__all__ = ["FluxConfig", "FluxKontextConfig", "FluxKontextPolicy", "FluxPolicy"]

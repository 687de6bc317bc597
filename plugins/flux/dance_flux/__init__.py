"""FLUX.1 policy plugin for dance (DanceGRPO post-training of FLUX text-to-image models)."""

from dance_flux.policy import FluxConfig, FluxPolicy

__all__ = ["FluxConfig", "FluxPolicy"]

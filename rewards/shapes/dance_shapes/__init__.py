"""Coloured-shape scenes and the weight-free ``shapes`` reward for dance."""

from dance_shapes.analysis import Component, ImageAnalysis, analyze, classify_pixels
from dance_shapes.reward import ShapesConfig, ShapesReward, check_scene
from dance_shapes.scenes import (
    BACKGROUND,
    COLORS,
    COUNTS,
    POSITIONS,
    SHAPES,
    SceneSpec,
    all_specs,
    random_spec,
    render,
    render_tensor,
)

__all__ = [
    "BACKGROUND",
    "COLORS",
    "COUNTS",
    "POSITIONS",
    "SHAPES",
    "Component",
    "ImageAnalysis",
    "SceneSpec",
    "ShapesConfig",
    "ShapesReward",
    "all_specs",
    "analyze",
    "check_scene",
    "classify_pixels",
    "random_spec",
    "render",
    "render_tensor",
]

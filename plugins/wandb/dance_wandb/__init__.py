"""Weights & Biases logger for dance (``trainer.loggers`` name ``wandb``)."""

from dance_wandb.logger import RUN_ID_FILE, WandbConfig, WandbLogger

__all__ = ["RUN_ID_FILE", "WandbConfig", "WandbLogger"]

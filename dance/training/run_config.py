"""What a run is made of, once its recipe is resolved: the component names with their config
values, the trainer and evaluation settings (:class:`Recipe`), and its TOML form, which a run
writes to ``config.toml`` and which loads again as a recipe.

Reading recipes (bundled names, TOML files, ``key=value`` overrides) and resolving them against
the installed plugins is the command line's part (:mod:`dance.cli.recipe`); the trainer only
receives the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dance.config import to_dict
from dance.errors import ConfigError
from dance.training.evaluation import EvaluationConfig
from dance.training.trainer_config import TrainerConfig

DEFAULT_OBJECTIVE = "grpo"


@dataclass
class RewardSpec:
    """One reward of a recipe: which reward, its weight, which component, and its config."""

    name: str
    weight: float = 1.0
    component: str = ""  # "" = the reward's first (main) component
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}.{self.component}" if self.component else self.name


@dataclass
class Recipe:
    """A resolved recipe: component names with their config values, and the trainer config."""

    policy: str
    policy_options: dict[str, Any]
    sampler: str
    sampler_options: dict[str, Any]
    rewards: list[RewardSpec]
    advantage: str
    advantage_options: dict[str, Any]
    trainer: TrainerConfig
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    objective: str = DEFAULT_OBJECTIVE
    objective_options: dict[str, Any] = field(default_factory=dict)
    # The plugin distributions the recipe declared it needs (kept so that config.toml declares
    # them too).
    requires: list[str] = field(default_factory=list)
    # The options of each logger in trainer.loggers, in that order (empty for one without any).
    loggers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_toml_dict(self) -> dict[str, Any]:
        return {
            **({"requires": list(self.requires)} if self.requires else {}),
            "policy": {"name": self.policy, **self.policy_options},
            "sampler": {"name": self.sampler, **self.sampler_options},
            "rewards": [
                {
                    "name": r.name,
                    "weight": r.weight,
                    **({"component": r.component} if r.component else {}),
                    **r.options,
                }
                for r in self.rewards
            ],
            "advantage": {"name": self.advantage, **self.advantage_options},
            "objective": {"name": self.objective, **self.objective_options},
            "trainer": to_dict(self.trainer),
            "evaluation": to_dict(self.evaluation),
            **({"loggers": configured} if (configured := self._configured_loggers()) else {}),
        }

    def _configured_loggers(self) -> dict[str, dict[str, Any]]:
        return {name: options for name, options in self.loggers.items() if options}


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a recipe dict as TOML (tables, arrays of tables, and scalar or list values)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(a)} = {_value(b)}" for a, b in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines += ["", f"[[{_key(k)}]]"]
                lines += [f"{_key(a)} = {_value(b)}" for a, b in item.items()]
        elif isinstance(v, list):
            lines.insert(len(scalars), f"{_key(k)} = {_value(v)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not (isinstance(v, float) and v != v) else "nan"
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(a)} = {_value(b)}" for a, b in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} to TOML")

"""Recipes: TOML files composing a policy, a sampler, rewards, an advantage and trainer settings.

    requires = ["dance-flux", "dance-jpeg"]   # optional: the plugin distributions it needs

    [policy]
    name = "flux"              # registry name; every other key is a field of the policy's config
    model = "/models/FLUX.1-dev"

    [sampler]
    name = "dance-sde"
    eta = 0.3

    [[rewards]]
    name = "jpeg-compressibility"
    weight = 1.0       # reserved keys: name, weight, component; the rest configure the reward

    [advantage]
    name = "group"

    [objective]
    name = "grpo"      # the default; "nft" = DiffusionNFT
    clip_range = 1e-4

    [trainer]
    group_size = 12
    loggers = ["jsonl", "tensorboard", "wandb"]   # where metrics go (jsonl is required)

    [loggers.wandb]    # one table per logger that has options: fields of its config
    project = "flux-grpo"

Bundled recipes live in ``dance/recipes/`` and are found by name; a path to a TOML file works too.
``key=value`` overrides address any field: ``trainer.learning_rate=1e-5``, ``policy.height=512``,
``rewards.jpeg-compressibility.weight=2`` (or ``rewards.0.weight=2``), ``loggers.wandb.project=x``.
A resolved recipe, with every default filled in, is what a run writes to ``config.toml``; it loads
again as a recipe. The resolved form, which the trainer receives, is
:class:`dance.training.run_config.Recipe`.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from dance.config import build, parse_value, to_dict
from dance.errors import ConfigError, UsageError, did_you_mean
from dance.files import read_text
from dance.training.evaluation import EvaluationConfig
from dance.training.run_config import DEFAULT_OBJECTIVE, Recipe, RewardSpec
from dance.training.trainer_config import TrainerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTIONS = (
    "policy",
    "sampler",
    "rewards",
    "advantage",
    "objective",
    "trainer",
    "evaluation",
    "loggers",
)
# The one top-level key besides the sections: the plugin distributions the recipe needs
# (``requires = ["dance-flux", "dance-shapes"]``), checked when the recipe is read.
REQUIRES = "requires"
# [trainer] keys of recipes written before objectives were plugins: GRPO's settings, now in
# [objective]. Old recipes and overrides still work, with a note saying where the key went.
MOVED_TO_OBJECTIVE = (
    "clip_range",
    "kl_coef",
    "timestep_fraction",
    "train_last_step",
    "old_log_probs",
)
REWARD_KEYS = ("name", "weight", "component")


# -- reading -------------------------------------------------------------------------------------


def bundled_recipes() -> list[str]:
    root = resources.files("dance") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def read_recipe(name_or_path: str) -> dict[str, Any]:
    """Raw recipe dict from a bundled recipe name or a TOML file path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        text = read_text(path, "recipe file", "a recipe .toml file")
        where = str(path)
    else:
        resource = resources.files("dance") / "recipes" / f"{name_or_path}.toml"
        if not resource.is_file():
            known = bundled_recipes()
            raise UsageError(
                f"unknown recipe '{name_or_path}' (bundled: {', '.join(known) or 'none'})."
                f"{did_you_mean(name_or_path, known)} A path to a .toml file works too."
            )
        text = resource.read_text(encoding="utf-8")
        where = f"bundled recipe '{name_or_path}'"
    raw = parse_toml(text, where)
    check_sections(raw, where)
    check_requirements(raw, where)
    return raw


def check_requirements(raw: dict[str, Any], where: str) -> None:
    """One UsageError line naming the plugin distributions the recipe ``requires`` that are not
    installed: the dependency of a recipe on its plugins is declared in the recipe, not in code."""
    missing = [name for name in raw.get(REQUIRES, []) if not _installed(name)]
    if missing:
        them = "them" if len(missing) > 1 else "it"
        raise UsageError(
            f"{where} needs the plugin distribution{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}, not installed: install {them} (in a dance checkout, "
            "`pip install -r requirements-dev.txt` installs every built-in plugin), or choose "
            "another recipe."
        )


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """The TOML document ``text`` read from ``where``, or one ConfigError line naming it."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None


def check_sections(raw: dict[str, Any], where: str) -> None:
    for key, value in raw.items():
        if key == REQUIRES:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(
                    f"{where}: '{REQUIRES}' must be a list of plugin distribution names, e.g. "
                    'requires = ["dance-flux"].'
                )
            continue
        if key not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section '{key}'.{did_you_mean(key, SECTIONS)}"
                f" Sections: {', '.join(SECTIONS)}."
            )
        if key == "rewards":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{where}: 'rewards' must be an array of tables ([[rewards]]).")
        elif not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a table ([{key}]).")
        elif key == "loggers":
            for name, options in value.items():
                if not isinstance(options, dict):
                    raise ConfigError(
                        f"{where}: 'loggers.{name}' must be a table of that logger's options "
                        f"([loggers.{name}])."
                    )


# -- overrides -----------------------------------------------------------------------------------


def parse_reward_arg(text: str) -> dict[str, Any]:
    """``NAME[.COMPONENT][:WEIGHT]`` from the command line as a raw reward table."""
    name, _, weight = text.partition(":")
    name, _, component = name.partition(".")
    if not name:
        raise UsageError(f"--reward '{text}': expected NAME, NAME:WEIGHT or NAME.COMPONENT:WEIGHT.")
    entry: dict[str, Any] = {"name": name}
    if component:
        entry["component"] = component
    if weight:
        try:
            entry["weight"] = float(weight)
        except ValueError:
            raise UsageError(f"--reward '{text}': weight '{weight}' is not a number.") from None
    return entry


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.field=value`` (or ``rewards.NAME|INDEX.field=value``) to a raw recipe."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise UsageError(f"override '{assignment}' must look like section.field=value.")
    parts = key.strip().split(".")
    value = parse_value(text.strip())
    section = parts[0]
    if section not in SECTIONS or len(parts) < 2:
        raise UsageError(
            f"override '{assignment}': the key must start with one of {', '.join(SECTIONS)}"
            " followed by a field, e.g. trainer.learning_rate=1e-5."
            f"{did_you_mean(section, SECTIONS)}"
        )
    if section == "rewards":
        rewards = raw.setdefault("rewards", [])
        if len(parts) < 3:
            raise UsageError(f"override '{assignment}': use rewards.NAME.field=value.")
        target = _find_reward(rewards, ".".join(parts[1:-1]), assignment)
        target[parts[-1]] = value
        return
    if section == "loggers":
        if len(parts) != 3:
            raise UsageError(f"override '{assignment}': use loggers.NAME.field=value.")
        raw.setdefault("loggers", {}).setdefault(parts[1], {})[parts[2]] = value
        return
    table = raw.setdefault(section, {})
    table[".".join(parts[1:])] = value


def _find_reward(rewards: list[dict[str, Any]], ref: str, assignment: str) -> dict[str, Any]:
    if ref.isdigit():
        if int(ref) < len(rewards):
            return rewards[int(ref)]
        raise UsageError(f"override '{assignment}': the recipe has {len(rewards)} rewards.")
    matches = [r for r in rewards if _label(r) == ref or r.get("name") == ref]
    if len(matches) == 1:
        return matches[0]
    labels = [_label(r) for r in rewards]
    if not matches:
        raise UsageError(
            f"override '{assignment}': no reward '{ref}' in the recipe (rewards: "
            f"{', '.join(labels) or 'none'}).{did_you_mean(ref, labels)}"
        )
    raise UsageError(f"override '{assignment}': '{ref}' is ambiguous; use its index (rewards.N).")


def _label(entry: dict[str, Any]) -> str:
    return f"{entry['name']}.{entry['component']}" if entry.get("component") else entry["name"]


# -- resolving -----------------------------------------------------------------------------------


def resolve(raw: dict[str, Any], registry: Any) -> Recipe:
    """Validate a raw recipe against the installed components and fill in every default."""
    raw = copy.deepcopy(raw)
    check_sections(raw, "recipe")
    policy_raw = dict(raw.get("policy", {}))
    policy_name = policy_raw.pop("name", None)
    if not policy_name:
        raise UsageError("no policy chosen: pass --policy NAME (see `dance plugins`) or --recipe.")
    policy_cls = registry.get("policy", policy_name)
    policy_cfg = build(policy_cls.config_class, policy_raw, prefix="policy.")

    sampler_raw = dict(raw.get("sampler", {}))
    sampler_name = sampler_raw.pop("name", None) or registry.default_sampler(
        policy_cls.prediction_type
    )
    sampler_cls = registry.get("sampler", sampler_name)
    if policy_cls.prediction_type not in sampler_cls.prediction_types:
        raise UsageError(
            f"sampler '{sampler_name}' handles {', '.join(sampler_cls.prediction_types)} models, "
            f"but policy '{policy_name}' predicts {policy_cls.prediction_type}."
        )
    sampler_cfg = build(sampler_cls.config_class, sampler_raw, prefix="sampler.")

    rewards = [resolve_reward(entry, policy_cls, registry) for entry in raw.get("rewards", [])]
    if not rewards:
        raise UsageError("no reward chosen: pass --reward NAME[:WEIGHT] (see `dance plugins`).")
    labels = [r.label for r in rewards]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"reward '{dupes[0]}' appears twice; give each reward once.")

    adv_raw = dict(raw.get("advantage", {}))
    adv_name = adv_raw.pop("name", None) or "group"
    adv_cls = registry.get("advantage", adv_name)
    adv_cfg = build(adv_cls.config_class, adv_raw, prefix="advantage.")

    _move_legacy_trainer_keys(raw)
    obj_raw = dict(raw.get("objective", {}))
    obj_name = obj_raw.pop("name", None) or DEFAULT_OBJECTIVE
    obj_cls = registry.get("objective", obj_name)
    _check_objective_keys(obj_raw, obj_name, obj_cls, sampler_cls, registry)
    obj_cfg = build(obj_cls.config_class, obj_raw, prefix="objective.")
    obj_cls.check_sampler(obj_cfg, sampler_cls, sampler_cfg)

    trainer = build(TrainerConfig, raw.get("trainer", {}), prefix="trainer.")
    if not sampler_cls.stochastic and trainer.share_initial_noise:
        raise ConfigError(
            f"sampler '{sampler_name}' is deterministic, so with trainer.share_initial_noise=true "
            "every sample of a group is the same image and has advantage 0; set "
            "trainer.share_initial_noise=false"
        )
    evaluation = build(EvaluationConfig, raw.get("evaluation", {}), prefix="evaluation.")
    if evaluation.prompts:
        _check_evaluation(evaluation, rewards, registry)
    loggers = resolve_loggers(trainer.loggers, raw.get("loggers", {}), registry)
    return Recipe(
        policy=policy_name,
        policy_options=to_dict(policy_cfg),
        sampler=sampler_name,
        sampler_options=to_dict(sampler_cfg),
        rewards=rewards,
        advantage=adv_name,
        advantage_options=to_dict(adv_cfg),
        trainer=trainer,
        evaluation=evaluation,
        objective=obj_name,
        objective_options=to_dict(obj_cfg),
        loggers=loggers,
        requires=list(raw.get(REQUIRES, [])),
    )


def resolve_loggers(
    names: list[str], tables: dict[str, dict[str, Any]], registry: Any
) -> dict[str, dict[str, Any]]:
    """The options of each logger ``names`` lists (trainer.loggers), from its ``[loggers.NAME]``
    table, validated and completed with defaults. A table of a logger the list leaves out is
    not used (so a recipe's logger can be turned off from the command line): a note says so."""
    out = {}
    for name in names:
        try:
            cls = registry.get("logger", name)
        except UsageError as exc:
            raise ConfigError(f"trainer.loggers: {exc}") from None
        config = build(cls.config_class, tables.get(name, {}), prefix=f"loggers.{name}.")
        out[name] = to_dict(config)
    for name in tables:
        if name not in out:
            print(
                f"note: [loggers.{name}] is set but trainer.loggers ({', '.join(names)}) does not "
                f"list '{name}': its options are not used.",
                file=sys.stderr,
            )
    return out


def _check_objective_keys(
    values: dict[str, Any], name: str, cls: type, sampler_cls: type, registry: Any
) -> None:
    """An [objective] key that belongs to the sampler or to another objective says where it
    belongs (a misspelt one gets build()'s did-you-mean)."""
    import dataclasses

    def fields(config_class: type) -> set[str]:
        return {f.name for f in dataclasses.fields(config_class)}

    own = fields(cls.config_class)
    for key in values:
        field = key.replace("-", "_")
        if field in own:
            continue
        if field in fields(sampler_cls.config_class):
            raise ConfigError(
                f"objective.{key} is an option of the sampler '{sampler_cls.name}', not of the "
                f"objective: set sampler.{key} instead."
            )
        others = sorted(
            other
            for other, entry in registry.components.get("objective", {}).items()
            if other != name and field in fields(entry.cls.config_class)
        )
        if others:
            raise ConfigError(
                f"objective.{key} is an option of objective '{others[0]}', but this run trains "
                f"with '{name}': choose it with --objective {others[0]}, or leave {key} out "
                f"(`dance plugins {name}` lists {name}'s options)."
            )


def _move_legacy_trainer_keys(raw: dict[str, Any]) -> None:
    """Move GRPO's settings from [trainer], where recipes before objectives kept them, to
    [objective] (when the objective is GRPO), saying so once."""
    trainer = raw.get("trainer", {})
    moved = [key for key in MOVED_TO_OBJECTIVE if key in trainer]
    if not moved:
        return
    objective = raw.setdefault("objective", {})
    name = objective.get("name", DEFAULT_OBJECTIVE)
    if name != DEFAULT_OBJECTIVE:
        raise ConfigError(
            f"trainer.{moved[0]} is a setting of the grpo objective, but the recipe trains with "
            f"objective '{name}'; set the objective's own options in [objective] instead."
        )
    for key in moved:
        if key in objective:
            raise ConfigError(
                f"trainer.{key} is the old place of objective.{key}, which is set too; set it "
                f"once, as objective.{key} (objective.{key}=VALUE on the command line)."
            )
        objective[key] = trainer.pop(key)
    print(
        f"note: trainer.{', trainer.'.join(moved)} moved to the [objective] table "
        f"(objective.{moved[0]}=...); this recipe still works.",
        file=sys.stderr,
    )


def _check_evaluation(cfg: EvaluationConfig, rewards: list[RewardSpec], registry: Any) -> None:
    names = [r.name for r in rewards]
    if cfg.reward and cfg.reward not in names:
        raise ConfigError(
            f"evaluation.reward '{cfg.reward}' is not one of the recipe's rewards "
            f"({', '.join(names)}).{did_you_mean(cfg.reward, names)} Set evaluation.reward to"
            ' one of them, or evaluation.prompts="" to run without the evaluation.'
        )
    reward_cls = registry.get("reward", cfg.reward or names[0])
    if cfg.success and cfg.success not in reward_cls.components:
        raise ConfigError(
            f"evaluation.success: reward '{reward_cls.name}' has no component '{cfg.success}' "
            f"(components: {', '.join(reward_cls.components)})."
        )
    if cfg.sampler:
        registry.get("sampler", cfg.sampler)


def resolve_reward(entry: dict[str, Any], policy_cls: type, registry: Any) -> RewardSpec:
    entry = dict(entry)
    name = entry.pop("name", None)
    if not name:
        raise ConfigError("every [[rewards]] entry needs a name.")
    cls = registry.get("reward", name)
    weight = build(_Weight, {"weight": entry.pop("weight", 1.0)}, prefix=f"rewards.{name}.").weight
    component = str(entry.pop("component", ""))
    if component and component not in cls.components:
        raise ConfigError(
            f"reward '{name}' has no component '{component}' (components: "
            f"{', '.join(cls.components)}).{did_you_mean(component, cls.components)}"
        )
    if policy_cls.modality not in cls.modalities:
        raise UsageError(
            f"reward '{name}' scores {', '.join(cls.modalities)}, but policy "
            f"'{policy_cls.name}' generates {policy_cls.modality}."
        )
    options = to_dict(build(cls.config_class, entry, prefix=f"rewards.{name}."))
    return RewardSpec(name=name, weight=weight, component=component, options=options)


@dataclass
class _Weight:
    weight: float = dataclasses.field(default=1.0, metadata={"help": "reward weight"})

"""1 process and 2 (or 3) processes (gloo, CPU) run the same recipe to the same result.

Same rewards, advantages, trained samples and (sample, step) pairs, logged metrics, sample grid,
evaluation, and final weights within float reduction order (1e-5 relative): for a LoRA, a full
fine-tune of the tiny FLUX, a group split across ranks, Best-of-N, an excluded group, MixGRPO's
sliding SDE window, GRPO-Guard's options, DiffusionNFT (toy LoRA and the FLUX full fine-tune), and
a sample count that does not divide by the number of processes (with 3 processes, one holding
padding rows only). The two-process runs share one launch.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import dance
import dance.distributed as dist
from dance.cli.recipe import resolve
from dance.config import option
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.multiprocess import run_function
from dance.training.trainer import Trainer

PROMPTS = ["a red apple", "a blue house", "a green tree", "a yellow car", "a black cat"]
EXCLUDED_PROMPT = "a blue house"


@dataclass
class _BrightnessCfg:
    exclude_prompt: str = option("", "prompt whose samples score NaN (a failed reward)")


class _Brightness(dance.Reward):
    """Mean brightness; NaN for the samples of one prompt (so the choice does not depend on
    the batch or the rank a sample is scored in)."""

    name = "brightness"
    config_class = _BrightnessCfg
    components = ("value",)

    def score(self, media, prompts):
        value = media.flatten(1).mean(dim=1).float()
        failed = torch.tensor([p.text == self.config.exclude_prompt for p in prompts])
        return {"value": torch.where(failed, float("nan"), value)}


_plugin = types.SimpleNamespace(
    register_rewards=dance.hookimpl(lambda register: register(_Brightness))
)

FLUX_FULL = {
    "name": "flux",
    "model": "TINY_FLUX",
    "finetune": "full",
    "height": 32,
    "width": 32,
    "max_sequence_length": 16,
}
TOY = {"policy": {"name": "toy-flow"}, "sampler": {"name": "dance-sde", "num_steps": 5}}
SCENARIOS = {
    # 3 prompts x 4: group 1 is samples 4-7, split between rank 0 (0-5) and rank 1 (6-11);
    # several optimizer steps per iteration, a KL term, an evaluation of 5 images.
    "lora": {
        **TOY,
        "rewards": [{"name": "brightness"}],
        "trainer": {
            "prompts_per_iteration": 3,
            "group_size": 4,
            "micro_batch_size": 4,
            "gradient_accumulation_steps": 2,
        },
        "objective": {"kl_coef": 0.05},
        "evaluation": {"prompts": "PROMPTS", "seeds": 1, "num_steps": 3},
    },
    "best_of_n": {
        **TOY,
        "rewards": [{"name": "brightness"}],
        "trainer": {"prompts_per_iteration": 3, "group_size": 4, "train_per_group": 2},
    },
    "excluded": {
        **TOY,
        "rewards": [{"name": "brightness", "exclude_prompt": EXCLUDED_PROMPT}],
        "trainer": {
            "prompts_per_iteration": 3,
            "group_size": 4,
            "on_reward_failure": "exclude",
            "micro_batch_size": 3,
            "gradient_accumulation_steps": 3,
            # a schedule that follows the optimizer steps, which the exclusion changes
            "lr_schedule": "cosine",
            "lr_warmup_steps": 1,
            "lr_min_ratio": 0.1,
        },
    },
    # MixGRPO's sliding SDE window: steps 2-3 in iteration 0, step 3 in iteration 1 (the window
    # is cut before the last step).
    "sliding_window": {
        "policy": {"name": "toy-flow"},
        "sampler": {
            "name": "flow-sde",
            "num_steps": 5,
            "sde_window_start": 2,
            "sde_window_schedule": "progressive",
            "sde_window_size": 2,
            "sde_window_shift_interval": 1,
        },
        "rewards": [{"name": "brightness"}],
        "trainer": {"prompts_per_iteration": 3, "group_size": 4, "micro_batch_size": 4},
        "objective": {"timestep_fraction": 1.0},
    },
    "odd": {  # 3 samples over 2 processes: rank 1 holds one sample and one padding row
        **TOY,
        "rewards": [{"name": "brightness"}],
        "trainer": {"prompts_per_iteration": 1, "group_size": 3, "micro_batch_size": 2},
    },
    # 4 samples over 3 processes: rank 2 holds padding rows only (nothing to score, only
    # zero-weight micro-batches to train); 5 evaluation images over 3 processes.
    "padding_rank": {
        **TOY,
        "rewards": [{"name": "brightness"}],
        "trainer": {"prompts_per_iteration": 2, "group_size": 2, "micro_batch_size": 2},
        "evaluation": {"prompts": "PROMPTS", "seeds": 1, "num_steps": 2},
    },
    # GRPO-Guard (RatioNorm + gradient reweighting): old means recomputed per micro-batch,
    # several optimizer steps so that the normalised ratio moves off 1; a group split over ranks.
    "grpo_guard": {
        **TOY,
        "rewards": [{"name": "brightness"}],
        "trainer": {
            "prompts_per_iteration": 3,
            "group_size": 4,
            "micro_batch_size": 3,
            "gradient_accumulation_steps": 2,
        },
        "objective": {"ratio_norm": True, "gradient_reweight": True, "clip_range": 0.05},
    },
    "flux_full": {
        "policy": FLUX_FULL,
        "sampler": {"name": "dance-sde", "num_steps": 3},
        "rewards": [{"name": "brightness"}],
        "trainer": {"prompts_per_iteration": 3, "group_size": 2, "micro_batch_size": 2},
    },
    # DiffusionNFT: the deterministic ODE rollout with the sampling policy's weights, forward
    # noise keyed by (sample, timestep), the soft update of the sampling policy (its copy of the
    # weights sharded with them in the FLUX full fine-tune), and a KL term.
    "nft": {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "ode", "num_steps": 5},
        "rewards": [{"name": "brightness"}],
        "trainer": {
            "prompts_per_iteration": 3,
            "group_size": 4,
            "share_initial_noise": False,
            "micro_batch_size": 5,
            "gradient_accumulation_steps": 2,
        },
        "objective": {"name": "nft", "beta": 0.5, "kl_coef": 0.05, "decay_rate": 0.2},
    },
    "nft_flux_full": {
        "policy": FLUX_FULL,
        "sampler": {"name": "ode", "num_steps": 3},
        "rewards": [{"name": "brightness"}],
        "trainer": {
            "prompts_per_iteration": 3,
            "group_size": 2,
            "share_initial_noise": False,
            "micro_batch_size": 2,
        },
        "objective": {"name": "nft", "timestep_fraction": 0.7, "decay_rate": 0.3},
    },
}
COMMON = {"iterations": 2, "learning_rate": 1e-3, "sample_every": 1, "checkpoint_every": 0}


def _full(param: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter: FSDP2 shards it over the ranks (a DTensor) when the
    network is sharded; a collective, so every rank calls it for every parameter."""
    from torch.distributed.tensor import DTensor

    data = param.detach()
    return data.full_tensor() if isinstance(data, DTensor) else data


def run_scenario(name: str, folder: str) -> dict:
    """Run one scenario in ``folder`` (on every rank of the current job) and record what each
    iteration computed; rank 0 adds the logged metrics and the files it wrote."""
    root = Path(folder)
    raw = json.loads(
        json.dumps(SCENARIOS[name])
        .replace("PROMPTS", str(root / "prompts.txt"))
        .replace("TINY_FLUX", str(root / "tiny-flux"))
    )
    raw["trainer"] = {**COMMON, **raw["trainer"], "prompts": str(root / "prompts.txt")}
    registry = load_registry(extra={"toy": toy_policy, "brightness": _plugin})
    out = root / f"{name}-{dist.world_size()}"
    trainer = Trainer(resolve(raw, registry), out, dance.Runtime.auto(), registry)
    initial = [_full(p).clone() for p in trainer.params]
    seen: dict[str, list] = {"rewards": [], "advantages": [], "trained": []}
    compute, update = trainer.advantage.compute, trainer.update

    def spy_compute(scores, weights, group_ids):
        advantages = compute(scores, weights, group_ids)
        seen["rewards"].append({k: v.clone() for k, v in scores.items()})
        seen["advantages"].append(advantages.clone())
        return advantages

    def spy_update(rollout, advantages, trained, it):
        seen["trained"].append(trained.clone())
        return update(rollout, advantages, trained, it)

    trainer.advantage.compute, trainer.update = spy_compute, spy_update
    trainer.run()
    seen["delta"] = [_full(p) - q for p, q in zip(trainer.params, initial, strict=True)]
    seen["weights"] = [_full(p).clone() for p in trainer.params]
    if dist.is_main():
        seen["metrics"] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        seen["grid"] = _pixels(out / "samples" / "iter-000001.png")
        if (out / "eval").is_dir():
            seen["eval"] = {
                s: json.loads((out / "eval" / f"{s}.json").read_text()) for s in ("before", "after")
            }
    return seen


TWO_PROCESSES = [name for name in SCENARIOS if name != "padding_rank"]


def run_all(folder: str, names: list[str]) -> dict:
    torch.set_num_threads(1)
    return {name: run_scenario(name, folder) for name in names}


def _pixels(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path))).int()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dance_flux.tiny import build_tiny_flux

    folder = tmp_path_factory.mktemp("invariance")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    build_tiny_flux(folder / "tiny-flux", seed=0)
    one = run_all(str(folder), list(SCENARIOS))
    two = run_function(run_all, 2, str(folder), TWO_PROCESSES, timeout=600)
    three = run_function(run_all, 3, str(folder), ["padding_rank"], timeout=600)
    return one, two, three


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    """Equal within ``rel`` of the larger norm (float reduction order), NaNs in the same places."""
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    a, b = torch.nan_to_num(a.double()), torch.nan_to_num(b.double())
    return bool((a - b).norm() <= rel * max(a.norm(), b.norm(), 1e-30))


@pytest.mark.parametrize(
    "name, processes", [(name, 2) for name in TWO_PROCESSES] + [("padding_rank", 3)]
)
def test_several_processes_train_as_one(runs, name, processes):
    one, ranks = runs[0][name], [r[name] for r in runs[processes - 1]]
    rank0 = ranks[0]
    for two in ranks:  # every rank holds the gathered values
        for it in range(COMMON["iterations"]):
            for label, values in one["rewards"][it].items():
                assert _close(values, two["rewards"][it][label]), (name, it, label)
            assert _close(one["advantages"][it], two["advantages"][it]), (name, it)
            assert torch.equal(one["trained"][it], two["trained"][it]), (name, it)
        # What training changed, over the whole trained network. Adam divides by sqrt(v), so
        # elements whose gradient is rounding noise pass reduction-order differences into the
        # update: in one process, micro_batch_size 2 vs 5 changes the full fine-tune's delta by
        # 9e-6 (up to 9e-5 on a single tensor), hence 1e-4 there.
        d1, d2 = (torch.cat([d.flatten() for d in run["delta"]]) for run in (one, two))
        rel = 1e-4 if "flux_full" in name else 1e-5
        assert d1.norm() > 0 and _close(d1, d2, rel), (name, (d1 - d2).norm() / d1.norm())
        # The final weights: the whole trained network within 1e-5 (the bound), and each
        # tensor within `rel` (one small tensor of a full fine-tune carries Adam's amplified
        # rounding noise: 1.6e-5 was seen on a [16, 32] weight).
        w1_all, w2_all = (torch.cat([w.flatten() for w in run["weights"]]) for run in (one, two))
        assert _close(w1_all, w2_all, 1e-5), (name, (w1_all - w2_all).norm() / w1_all.norm())
        for w1, w2 in zip(one["weights"], two["weights"], strict=True):
            assert _close(w1, w2, rel), (((w1 - w2).norm() / w1.norm()).item(), w1.shape)
    # The logged metrics are the whole job's, not rank 0's share.
    for m1, m2 in zip(one["metrics"], rank0["metrics"], strict=True):
        grpo = ("ratio/mean", "ratio/max", "clip_fraction")
        nft = ("loss/positive", "loss/negative", "r/mean", "old_gap", "old_decay")
        objective_keys = nft if name.startswith("nft") else grpo
        for key in ("loss", "kl", *objective_keys, "grad_norm", "trained_pairs"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), (name, key)
        for key in ("optimizer_steps", "trained_samples", "excluded_samples", "lr"):
            assert m2[key] == m1[key], (name, key)
        if not name.startswith("nft"):
            assert m2["ratio/first_step_max_dev"] < 1e-5
    # The sample grid shows every rank's samples.
    assert one["grid"].shape == rank0["grid"].shape
    assert (one["grid"] - rank0["grid"]).abs().max() <= 1


def test_scenarios_exercise_what_they_claim(runs):
    one = runs[0]
    assert one["lora"]["metrics"][0]["optimizer_steps"] > 1
    assert one["best_of_n"]["trained"][0].sum() == 3 * 2
    excluded = one["excluded"]["metrics"]
    assert all(m["excluded_samples"] == 4 for m in excluded) or any(
        m["excluded_samples"] == 0 for m in excluded
    )
    assert sum(m["excluded_samples"] for m in excluded) >= 4  # the NaN prompt was drawn
    assert excluded[1]["lr"] < excluded[0]["lr"]  # the cosine decays
    assert len(one["odd"]["advantages"][0]) == 3
    sliding = one["sliding_window"]["metrics"]
    assert [m["trained_pairs"] for m in sliding] == [12 * 2, 12 * 1]
    for name in ("nft", "nft_flux_full"):  # the sampling policy lags the trained one
        assert one[name]["metrics"][-1]["old_gap"] > 0
        assert one[name]["metrics"][-1]["old_decay"] > 0


@pytest.mark.parametrize("name, processes", [("lora", 2), ("padding_rank", 3)])
def test_evaluation_is_split_over_ranks_with_the_same_figures(runs, name, processes):
    one, several = runs[0][name]["eval"], runs[processes - 1][0][name]["eval"]
    for stage in ("before", "after"):
        assert several[stage]["images"] == 5
        assert several[stage]["per_image"]["reward"] == pytest.approx(
            one[stage]["per_image"]["reward"], rel=1e-5
        )

"""Evaluation before, during and after training: fixed prompts and seeds, a deterministic sampler.

With ``[evaluation]`` in a recipe, a run scores the same held-out prompts and seeds with the base
model before its first iteration and with the trained weights after its last, and writes both to
``summary.json`` with a before/after image grid. With ``evaluation.every = N`` it also scores them
after every N-th iteration (``eval/iter-NNNNNN.json``); ``summary.json`` then holds the held-out
curve (``eval_curve``) and ``eval_curve.png`` plots it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

import dance.distributed as dist
from dance.config import option
from dance.interfaces import Policy, Reward, Runtime
from dance.sampling.generate import generate
from dance.training.layout import SampleLayout
from dance.training.prompts import load_prompts


@dataclass
class EvaluationConfig:
    prompts: str = option("", "held-out prompts (file or pkg:PACKAGE/FILE); empty = no evaluation")
    seeds: int = option(2, "images per prompt, with seeds 0..seeds-1", ge=1)
    sampler: str = option(
        "",
        "sampler used for evaluation; empty = the deterministic one for the policy (ode for flow "
        "models, ddim with eta 0 for diffusion models)",
    )
    num_steps: int = option(16, "sampling steps of the evaluation sampler", ge=1)
    reward: str = option("", "reward reported as reward_mean; empty = the recipe's first reward")
    success: str = option(
        "", "component of that reward reported as success_rate (a 0/1 score); empty = none"
    )
    batch_size: int = option(16, "images per forward pass", ge=1)
    every: int = option(
        0,
        "also evaluate after every N-th iteration (eval/iter-NNNNNN.json, the curve in "
        "summary.json); 0 = before and after training only",
        ge=0,
    )


class Evaluator:
    """Generates the evaluation set and scores it; the same images for every call."""

    def __init__(
        self,
        config: EvaluationConfig,
        sampler_options: dict[str, Any],
        reward: Reward,
        registry: Any,
        runtime: Runtime,
        prediction_type: str = "flow",
    ) -> None:
        self.config = config
        self.reward = reward
        self.runtime = runtime
        name, defaults = config.sampler, {}
        if not name:
            name, defaults = registry.deterministic_sampler(prediction_type)
        # Evaluate on the schedule the policy is trained with: every training sampler option the
        # evaluation sampler also has (shift; DDIM's beta table and spacing), then the
        # deterministic defaults (DDIM's eta 0) and the evaluation's own number of steps.
        fields = {f.name for f in dataclasses.fields(registry.get("sampler", name).config_class)}
        options = {k: v for k, v in sampler_options.items() if k in fields}
        options.update(defaults, num_steps=config.num_steps)
        self.sampler = registry.create("sampler", name, options, runtime)
        held_out = load_prompts(config.prompts)  # conditioning images decoded once, kept
        self.prompts = [p for p in held_out for _ in range(config.seeds)]
        self.seeds = [s for _ in held_out for s in range(config.seeds)]

    def __call__(self, policy: Policy) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The figures and the images ``[n, C, (F,) H, W]``. The figures hold the means and, under
        ``per_image``, each image's reward (and success) in prompt-then-seed order, so two stages
        can be compared image by image (:mod:`dance.reporting.paired`); ``prompts`` is each image's
        prompt in that order.

        Under several processes every rank generates and scores its share of the set (a
        collective: call it on every rank); every rank gets the figures, rank 0 alone the images
        (None elsewhere). Each image comes from its own seed, so the images and figures do not
        depend on the number of processes.
        """
        layout = SampleLayout(len(self.prompts), self.runtime.world_size, self.runtime.rank)
        # This rank's share, padded with copies of the last image so that every rank runs the
        # same number of forward passes (a sharded network gathers its weights in each).
        index = layout.global_index.clamp(max=len(self.prompts) - 1).tolist()
        media = generate(
            policy,
            self.sampler,
            [self.prompts[i] for i in index],
            [self.seeds[i] for i in index],
            batch_size=self.config.batch_size,
        )
        real = layout.real_count
        scores = {name: torch.empty(0) for name in self.reward.components}  # no image here
        with dist.fail_together("evaluation scoring"), torch.no_grad():
            if real:
                scores = self.reward.score(media[:real], self.prompts[index[0] : index[0] + real])
        every = {  # component -> [n] of every image, in order
            name: layout.gather(layout.pad(scores[name].detach().float().cpu()))
            for name in self.reward.components
        }
        main = every[self.reward.components[0]]
        result: dict[str, Any] = {"reward_mean": main.mean().item(), "images": len(self.prompts)}
        per_image = {"reward": main.tolist()}
        if self.config.success:
            success = every[self.config.success]
            result["success_rate"] = success.mean().item()
            per_image["success"] = success.tolist()
        for name, values in every.items():
            result[f"{self.reward.name}.{name}"] = values.mean().item()
        result["per_image"] = per_image
        # The prompt of each image, in the same order, to label the before/after grid.
        result["prompts"] = [p.text for p in self.prompts]
        gathered = dist.gather_to_main(media)  # [R * n, ...] on rank 0
        return result, None if gathered is None else gathered[: len(self.prompts)]

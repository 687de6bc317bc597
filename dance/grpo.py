"""The GRPO loop of DanceGRPO (arXiv 2505.07818), for any policy, sampler, rewards and advantage.

One iteration, read top to bottom in :meth:`GRPOTrainer.iteration`:

1. rollout   - P prompts, each repeated G times; sample trajectories without gradients, storing
               every latent x_k and the log-probability of every transition;
2. reward    - decode the clean prediction of the last step and score it with every reward;
               gather the scores of all ranks, since a group may span ranks;
3. advantage - one advantage per sample from the gathered scores and group ids;
4. update    - on a random fraction of each trajectory's steps, recompute the log-probability of
               the stored transition under the current weights and minimise the clipped-ratio
               objective, batched over (sample, step) pairs in micro-batches.

Shapes: n = samples on this rank, N = sampling steps, *L = the policy's latent shape.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dance.distributed as dist
from dance.best_of_n import rows_to_train, select_extremes
from dance.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dance.data import PromptSource, read_prompts
from dance.ema import EMA
from dance.errors import ConfigError, RewardError, UsageError
from dance.evaluation import Evaluator
from dance.generate import denoise, noise_from_seeds
from dance.interfaces import Conditioning, Prompt, Reward, Runtime, StepOutput
from dance.paired import paired_change
from dance.plots import before_after_grid, line_chart
from dance.recipe import Recipe, RewardSpec, dumps_toml
from dance.registry import Registry, get_registry
from dance.run_log import RunLog, save_grid


@dataclass
class Rollout:
    trajectory: torch.Tensor  # [n, N + 1, *L]  x_0 (noise) ... x_N
    log_probs: torch.Tensor  # [n, N]          log p(x_{k+1} | x_k) at sampling time
    reward_latents: torch.Tensor  # [n, *L]    what the rewards score, once decoded
    cond: Conditioning  # [n, ...]


class GRPOTrainer:
    def __init__(
        self,
        recipe: Recipe,
        output_dir: str | Path,
        runtime: Runtime | None = None,
        registry: Registry | None = None,
        progress: bool = False,
    ) -> None:
        self.recipe = recipe
        self.cfg = cfg = recipe.trainer
        self.output_dir = Path(output_dir)
        self.runtime = rt = runtime or Runtime.auto()
        registry = registry or get_registry()

        self.policy = registry.create("policy", recipe.policy, recipe.policy_options, rt)
        self.sampler = registry.create("sampler", recipe.sampler, recipe.sampler_options, rt)
        self.rewards = self._build_rewards(recipe.rewards, registry)
        self.advantage = registry.create(
            "advantage", recipe.advantage, recipe.advantage_options, rt
        )
        self.weights = {spec.label: spec.weight for spec in recipe.rewards}

        self.schedule = self.sampler.schedule(device=rt.device)
        # The steps an update may train on: random transitions only (a sampler that mixes SDE
        # and ODE steps has no log-probability on its ODE steps), the last one only on request.
        candidates = self.sampler.noisy_steps(self.schedule).cpu().clone()  # [N] bool
        if not cfg.train_last_step:
            candidates[-1] = False
        self.train_steps = torch.nonzero(candidates).squeeze(1)  # [T_max]
        if self.train_steps.numel() < 1:
            raise ConfigError(
                "no sampling step can be trained: the last step is excluded (set "
                "trainer.train_last_step=true or raise sampler.num_steps) and the sampler's "
                "other steps are deterministic"
            )
        self.samples_per_iteration = cfg.prompts_per_iteration * cfg.group_size
        if self.samples_per_iteration % rt.world_size:
            raise ConfigError(
                f"prompts_per_iteration x group_size = {self.samples_per_iteration} samples must "
                f"divide evenly over {rt.world_size} processes"
            )
        self.local_samples = self.samples_per_iteration // rt.world_size

        self.params = self.policy.trainable_parameters()
        if not self.params:
            raise UsageError(f"policy '{recipe.policy}' has no trainable parameters.")
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )
        warmup = cfg.lr_warmup_steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        if cfg.kl_coef > 0:
            self.policy.prepare_reference()

        self.prompts = PromptSource(read_prompts(cfg.prompts), cfg.seed)
        self.iteration_done = 0
        self.last_checkpoint: Path | None = None
        self._stop_requested = False
        self.evaluator = self._build_evaluator(registry)
        self.log = RunLog(self.output_dir, cfg.iterations, dist.is_main(), progress)

    def _build_evaluator(self, registry: Registry) -> Evaluator | None:
        ev = self.recipe.evaluation
        if not ev.prompts:
            return None
        name = ev.reward or self.recipe.rewards[0].name
        reward = next(r for spec, r in self.rewards.values() if spec.name == name)
        return Evaluator(
            ev,
            self.recipe.sampler_options,
            reward,
            registry,
            self.runtime,
            prediction_type=self.policy.prediction_type,
        )

    def _build_rewards(
        self, specs: list[RewardSpec], registry: Registry
    ) -> dict[str, tuple[RewardSpec, Reward]]:
        # Two components of one reward (VideoAlign VQ and MQ, say) share one loaded model.
        instances: dict[tuple[str, str], Reward] = {}
        out = {}
        for spec in specs:
            key = (spec.name, repr(sorted(spec.options.items())))
            if key not in instances:
                instances[key] = registry.create("reward", spec.name, spec.options, self.runtime)
                if not instances[key].accepts(self.policy.modality):
                    raise UsageError(
                        f"reward '{spec.name}' does not score {self.policy.modality}s, which "
                        f"policy '{self.recipe.policy}' generates."
                    )
            out[spec.label] = (spec, instances[key])
        return out

    # ------------------------------------------------------------------------------------------
    # One iteration
    # ------------------------------------------------------------------------------------------

    def iteration(self, it: int) -> dict[str, float]:
        cfg, rt = self.cfg, self.runtime
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        # ---- rollout --------------------------------------------------------------------------
        prompts = self.prompts.next(cfg.prompts_per_iteration)  # identical on every rank
        first = rt.rank * self.local_samples
        global_index = torch.arange(first, first + self.local_samples)  # [n]
        group_ids = torch.arange(self.samples_per_iteration) // cfg.group_size  # [P*G]
        local_prompts = [prompts[g] for g in group_ids[global_index].tolist()]
        self.policy.train(False)
        rollout = self.rollout(local_prompts, global_index, it)
        timings["rollout"] = time.perf_counter() - clock

        # ---- reward ---------------------------------------------------------------------------
        clock = time.perf_counter()
        with torch.no_grad():
            media = self.policy.decode(rollout.reward_latents)  # [n, C, H, W] or [n, C, F, H, W]
        scores, components = self.score(media, local_prompts)
        gathered = {k: dist.all_gather_cat(v) for k, v in scores.items()}  # label -> [P*G]
        timings["reward"] = time.perf_counter() - clock

        # ---- advantage ------------------------------------------------------------------------
        clock = time.perf_counter()
        advantages_all = self.advantage.compute(gathered, self.weights, group_ids.to(rt.device))
        advantages = advantages_all[global_index.to(advantages_all.device)]  # [n]
        timings["advantage"] = time.perf_counter() - clock

        # ---- update ---------------------------------------------------------------------------
        clock = time.perf_counter()
        if cfg.train_per_group:  # Best-of-N: only the extremes of each group [m <= n]
            rollout, advantages = self.extremes(rollout, advantages_all, group_ids)
        self.policy.train(True)
        update_stats = self.update(rollout, advantages, it)
        update_stats["trained_samples"] = float(torch.isfinite(advantages).sum())
        timings["update"] = time.perf_counter() - clock

        if cfg.sample_every and it % cfg.sample_every == 0 and dist.is_main():
            save_grid(media, self.output_dir / "samples" / f"iter-{it:06d}.png")
        return self._metrics(gathered, components, advantages_all, update_stats, timings)

    # ---- rollout ------------------------------------------------------------------------------

    def initial_noise(self, global_index: torch.Tensor, it: int) -> torch.Tensor:
        """Initial latents ``[n, *L]``: one generator per sample (per group when shared), seeded
        from (seed, iteration, sample or group), so noise does not depend on how ranks split the
        batch and every rank draws its own."""
        cfg = self.cfg
        keys = global_index // cfg.group_size if cfg.share_initial_noise else global_index
        seeds = [(cfg.seed * 1_000_003 + it) * 1_000_033 + key for key in keys.tolist()]
        return noise_from_seeds(self.policy, seeds)

    @torch.no_grad()
    def rollout(self, prompts: list[Prompt], global_index: torch.Tensor, it: int) -> Rollout:
        cfg, sched = self.cfg, self.schedule
        n, steps = len(prompts), sched.num_steps
        cond = self.policy.encode(prompts)  # [n, ...]
        noise = self.initial_noise(global_index, it)  # [n, *L]
        trajectory = noise.new_empty((n, steps + 1, *noise.shape[1:]))  # [n, N + 1, *L]
        log_probs = noise.new_empty((n, steps))  # [n, N]
        reward_latents = torch.empty_like(noise)  # [n, *L]
        # SDE noise: one generator per rank and iteration, so a resumed run draws the same.
        gen = torch.Generator(self.runtime.device).manual_seed(
            (cfg.seed * 1_000_003 + it) * 7_919 + self.runtime.rank + 1
        )
        for start in range(0, n, cfg.rollout_batch_size):
            rows = slice(start, min(start + cfg.rollout_batch_size, n))
            c = cond.select(torch.arange(rows.start, rows.stop))
            trajectory[rows, 0] = noise[rows]
            for k, out in enumerate(denoise(self.policy, self.sampler, sched, noise[rows], c, gen)):
                trajectory[rows, k + 1] = out.next_latents  # [b, *L]
                log_probs[rows, k] = out.log_prob  # [b]
            reward_latents[rows] = out.x0 if cfg.reward_on == "last_x0" else out.next_latents
        return Rollout(trajectory, log_probs, reward_latents, cond)

    # ---- reward -------------------------------------------------------------------------------

    def score(
        self, media: torch.Tensor, prompts: list[Prompt]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Score with every reward: ``{label: [n]}`` for training, and every component for logs.

        A reward that raises or returns a non-finite value stops the run, unless
        ``on_reward_failure = "exclude"``: then those samples get NaN, which leaves them out of the
        group statistics and the update. Never a substitute value.
        """
        n = media.shape[0]
        exclude = self.cfg.on_reward_failure == "exclude"
        scores: dict[str, torch.Tensor] = {}
        components: dict[str, torch.Tensor] = {}
        results: dict[int, dict[str, torch.Tensor] | Exception] = {}
        for label, (spec, reward) in self.rewards.items():
            if id(reward) not in results:
                try:
                    with torch.no_grad():
                        results[id(reward)] = reward.score(media, prompts)
                except Exception as exc:
                    if not exclude:
                        raise RewardError(
                            f"reward '{spec.name}' raised {type(exc).__name__}: {exc}"
                        ) from exc
                    results[id(reward)] = exc
            result = results[id(reward)]
            component = spec.component or reward.components[0]
            if isinstance(result, Exception):
                value = torch.full((n,), float("nan"), device=self.runtime.device)
            else:
                if component not in result or result[component].shape != (n,):
                    raise RewardError(
                        f"reward '{spec.name}' must return component '{component}' of shape "
                        f"[{n}], got { ({k: tuple(v.shape) for k, v in result.items()}) }"
                    )
                value = result[component].detach().float().to(self.runtime.device)
                for name, v in result.items():
                    components[f"{spec.name}.{name}"] = v.detach().float().to(self.runtime.device)
            bad = ~torch.isfinite(value)
            if bad.any() and not exclude:
                raise RewardError(
                    f"reward '{label}' returned {int(bad.sum())} non-finite value(s) in {n} "
                    "samples; fix the reward, or set trainer.on_reward_failure=exclude to leave "
                    "such samples out"
                )
            scores[label] = torch.where(bad, torch.full_like(value, float("nan")), value)
        return scores, components

    # ---- update -------------------------------------------------------------------------------

    def extremes(
        self, rollout: Rollout, advantages_all: torch.Tensor, group_ids: torch.Tensor
    ) -> tuple[Rollout, torch.Tensor]:
        """Best-of-N training: this rank's share of the k/2 best and k/2 worst samples of each
        group (by the combined advantage ``[P*G]``), padded with zero-weight rows so every rank
        runs the same number of micro-batches."""
        rt = self.runtime
        selected = select_extremes(advantages_all, group_ids, self.cfg.train_per_group)  # [P*G]
        rows, real = rows_to_train(selected, self.local_samples, rt.rank, rt.world_size)  # [m]
        first = rt.rank * self.local_samples
        adv = advantages_all[(rows + first).to(advantages_all.device)]  # [m]
        adv = torch.where(real.to(adv.device), adv, torch.full_like(adv, float("nan")))
        dev_rows = rows.to(rollout.trajectory.device)
        subset = Rollout(
            trajectory=rollout.trajectory[dev_rows],  # [m, N + 1, *L]
            log_probs=rollout.log_probs[dev_rows],  # [m, N]
            reward_latents=rollout.reward_latents[dev_rows],  # [m, *L]
            cond=rollout.cond.select(rows),  # [m, ...]
        )
        return subset, adv

    def update(self, rollout: Rollout, advantages: torch.Tensor, it: int) -> dict[str, float]:
        cfg, dev = self.cfg, self.runtime.device
        n = advantages.shape[0]
        train = torch.isfinite(advantages)  # [n]  excluded samples stay in the layout, weight 0
        adv = torch.where(train, advantages, torch.zeros_like(advantages))

        # Which (sample, step) pairs to train on: T random steps per sample, then shuffled.
        gen = torch.Generator().manual_seed(
            (cfg.seed * 1_000_003 + it) * 104_729 + self.runtime.rank
        )
        count = self.train_steps.numel()
        per_sample = max(1, int(cfg.timestep_fraction * count))
        steps = torch.stack(
            [self.train_steps[torch.randperm(count, generator=gen)[:per_sample]] for _ in range(n)]
        )  # [n, T]
        samples = torch.arange(n).unsqueeze(1).expand_as(steps)  # [n, T]
        order = torch.randperm(steps.numel(), generator=gen)
        pair_sample = samples.reshape(-1)[order].to(dev)  # [n*T]
        pair_step = steps.reshape(-1)[order].to(dev)  # [n*T]
        micro = list(
            zip(
                pair_sample.split(cfg.micro_batch_size),
                pair_step.split(cfg.micro_batch_size),
                strict=True,
            )
        )  # [(i [m], s [m]), ...]
        per_window = cfg.gradient_accumulation_steps or len(micro)
        windows = [
            range(j, min(j + per_window, len(micro))) for j in range(0, len(micro), per_window)
        ]

        # Old log-probs in the training layout (see TrainerConfig.old_log_probs). In the first
        # window no weight has changed yet, so the forward of the update itself gives them.
        old: dict[int, torch.Tensor] = {}
        drift = torch.zeros((), device=dev)
        if cfg.old_log_probs == "recompute":
            with torch.no_grad():
                for j in (j for w in windows[1:] for j in w):
                    i, s = micro[j]
                    old[j] = self._transition(rollout, i, s).log_prob
                    drift = torch.maximum(drift, (old[j] - rollout.log_probs[i, s]).abs().max())

        stats = _Stats()
        for w, window in enumerate(windows):
            valid = sum(train[micro[j][0]].sum() for j in window).clamp(min=1)  # pairs trained
            for j in window:
                i, s = micro[j]
                out = self._transition(rollout, i, s)
                new_lp = out.log_prob  # [m]
                kl = self._kl(rollout, i, s, out) if cfg.kl_coef > 0 else torch.zeros_like(new_lp)
                if cfg.old_log_probs == "rollout":
                    old_lp = rollout.log_probs[i, s]
                elif w == 0:
                    old_lp = new_lp.detach()
                else:
                    old_lp = old[j]
                if w == 0:
                    first_dev = (new_lp.detach() - rollout.log_probs[i, s]).abs().max()
                    drift = torch.maximum(drift, first_dev)
                ratio = torch.exp(new_lp - old_lp)  # [m]
                a = adv[i]  # [m]
                clipped = torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
                policy_loss = torch.maximum(-a * ratio, -a * clipped)  # [m]
                per_pair = (policy_loss + cfg.kl_coef * kl) * train[i].float()
                (per_pair.sum() / valid).backward()
                stats.add_pairs(ratio.detach(), train[i], policy_loss.detach(), kl.detach(), cfg)
                if w == 0:
                    stats.first_window_ratio.append(ratio.detach()[train[i]])
            stats.grad_norms.append(self._optimizer_step())
        stats.drift = drift.item()
        return stats.summary(self.optimizer.param_groups[0]["lr"])

    def _transition(self, rollout: Rollout, i: torch.Tensor, s: torch.Tensor) -> StepOutput:
        """Recompute the stored transitions x_s -> x_{s+1} of samples ``i [m]`` under the current
        weights; ``.log_prob [m]`` is their log-probability."""
        x = rollout.trajectory[i, s]  # [m, *L]
        t = self.schedule.timesteps[s]  # [m]
        v = self.policy.predict(x, t, rollout.cond.select(i))  # [m, *L]
        x_next = rollout.trajectory[i, s + 1]  # [m, *L]
        return self.sampler.step(v, x, s, self.schedule, next_latents=x_next)

    def _kl(
        self, rollout: Rollout, i: torch.Tensor, s: torch.Tensor, out: StepOutput
    ) -> torch.Tensor:
        """KL ``[m]`` from the frozen reference's transition to the current one. Both Gaussians
        share their std, so it is |mean - mean_ref|^2 / (2 std^2), averaged over elements as
        flow_grpo's kl_loss."""
        with torch.no_grad(), self.policy.reference():
            ref = self._transition(rollout, i, s)
        dims = tuple(range(1, out.mean.ndim))
        std = out.std.float().clamp_min(1e-12)
        return ((out.mean - ref.mean) ** 2 / (2 * std**2)).mean(dim=dims)

    def _optimizer_step(self) -> float:
        if dist.is_distributed():  # data parallel: average the gradients of every rank
            for p in self.params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return float(norm)

    # ---- metrics ------------------------------------------------------------------------------

    def _metrics(
        self,
        gathered: dict[str, torch.Tensor],
        components: dict[str, torch.Tensor],
        advantages: torch.Tensor,
        update: dict[str, float],
        timings: dict[str, float],
    ) -> dict[str, float]:
        m: dict[str, float] = {}
        for label, values in gathered.items():
            finite = values[torch.isfinite(values)]
            m[f"reward/{label}/mean"] = finite.mean().item() if finite.numel() else float("nan")
            m[f"reward/{label}/std"] = finite.std().item() if finite.numel() > 1 else 0.0
            m["excluded_samples"] = m.get("excluded_samples", 0) + int(
                (~torch.isfinite(values)).sum()
            )
        for name, values in components.items():
            key = f"component/{name}/mean"
            m[key] = (
                values[torch.isfinite(values)].mean().item() if values.numel() else float("nan")
            )
        finite_adv = advantages[torch.isfinite(advantages)]
        m["advantage/abs_mean"] = finite_adv.abs().mean().item() if finite_adv.numel() else 0.0
        m.update(update)
        m.update({f"time/{k}": v for k, v in timings.items()})
        m["time/iteration"] = sum(timings.values())
        return m

    # ------------------------------------------------------------------------------------------
    # The run: iterations, checkpoints, resume, Ctrl-C
    # ------------------------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration_done,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "prompts": self.prompts.state_dict(),
            "rng": rng_state(),
        }

    def save(self) -> Path:
        path = None
        if dist.is_main():
            path = save_checkpoint(
                self.output_dir,
                self.iteration_done,
                self.policy,
                self.trainer_state(),
                self.cfg.keep_checkpoints,
            )
            if self.ema is not None:
                with self.ema.applied():
                    self.policy.save_trained(str(path / "ema"))
        dist.barrier()
        self.last_checkpoint = path
        return path  # type: ignore[return-value]

    def resume(self) -> int:
        """Load the latest checkpoint of the output directory; returns the next iteration."""
        path = latest_checkpoint(self.output_dir)
        if path is None:
            raise UsageError(f"nothing to resume: {self.output_dir} has no checkpoints/latest.")
        state = load_checkpoint(path, self.policy)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.prompts.load_state_dict(state["prompts"])
        set_rng_state(state["rng"])
        self.iteration_done = int(state["iteration"])
        self.last_checkpoint = path
        return self.iteration_done

    def write_config(self) -> None:
        if dist.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.toml").write_text(dumps_toml(self.recipe.to_toml_dict()))

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run the remaining iterations; Ctrl-C stops after the current one, with a checkpoint.

        With ``[evaluation]``, the held-out set is scored before the first iteration and after
        the last; ``summary.json`` and ``reward_curve.png`` are written at the end.
        """
        self.write_config()
        if resume:
            self.resume()
        if self.evaluator is not None and not (self.output_dir / "eval" / "before.json").exists():
            self.evaluate("before")
        self.log.start_at(self.iteration_done)
        last: dict[str, float] = {}
        with self._graceful_interrupt():
            for it in range(self.iteration_done, self.cfg.iterations):
                last = self.iteration(it)
                self.iteration_done = it + 1
                self.log.log(it, last, self._headline(last))
                if self._stop_requested:
                    break
                every = self.cfg.checkpoint_every
                if every and self.iteration_done % every == 0:
                    self.save()
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(
            f"{self.iteration_done:06d}"
        ):
            self.save()
        self.log.close()
        if self.evaluator is not None:
            self.evaluate("after")
        summary = {
            "iterations": self.iteration_done,
            "interrupted": self._stop_requested,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "metrics": last,
        }
        if dist.is_main():
            summary.update(self.write_report())
        return summary

    def evaluate(self, stage: str) -> dict[str, Any] | None:
        """Score the evaluation set with the current weights; kept under ``eval/``."""
        assert self.evaluator is not None
        result = None
        if dist.is_main():
            result, media = self.evaluator(self.policy)
            folder = self.output_dir / "eval"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{stage}.json").write_text(json.dumps(result, indent=2) + "\n")
            pixels = (media.clamp(0, 1) * 255).round().to(torch.uint8)
            torch.save(pixels, folder / f"{stage}.pt")
        dist.barrier()
        return result

    def write_report(self) -> dict[str, Any]:
        """summary.json, reward_curve.png and, after an evaluation, eval_grid.png."""
        out = self.output_dir
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        curves = (
            {
                key[len("reward/") : -len("/mean")]: [(h["iteration"], h[key]) for h in history]
                for key in history[-1]
                if key.startswith("reward/") and key.endswith("/mean")
            }
            if history
            else {}
        )
        files = {"metrics": "metrics.jsonl", "config": "config.toml"}
        if curves:
            line_chart(curves, out / "reward_curve.png", "mean reward per iteration")
            files["reward_curve"] = "reward_curve.png"
        report: dict[str, Any] = {"iterations": self.iteration_done, "files": files}
        folder = out / "eval"
        if (folder / "before.json").is_file() and (folder / "after.json").is_file():
            before_figures = json.loads((folder / "before.json").read_text())
            after_figures = json.loads((folder / "after.json").read_text())
            before_images = before_figures.pop("per_image", None)
            after_images = after_figures.pop("per_image", None)
            prompts, _ = before_figures.pop("prompts", None), after_figures.pop("prompts", None)
            report["eval_before"], report["eval_after"] = before_figures, after_figures
            if before_images and after_images:
                # Same prompts and seeds in both stages: compare image by image.
                report["eval_change"] = {
                    key: paired_change(before_images[key], after_images[key])
                    for key in before_images
                    if key in after_images
                }
            before = torch.load(folder / "before.pt", weights_only=True).float() / 255
            after = torch.load(folder / "after.pt", weights_only=True).float() / 255
            before_after_grid(before, after, out / "eval_grid.png", prompts=prompts)
            files["eval_grid"] = "eval_grid.png"
        files["summary"] = "summary.json"
        (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
        return report

    def _headline(self, metrics: dict[str, float]) -> str:
        """Progress-bar text: the mean of each reward and the speed."""
        rewards = [
            f"{key[len('reward/') : -len('/mean')]} {value:+.4g}"
            for key, value in metrics.items()
            if key.startswith("reward/") and key.endswith("/mean")
        ]
        return " ".join(rewards) + f"  {metrics['time/iteration']:.2f} s/it"

    @contextlib.contextmanager
    def _graceful_interrupt(self):  # noqa: ANN202
        """First Ctrl-C: finish the iteration, checkpoint, stop. Second: stop at once."""

        def handler(signum, frame):  # noqa: ANN001
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class _Stats:
    """Accumulates update statistics over the micro-batches of one iteration."""

    def __init__(self) -> None:
        self.ratios: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []
        self.kls: list[torch.Tensor] = []
        self.clipped: list[torch.Tensor] = []
        self.grad_norms: list[float] = []
        self.first_window_ratio: list[torch.Tensor] = []
        self.drift = 0.0

    def add_pairs(self, ratio, mask, loss, kl, cfg) -> None:  # noqa: ANN001
        self.ratios.append(ratio[mask])
        self.losses.append(loss[mask])
        self.kls.append(kl[mask])
        self.clipped.append(((ratio[mask] - 1).abs() > cfg.clip_range).float())

    def summary(self, lr: float) -> dict[str, float]:
        def cat(xs: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(xs) if xs else torch.zeros(0)

        ratio, first = cat(self.ratios), cat(self.first_window_ratio)
        out = {
            "loss": cat(self.losses).mean().item() if ratio.numel() else 0.0,
            "kl": cat(self.kls).mean().item() if ratio.numel() else 0.0,
            "ratio/mean": ratio.mean().item() if ratio.numel() else 1.0,
            "ratio/min": ratio.min().item() if ratio.numel() else 1.0,
            "ratio/max": ratio.max().item() if ratio.numel() else 1.0,
            "ratio/first_step_max_dev": (first - 1).abs().max().item() if first.numel() else 0.0,
            "clip_fraction": cat(self.clipped).mean().item() if ratio.numel() else 0.0,
            "grad_norm": sum(self.grad_norms) / max(len(self.grad_norms), 1),
            "optimizer_steps": float(len(self.grad_norms)),
            "rollout_logprob_drift": self.drift,
            "lr": lr,
        }
        return out

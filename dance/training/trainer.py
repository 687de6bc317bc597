"""The trainer: one loop for every objective, policy, sampler, reward and advantage.

One iteration, read top to bottom in :meth:`Trainer.iteration`:

1. rollout   - P prompts, each repeated G times; sample without gradients, keeping what the
               objective needs (every latent x_k and transition log-probability for GRPO, the
               final samples for DiffusionNFT);
2. reward    - decode what the rewards score (the clean prediction of the last step by default)
               and score it with every reward; gather the scores of all ranks, since a group may
               span ranks;
3. advantage - one advantage per sample from the gathered scores and group ids (Best-of-N keeps
               only the extremes of each group);
4. update    - (sample, unit) pairs drawn over the global batch, split into optimizer steps and
               micro-batches; the objective (:mod:`dance.objectives`) gives each pair's loss.

Several processes give the same run as one (see :mod:`dance.training.layout`): random draws are
keyed by (seed, iteration, global sample index), the trained pairs and optimizer steps are drawn
over the global batch, the loss is normalised by global counts and gradients are summed over ranks.

Shapes: S = samples per iteration (all ranks), n = rows on this rank (padding included),
N = sampling steps, *L = the policy's latent shape, m = pairs in a micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch

import dance.distributed as dist
from dance.errors import RewardError, RunError, UsageError
from dance.interfaces import Prompt, Reward, Rollout, Runtime, TrainBatch, TrainingContext
from dance.registry import Registry, get_registry
from dance.reporting.report import save_evaluation, write_report
from dance.reporting.run_log import RunLog, save_grid
from dance.sampling.best_of_n import select_extremes
from dance.sampling.generate import BatchNoise, denoise, noise_from_seeds
from dance.training.checkpoint import (
    TrainingState,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dance.training.ema import EMA
from dance.training.evaluation import Evaluator
from dance.training.layout import (
    MicroBatch,
    SampleLayout,
    draw_pairs,
    optimizer_windows,
    rank_micro_batches,
)
from dance.training.optimizers import LRSchedule, build_optimizer, check_optimizer
from dance.training.prompts import PromptSource, read_prompts
from dance.training.run_config import Recipe, RewardSpec, dumps_toml
from dance.training.sharding import clip_gradients, shard_policy, sum_replicated_gradients


class Trainer:
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
        self.registry = registry = registry or get_registry()
        check_optimizer(cfg, rt.device)  # before any model loads

        self.policy = registry.create("policy", recipe.policy, recipe.policy_options, rt)
        self.sampler = registry.create("sampler", recipe.sampler, recipe.sampler_options, rt)
        self.rewards = self._build_rewards(recipe.rewards, registry)
        self.advantage = registry.create(
            "advantage", recipe.advantage, recipe.advantage_options, rt
        )
        self.weights = {spec.label: spec.weight for spec in recipe.rewards}

        self.objective = registry.create(
            "objective", recipe.objective, recipe.objective_options, rt
        )
        self.schedule = self.sampler.schedule(device=rt.device)
        self.samples_per_iteration = cfg.prompts_per_iteration * cfg.group_size
        # Which global samples this rank holds; padding rows when the count does not divide.
        self.layout = SampleLayout(self.samples_per_iteration, rt.world_size, rt.rank)

        if self.objective.needs_reference():  # before sharding: a full fine-tune copies here
            self.policy.prepare_reference()
        # FSDP2 under torchrun (one process wraps nothing); it replaces the parameters, so the
        # optimizer and the EMA are built on what it leaves.
        self.sharded = shard_policy(self.policy, rt, cpu_offload=cfg.fsdp_cpu_offload)
        self.params = self.policy.trainable_parameters()
        if not self.params:
            raise UsageError(f"policy '{recipe.policy}' has no trainable parameters.")
        self.optimizer = build_optimizer(self.params, cfg, rt.device)
        self.lr_scheduler = LRSchedule(self.optimizer, cfg)
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.objective.bind(TrainingContext(self.policy, cfg.seed))
        self.training = TrainingState(
            self.policy.trainable_modules(),
            self.params,
            self.optimizer,
            self.ema,
            self.objective.shadow_weights(),
        )
        if dist.is_main():  # left by a checkpoint write that was killed
            remove_stale_temporaries(self.output_dir)

        self.prompts = PromptSource(read_prompts(cfg.prompts), cfg.seed)
        self.iteration_done = 0
        self.last_checkpoint: Path | None = None
        self._stop_signal = 0  # the signal that asked this rank to stop (SIGINT, SIGTERM); 0 = none
        self.stopped_by = 0  # the signal the whole job stopped after, once shared
        self.evaluator = self._build_evaluator(registry)
        # Loggers and lifecycle hooks run on rank 0 alone: their effects happen once per job.
        loggers = [
            registry.create("logger", name, recipe.loggers.get(name, {}), rt)
            for name in cfg.loggers
            if dist.is_main()
        ]
        self.log = RunLog(
            self.output_dir,
            cfg.iterations,
            dist.is_main(),
            progress,
            loggers=loggers,
            config=recipe.to_toml_dict(),
        )

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
        cfg, rt, layout = self.cfg, self.runtime, self.layout
        timings: dict[str, float] = {}
        cpu_start = time.process_time()
        clock = time.perf_counter()

        # ---- rollout --------------------------------------------------------------------------
        prompts = self.prompts.next(cfg.prompts_per_iteration)  # identical on every rank
        total = self.samples_per_iteration
        group_ids = torch.arange(total) // cfg.group_size  # [S]
        global_index = layout.global_index  # [n]; padding rows (>= S) take the last prompt
        local_prompts = [prompts[g] for g in group_ids[global_index.clamp(max=total - 1)].tolist()]
        self.policy.train(False)
        # The rollout, decoding and scoring can fail on one rank only (a reward server, memory):
        # every rank then raises that rank's message. (Once the network is sharded, the
        # rollout's forwards are collectives: a rank failing inside them ends the job through
        # torchrun, which stops the other processes.)
        with dist.fail_together("the rollout"):
            rollout = self.rollout(local_prompts, global_index, it)
        timings["rollout"] = time.perf_counter() - clock

        # ---- reward ---------------------------------------------------------------------------
        clock = time.perf_counter()
        real = layout.real_count  # padding rows are not scored
        with dist.fail_together("reward scoring"):
            with torch.no_grad():
                media = self.policy.decode(rollout.reward_latents)  # [n, C, H, W] / [n, C, F, H, W]
            scores, components = self.score(media[:real], local_prompts[:real])
        gathered = {k: layout.gather(layout.pad(v)) for k, v in scores.items()}  # label -> [S]
        gathered_components = {k: layout.gather(layout.pad(v)) for k, v in components.items()}
        timings["reward"] = time.perf_counter() - clock

        # ---- advantage ------------------------------------------------------------------------
        clock = time.perf_counter()
        advantages = self.advantage.compute(gathered, self.weights, group_ids.to(rt.device))  # [S]
        trained = torch.isfinite(advantages).cpu()  # [S]  excluded samples never train
        if cfg.train_per_group:  # Best-of-N: only the extremes of each group
            trained &= select_extremes(advantages, group_ids, cfg.train_per_group)
        timings["advantage"] = time.perf_counter() - clock

        # ---- update ---------------------------------------------------------------------------
        clock = time.perf_counter()
        self.policy.train(True)
        update_stats = self.update(rollout, advantages, trained, it)
        update_stats["trained_samples"] = float(trained.sum())
        timings["update"] = time.perf_counter() - clock

        if cfg.sample_every and it % cfg.sample_every == 0:
            every_rank = dist.gather_to_main(media)  # [R * n, ...] on rank 0
            if every_rank is not None:
                save_grid(every_rank[:total], self.output_dir / "samples" / f"iter-{it:06d}.png")
        metrics = self._metrics(gathered, gathered_components, advantages, update_stats, timings)
        # This process's CPU seconds in the iteration (all its threads): unlike the wall clock,
        # not stretched by other jobs on a shared machine (benchmarks/objectives.py's budget).
        metrics["cpu/iteration"] = time.process_time() - cpu_start
        return metrics

    # ---- rollout ------------------------------------------------------------------------------

    def initial_noise(self, global_index: torch.Tensor, it: int) -> torch.Tensor:
        """Initial latents ``[n, *L]``: one generator per sample (per group when shared), seeded
        from (seed, iteration, sample or group), so noise does not depend on how ranks split the
        batch and every rank draws its own."""
        cfg = self.cfg
        keys = global_index // cfg.group_size if cfg.share_initial_noise else global_index
        seeds = [(cfg.seed * 1_000_003 + it) * 1_000_033 + key for key in keys.tolist()]
        return noise_from_seeds(self.policy, seeds)

    def sde_noise(self, global_index: torch.Tensor, it: int) -> BatchNoise:
        """The sampler's noise for the samples ``global_index [b]``: their rows of one draw for
        the whole iteration per step, from a generator keyed by (seed, iteration) alone, so the
        same at any rollout batch size, on any rank, and again after a resume. The key is the
        one earlier one-process runs used, so their results are reproduced."""
        seed = (self.cfg.seed * 1_000_003 + it) * 7_919 + 1
        return BatchNoise(seed, self.samples_per_iteration, global_index)

    @torch.no_grad()
    def rollout(self, prompts: list[Prompt], global_index: torch.Tensor, it: int) -> Rollout:
        """Sample ``[n]`` rows with the objective's sampling weights, keeping what it needs."""
        cfg = self.cfg
        # This iteration's sampler (MixGRPO slides its SDE window with the iteration); the
        # objective reads the trained steps from the rollout's sampler and schedule.
        sampler = self.sampler.for_iteration(it)
        sched = sampler.schedule(device=self.runtime.device)
        keep_trajectory = self.objective.keeps == "trajectory"
        n, steps = len(prompts), sched.num_steps
        cond = self.policy.encode(prompts)  # [n, ...]
        noise = self.initial_noise(global_index, it)  # [n, *L]
        trajectory = log_probs = None
        if keep_trajectory:
            trajectory = noise.new_empty((n, steps + 1, *noise.shape[1:]))  # [n, N + 1, *L]
            log_probs = noise.new_empty((n, steps))  # [n, N]
        samples = torch.empty_like(noise)  # [n, *L]
        reward_latents = torch.empty_like(noise)  # [n, *L]
        with self.objective.rollout_weights():
            for start in range(0, n, cfg.rollout_batch_size):
                rows = slice(start, min(start + cfg.rollout_batch_size, n))
                c = cond.select(torch.arange(rows.start, rows.stop))
                sde_noise = self.sde_noise(global_index[rows], it)
                sampling = denoise(self.policy, sampler, sched, noise[rows], c, sde_noise)
                if trajectory is not None and log_probs is not None:
                    trajectory[rows, 0] = noise[rows]
                for k, out in enumerate(sampling):
                    if trajectory is not None and log_probs is not None:
                        trajectory[rows, k + 1] = out.next_latents  # [b, *L]
                        log_probs[rows, k] = out.log_prob  # [b]
                samples[rows] = out.next_latents
                reward_latents[rows] = out.x0 if cfg.reward_on == "last_x0" else out.next_latents
        return Rollout(sampler, sched, cond, samples, reward_latents, trajectory, log_probs)

    # ---- reward -------------------------------------------------------------------------------

    def score(
        self, media: torch.Tensor, prompts: list[Prompt]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Score with every reward: ``{label: [m]}`` for training, and every component
        ``{reward.component: [m]}`` for logs (NaN where a reward failed and is excluded).

        A reward that raises or returns a non-finite value stops the run, unless
        ``on_reward_failure = "exclude"``: then those samples get NaN, which leaves them out of the
        group statistics and the update. Never a substitute value. No media (a rank holding only
        padding rows): nothing is scored, every value is empty.
        """
        n = media.shape[0]
        dev = self.runtime.device
        exclude = self.cfg.on_reward_failure == "exclude"
        scores: dict[str, torch.Tensor] = {}
        components: dict[str, torch.Tensor] = {}
        results: dict[int, dict[str, torch.Tensor] | Exception] = {}
        for label, (spec, reward) in self.rewards.items():
            if id(reward) not in results:
                try:
                    with torch.no_grad():
                        results[id(reward)] = reward.score(media, prompts) if n else {}
                except Exception as exc:
                    if not exclude:
                        raise RewardError(
                            f"reward '{spec.name}' raised {type(exc).__name__}: {exc}"
                        ) from exc
                    results[id(reward)] = exc
            result = results[id(reward)]
            component = spec.component or reward.components[0]
            nan = torch.full((n,), float("nan"), device=dev)
            if isinstance(result, Exception) or not n:
                value = nan
                for name in reward.components:
                    components[f"{spec.name}.{name}"] = nan
            else:
                if component not in result or result[component].shape != (n,):
                    raise RewardError(
                        f"reward '{spec.name}' must return component '{component}' of shape "
                        f"[{n}], got { ({k: tuple(v.shape) for k, v in result.items()}) }"
                    )
                value = result[component].detach().float().to(dev)
                for name in reward.components:
                    got = result.get(name)
                    got = nan if got is None else got.detach().float().to(dev)
                    components[f"{spec.name}.{name}"] = got
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

    def update(
        self, rollout: Rollout, advantages: torch.Tensor, trained: torch.Tensor, it: int
    ) -> dict[str, float]:
        """One iteration's optimizer steps on the samples with ``trained [S]``, whose
        ``advantages [S]`` (global, identical on every rank) are finite.

        The (sample, unit) pairs, their order and their split into optimizer steps are drawn
        over the global batch (:mod:`dance.training.layout`); each rank trains the pairs of its
        samples. Each optimizer step's loss is the mean over its pairs, all ranks together: every
        rank divides its sum by the global count and the gradients are summed over ranks.
        """
        cfg, dev, layout = self.cfg, self.runtime.device, self.layout
        local = layout.global_index.clamp(max=layout.total - 1)  # [n]
        local_trained = trained[local] & (layout.global_index < layout.total)  # [n]
        adv = torch.where(
            local_trained.to(advantages.device), advantages[local.to(advantages.device)], 0.0
        ).to(dev)  # [n]; 0 on rows that do not train (their pairs are padding only)

        # Keyed by (seed, iteration) alone; the key one-process runs of earlier versions used.
        gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) * 104_729)
        # The units (sampling steps, forward-process timesteps) a sample may train on.
        units, per_sample = self.objective.train_units(rollout)  # [U], int
        pairs = draw_pairs(units, per_sample, trained, gen)  # [M, 2]
        pairs_per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps
        filler = int(units[0])  # padding pairs: a trainable unit of the first row
        windows = [
            (w.stop - w.start, rank_micro_batches(pairs[w], layout, cfg.micro_batch_size, filler))
            for w in optimizer_windows(pairs.shape[0], pairs_per_step)
        ]  # [(global pairs of the optimizer step, this rank's micro-batches), ...]
        batches = [
            [self._train_batch(mb, adv, it, w, j) for j, mb in enumerate(micro)]
            for w, (_, micro) in enumerate(windows)
        ]
        self.objective.begin_update(rollout, batches)

        grad_norms = []
        loss_sum = torch.zeros((), device=dev)  # this rank's trained pairs' losses (no sync)
        for w, ((global_pairs, _), step_batches) in enumerate(zip(windows, batches, strict=True)):
            self.lr_scheduler.apply(it, w, len(windows))  # this step's learning rate
            for batch in step_batches:
                # Divided by the optimizer step's global pair count: summing gradients over
                # ranks gives the mean over all its pairs.
                per_pair = self.objective.loss(rollout, batch) * batch.weight.float()  # [m]
                (per_pair.sum() / global_pairs).backward()
                loss_sum += per_pair.detach().float().sum()
            grad_norms.append(self._optimizer_step(it))
            self.objective.after_optimizer_step()
        self.objective.end_update()
        if windows:
            self._check_finite_weights(it)
        reported = self.objective.metrics()  # the same keys on every rank
        if "loss" not in reported:  # grpo and nft report their own; others get the mean per pair
            total = float(dist.all_reduce(loss_sum).item())
            reported = {"loss": total / pairs.shape[0] if pairs.shape[0] else 0.0, **reported}
        return {
            **reported,
            "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
            "optimizer_steps": float(len(grad_norms)),
            "trained_pairs": float(pairs.shape[0]),
            "lr": self.optimizer.param_groups[0]["lr"],  # of the last optimizer step
        }

    def _train_batch(
        self, mb: MicroBatch, adv: torch.Tensor, it: int, window: int, index: int
    ) -> TrainBatch:
        dev = self.runtime.device
        rows = mb.rows.to(dev)
        return TrainBatch(
            rows=rows,
            samples=rows + self.layout.first,
            units=mb.steps.to(dev),
            weight=mb.weight.to(dev),
            advantages=adv[rows],
            iteration=it,
            window=window,
            index=index,
        )

    def _optimizer_step(self, it: int) -> float:
        # Each rank's loss is already divided by the global pair count, so gradients are SUMMED
        # over ranks: FSDP2's reduce-scatter (divide factor 1) did it for the sharded ones, the
        # parameters it does not hold are summed here. The norm is the global one, over every
        # rank's shards, and so the same on every rank: all stop together when it is not finite.
        sum_replicated_gradients(self.params)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = clip_gradients(self.params, max_norm)
        if not math.isfinite(norm):
            raise RunError(self._diverged(it, "the gradient norm"))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return float(norm)

    def _check_finite_weights(self, it: int) -> None:
        """Stop, on every rank, when an optimizer step left a non-finite trained weight."""
        local = (p.to_local() if hasattr(p, "to_local") else p for p in self.params)
        bad = any(not bool(torch.isfinite(p.detach()).all()) for p in local)
        if dist.any_rank(bad):
            raise RunError(self._diverged(it, "a trained weight"))

    def _diverged(self, it: int, what: str) -> str:
        kept = (
            f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
        )
        return (
            f"{what} became non-finite (NaN or inf) in iteration {it}: training diverged; this "
            f"state is not saved{kept}. Lower trainer.learning_rate or keep "
            "trainer.max_grad_norm > 0"
        )

    # ---- metrics ------------------------------------------------------------------------------

    def _metrics(
        self,
        gathered: dict[str, torch.Tensor],
        components: dict[str, torch.Tensor],
        advantages: torch.Tensor,
        update: dict[str, float],
        timings: dict[str, float],
    ) -> dict[str, float]:
        """Metrics of the whole job: every input is gathered over ranks ``[S]`` or reduced."""
        m: dict[str, float] = {}
        for label, values in gathered.items():
            finite = values[torch.isfinite(values)]
            m[f"reward/{label}/mean"] = finite.mean().item() if finite.numel() else float("nan")
            m[f"reward/{label}/std"] = finite.std().item() if finite.numel() > 1 else 0.0
            m["excluded_samples"] = m.get("excluded_samples", 0) + int(
                (~torch.isfinite(values)).sum()
            )
        for name, values in components.items():
            finite = values[torch.isfinite(values)]
            m[f"component/{name}/mean"] = finite.mean().item() if finite.numel() else float("nan")
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
            "objective": self.objective.state_dict(),
            "rng": rng_state(),
        }

    def save(self) -> Path:
        """Checkpoint on every rank: sharded weights and optimizer, trainer state, and the
        diffusers-loadable export (see :mod:`dance.training.checkpoint`)."""
        state = self.trainer_state()
        del state["optimizer"], state["ema"]  # sharded with the weights (see save_checkpoint)
        path = save_checkpoint(
            self.output_dir,
            self.iteration_done,
            self.policy,
            self.training,
            state,
            self.cfg.keep_checkpoints,
        )
        self.last_checkpoint = path
        with dist.fail_together("the after_checkpoint hooks"):
            self._lifecycle_hook("after_checkpoint", path=path, iteration=self.iteration_done)
        return path

    def _lifecycle_hook(self, name: str, **kwargs: Any) -> None:
        """Call the plugins' lifecycle hook ``name`` (:mod:`dance.hookspecs`) on rank 0 only; a
        plugin that raises stops the run (inside :func:`dist.fail_together`, every rank)."""
        if dist.is_main():
            self.registry.call_hook(name, **kwargs)

    def resume(self) -> int:
        """Load the latest checkpoint of the output directory; returns the next iteration."""
        path = latest_checkpoint(self.output_dir)
        if path is None:
            raise UsageError(f"nothing to resume: {self.output_dir} has no checkpoints/latest.")
        state = load_checkpoint(path, self.policy, self.training)  # weights, optimizer, EMA
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.prompts.load_state_dict(state["prompts"])
        self.objective.load_state_dict(state.get("objective", {}))
        set_rng_state(state["rng"])
        self.iteration_done = int(state["iteration"])
        self.last_checkpoint = path
        return self.iteration_done

    def write_config(self) -> None:
        if dist.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.toml").write_text(dumps_toml(self.recipe.to_toml_dict()))

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run the remaining iterations; Ctrl-C or SIGTERM stops after the current one, with a
        checkpoint (``summary["stopped_by"]`` names the signal).

        With ``[evaluation]``, the held-out set is scored before the first iteration, after
        every ``evaluation.every``-th iteration and after the last; ``summary.json`` and the
        plots are written at the end. Every decision that ranks share (evaluate before, stop) is
        taken once for the whole job.

        A resumed run neither repeats nor loses a periodic evaluation: each one is written
        before the checkpoint of its iteration, "after" is also written as the periodic file
        of its iteration when that one is due (a run of 4 iterations with ``every = 2``
        leaves ``iter-000004.json`` for the run that continues it), and one missing at the
        resumed iteration (a run started with another ``evaluation.every``) is made up at once.
        """
        saved = self.resume() if resume else None  # the iteration of the newest checkpoint
        if saved is not None and saved > self.cfg.iterations:
            raise UsageError(
                f"{self.output_dir} has done {saved} iterations, more than trainer.iterations = "
                f"{self.cfg.iterations}; pass trainer.iterations={saved} or more to continue it "
                "(the run is unchanged)."
            )
        self.write_config()  # after the checks: a refused resume leaves the record as it was
        # Rank 0 alone looks at the output directory: a rank that starts later must not see
        # the file rank 0 has just written and decide otherwise.
        evaluate_before = dist.broadcast_object(
            self.evaluator is not None and not (self.output_dir / "eval" / "before.json").exists()
        )
        if evaluate_before:
            self.evaluate("before")
        missed = dist.broadcast_object(
            self._periodic_evaluation_due()
            and not (self.output_dir / "eval" / f"{self._periodic_stage()}.json").exists()
        )
        if missed:
            self.evaluate(self._periodic_stage())
        last: dict[str, float] = {}
        out = self.output_dir
        try:
            with dist.fail_together("starting the loggers"):
                self.log.start_at(self.iteration_done)
            with self._graceful_interrupt():
                for it in range(self.iteration_done, self.cfg.iterations):
                    last = self.iteration(it)
                    self.iteration_done = it + 1
                    with dist.fail_together("logging"):  # the loggers and hooks of rank 0
                        self.log.log(it, last, self._headline(last))
                        self._lifecycle_hook(
                            "after_iteration", iteration=it, metrics=last, output_dir=out
                        )
                    if self._periodic_evaluation_due():  # before the checkpoint: see above
                        self.evaluate(self._periodic_stage())
                    # A signal may reach some ranks only: all stop after the same iteration.
                    signal_number = dist.all_reduce(torch.tensor([self._stop_signal]), "max")
                    self.stopped_by = int(signal_number.item())
                    if self.stopped_by:
                        break
                    every = self.cfg.checkpoint_every
                    if every and self.iteration_done % every == 0:
                        self.save()
                        saved = self.iteration_done
            if saved != self.iteration_done:
                self.save()
        except BaseException:
            self.log.close(failed=True)  # a W&B run is finished, files are flushed
            raise
        with dist.fail_together("closing the loggers"):
            self.log.close()
        if self.evaluator is not None:
            self.evaluate("after")
        summary = {
            "iterations": self.iteration_done,
            "interrupted": bool(self.stopped_by),
            "stopped_by": signal.Signals(self.stopped_by).name if self.stopped_by else None,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "metrics": last,
        }
        if dist.is_main():
            summary.update(write_report(self.output_dir, self.iteration_done))
        return summary

    def _periodic_iteration(self) -> bool:
        """Whether ``evaluation.every`` asks for an evaluation of the weights after
        ``iteration_done`` iterations."""
        every, done = self.recipe.evaluation.every, self.iteration_done
        return self.evaluator is not None and every > 0 and done > 0 and done % every == 0

    def _periodic_evaluation_due(self) -> bool:
        """A periodic evaluation to run now: not after the last iteration, which "after"
        scores (and writes under the periodic name too)."""
        return self._periodic_iteration() and self.iteration_done < self.cfg.iterations

    def _periodic_stage(self) -> str:
        return f"iter-{self.iteration_done:06d}"

    def evaluate(self, stage: str) -> dict[str, Any]:
        """Score the evaluation set with the current weights, split over every rank; rank 0
        keeps the figures and images under ``eval/``, with the iterations done so far."""
        assert self.evaluator is not None
        result, media = self.evaluator(self.policy)
        result = {"iteration": self.iteration_done, **result}
        with dist.fail_together(f"the {stage} evaluation's files and hooks"):
            if media is not None:  # rank 0
                save_evaluation(self.output_dir, stage, result, media)
                if stage == "after" and self._periodic_iteration():
                    save_evaluation(self.output_dir, self._periodic_stage(), result, media)
                self._lifecycle_hook(
                    "after_evaluation", stage=stage, figures=result, output_dir=self.output_dir
                )
        return result

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
        """First Ctrl-C (SIGINT) or SIGTERM, which SLURM and Kubernetes send before they kill a
        job: finish the iteration, checkpoint, stop. A second signal: stop at once."""

        def handler(signum, frame):  # noqa: ANN001
            if self._stop_signal:
                raise KeyboardInterrupt
            self._stop_signal = signum

        watched = (signal.SIGINT, signal.SIGTERM)
        try:
            previous = {sig: signal.signal(sig, handler) for sig in watched}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

"""The five interfaces of dance: Policy, Sampler, Reward, Advantage and Objective; and Logger,
where a run's metrics go.

A plugin implements one of these classes and registers it through a hook (see
:mod:`dance.hookspecs`).
Every component class declares

* ``name``: the registry name users type (``flux``, ``dance-sde``, ``jpeg-compressibility``);
* ``config_class``: a dataclass built with :func:`dance.config.option`;

and is constructed as ``Component(config, runtime)``.

Shapes used below: ``B`` is a batch of samples; ``*L`` is the policy's latent shape, opaque to the
core (FLUX keeps packed tokens ``[B, S, C]``, a UNet keeps ``[B, C, H, W]``, a video model
``[B, C, F, H, W]``). Media handed to rewards are pixels in [0, 1]: ``[B, C, H, W]`` for images and
``[B, C, F, H, W]`` for videos.
"""

from __future__ import annotations

import contextlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

Modality = Literal["image", "video"]
PredictionType = Literal["flow", "epsilon"]


@dataclass
class Runtime:
    """Where and how components run; built once by the trainer or the CLI."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # dtype of frozen weights (text encoders, VAE, frozen base weights): bf16 on GPU, fp32 on CPU.
    frozen_dtype: torch.dtype = torch.float32
    # Rank and world size of this process (1 process: 0 and 1).
    rank: int = 0
    world_size: int = 1

    @classmethod
    def auto(cls, device: str | None = None) -> Runtime:
        """Pick the device (CUDA when present) and the matching frozen dtype."""
        import dance.distributed as dist

        dev = dist.parse_device(device) if device else dist.default_device()
        frozen = torch.bfloat16 if dev.type == "cuda" else torch.float32
        return cls(device=dev, frozen_dtype=frozen, rank=dist.rank(), world_size=dist.world_size())


class Conditioning(dict):
    """Encoded prompts (and conditions) for a batch: name -> tensor with the batch dimension first.

    The core selects, repeats and concatenates rows with :meth:`select` and :meth:`cat`, so every
    value must be a tensor of shape ``[B, ...]``. Values that do not depend on the sample (position
    ids, say) are rebuilt inside :meth:`Policy.predict` instead of being stored here.
    """

    def select(self, index: torch.Tensor) -> Conditioning:
        return Conditioning({k: v.index_select(0, index.to(v.device)) for k, v in self.items()})

    def to(self, device: torch.device) -> Conditioning:
        return Conditioning({k: v.to(device) for k, v in self.items()})

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        return Conditioning({k: torch.cat([p[k] for p in parts]) for k in parts[0]})

    def batch_size(self) -> int:
        return next(iter(self.values())).shape[0]


@dataclass
class Prompt:
    """One prompt, with an optional conditioning input (an image for image-to-video)."""

    text: str
    # Conditioning image as pixels in [0, 1], [C, H, W]; None for text-only tasks.
    image: torch.Tensor | None = None


class imported_classes:  # noqa: N801 - used like a function in class bodies
    """A class attribute holding classes of ``module`` named ``names``, imported on first read.

    ``block_classes = imported_classes("diffusers.models.transformers.transformer_flux",
    "FluxTransformerBlock")`` declares FLUX's blocks without importing diffusers when the plugin
    loads (that import takes seconds, and most commands never shard anything).
    """

    def __init__(self, module: str, *names: str) -> None:
        self.module, self.names = module, names
        self._classes: tuple[type[torch.nn.Module], ...] | None = None

    def __get__(self, instance: object, owner: type) -> tuple[type[torch.nn.Module], ...]:
        if self._classes is None:
            found = importlib.import_module(self.module)
            self._classes = tuple(getattr(found, name) for name in self.names)
        return self._classes


class Policy(ABC):
    """One foundation model: encodes prompts, predicts model outputs, decodes latents to pixels.

    ``predict`` is the only path gradients flow through. Everything else runs without gradients.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    modality: ClassVar[Modality]
    prediction_type: ClassVar[PredictionType]
    # The transformer block classes of the trained network (FLUX's double- and single-stream
    # blocks, a UNet's down/mid/up blocks): the units FSDP2 shards one by one under torchrun, and
    # what gradient checkpointing recomputes. Empty: the network is sharded as one unit.
    # A plugin may declare them with :class:`imported_classes` to keep its import light.
    block_classes: ClassVar[tuple[type[torch.nn.Module], ...]] = ()

    def __init__(self, config: Any, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    @abstractmethod
    def encode(self, prompts: Sequence[Prompt]) -> Conditioning:
        """Encode prompts (and their conditions) with the frozen encoders; cache what repeats."""

    @abstractmethod
    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal latents ``[B, *L]`` (fp32) to start sampling from."""

    @abstractmethod
    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Model output ``[B, *L]`` (fp32) for latents ``[B, *L]`` at per-sample ``timesteps [B]``.

        ``timesteps`` are the sampler's schedule values (sigma in [0, 1] for flows, the discrete
        training timestep for diffusion); the policy converts them to what its network expects and
        applies classifier-free guidance where the model uses it.
        """

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (fp32): ``[B, C, H, W]`` for images, ``[B, C, F, H, W]`` for videos."""

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (LoRA weights by default)."""

    @abstractmethod
    def save_trained(self, directory: str) -> None:
        """Write the trained weights as safetensors that the model's diffusers pipeline loads."""

    @abstractmethod
    def load_trained(self, directory: str) -> None:
        """Load weights written by :meth:`save_trained`; raise if nothing matched."""

    def reference(self) -> contextlib.AbstractContextManager[None]:
        """Context in which :meth:`predict` gives the frozen reference model (for the KL term).

        LoRA policies disable their adapters; a full fine-tune must keep a frozen copy.
        """
        raise NotImplementedError(f"policy '{self.name}' has no frozen reference model")

    def prepare_reference(self) -> None:  # noqa: B027 - optional hook
        """Called once before training when the KL term is on; a full fine-tune copies its
        frozen weights here so that :meth:`reference` can use them."""

    def train(self, mode: bool = True) -> None:  # noqa: B027 - optional hook
        """Switch the trainable network between training and evaluation mode."""

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules holding the trainable parameters: FSDP2 shards them under torchrun (each of
        their :attr:`block_classes` blocks, then the module), and checkpoints save their trained
        weights and optimizer states with ``torch.distributed.checkpoint``. A policy that names
        none keeps its parameters replicated on every rank."""
        return []


@dataclass
class Schedule:
    """A sampling schedule for ``num_steps`` steps.

    ``timesteps [N]`` is what :meth:`Policy.predict` receives at each step. ``levels [N + 1]`` is
    the sampler's own noise-level table (sigmas for flows, cumulative alphas for diffusion), read
    only by the sampler that made it.
    """

    timesteps: torch.Tensor
    levels: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]


@dataclass
class StepOutput:
    """One stochastic transition ``x_k -> x_{k+1}``; every tensor has the batch dimension first."""

    next_latents: torch.Tensor  # [B, *L]
    log_prob: torch.Tensor  # [B], fp32
    mean: torch.Tensor  # [B, *L], the Gaussian mean of x_{k+1}
    std: torch.Tensor  # [B, 1, ...] broadcastable to mean
    x0: torch.Tensor  # [B, *L], the clean-sample prediction at step k


class Sampler(ABC):
    """A stateless stochastic sampling step with the log-probability of its transition."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    # The policy prediction types this sampler understands.
    prediction_types: ClassVar[tuple[PredictionType, ...]]
    # False for deterministic samplers (ODE): they have no transition density and cannot train.
    stochastic: ClassVar[bool] = True
    # The prediction types for which this sampler is the choice when a recipe names none (training)
    # and when evaluation or `dance sample` names none (noise-free: deterministic_options make it
    # so, e.g. DDIM's eta 0). The core names no sampler: it asks the registry which one declares
    # itself (Registry.default_sampler, Registry.deterministic_sampler).
    default_for: ClassVar[tuple[PredictionType, ...]] = ()
    deterministic_for: ClassVar[tuple[PredictionType, ...]] = ()
    deterministic_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Any, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    @abstractmethod
    def schedule(
        self, num_steps: int | None = None, device: torch.device | None = None
    ) -> Schedule:
        """The schedule; ``num_steps`` defaults to the sampler config's number of steps."""

    def for_iteration(self, iteration: int) -> Sampler:
        """The sampler that rolls out training ``iteration`` (0-based): itself by default. A
        sampler whose noisy steps change during training (MixGRPO's sliding SDE window) returns
        a copy for that iteration and stays stateless: the result depends on ``iteration``
        alone, so a resumed run gets the same sampler at the same iteration."""
        return self

    def noisy_steps(self, schedule: Schedule) -> torch.Tensor:
        """Bool ``[N]``: the steps whose transition is random, so that it has a log-probability and
        can be trained. Every step of a stochastic sampler by default; a sampler that mixes SDE
        and ODE steps (MixGRPO, Flow-GRPO-Fast) marks only its SDE steps."""
        return torch.full((schedule.num_steps,), self.stochastic, dtype=torch.bool)

    @abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        latents: torch.Tensor,
        step_index: torch.Tensor,
        schedule: Schedule,
        next_latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> StepOutput:
        """Step every sample from its ``step_index [B]`` to the next level.

        With ``next_latents`` given, no noise is drawn: the log-probability of that stored
        transition is computed (training). ``deterministic`` takes the noise-free mean (evaluation).
        A sampler whose :meth:`uses_previous_step` is True also takes ``previous``: the
        :class:`StepOutput` of the step before (None at the first step).
        """

    def uses_previous_step(self) -> bool:
        """Whether :meth:`step` reads the step before's output (``previous=``): multistep ODE
        solvers such as DPM-Solver++(2M). The sampling loop then passes it. Such steps must be
        deterministic (log-probability 0), so training, which recomputes one stored transition
        at a time, never needs it."""
        return False


RewardOutput = dict[str, torch.Tensor]
"""Named components of a reward, each ``[B]`` fp32; the first key is the reward's main score."""


class Reward(ABC):
    """Scores a batch of decoded media against prompts.

    ``modalities`` and ``differentiable`` say what the class can do, for the recipe to check before
    anything is built; an instance whose config narrows that (a wrapper over an image-only reward,
    gradients only when asked for) says so through :meth:`accepts` and :meth:`is_differentiable`,
    never by overwriting the class attributes.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    # Every modality an instance of this class may accept.
    modalities: ClassVar[tuple[Modality, ...]] = ("image",)
    # Whether an instance may keep the graph from pixels to scores (always, or when its config
    # asks: see is_differentiable).
    differentiable: ClassVar[bool] = False
    # Names of the components :meth:`score` returns; the first is the default one.
    components: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    @abstractmethod
    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        """Score pixels in [0, 1] (``[B, C, H, W]`` or ``[B, C, F, H, W]``) for their prompts."""

    def accepts(self, modality: Modality) -> bool:
        """Whether this instance scores ``modality``: one of the class's ``modalities``; a reward
        whose config narrows them overrides this."""
        return modality in type(self).modalities

    def is_differentiable(self) -> bool:
        """Whether this instance's main scores keep their graph back to the media. The class's
        ``differentiable``; a reward where gradients are an option of its config overrides this
        (never True when the class says False)."""
        return type(self).differentiable


class Advantage(ABC):
    """Turns per-reward scores of a rollout into one advantage per sample."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    @abstractmethod
    def compute(
        self,
        rewards: Mapping[str, torch.Tensor],
        weights: Mapping[str, float],
        group_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Advantages ``[N]`` from ``rewards`` (name -> ``[N]``) and ``group_ids [N]``.

        A NaN reward marks a sample excluded from the statistics; it gets advantage NaN so that the
        trainer can leave it out of the update.
        """


@dataclass
class Rollout:
    """What one iteration's rollout kept on this rank, as its :class:`Objective` asked.

    ``n`` rows (padding rows included, see :mod:`dance.training.layout`), ``N`` sampling steps.
    """

    sampler: Sampler  # the sampler it was drawn with (a sliding SDE window moves per iteration)
    schedule: Schedule
    cond: Conditioning  # [n, ...] the encoded prompts
    samples: torch.Tensor  # [n, *L] the final latents x_N (what NFT trains on)
    reward_latents: torch.Tensor  # [n, *L] what the rewards score, once decoded
    # Only when the objective keeps the trajectory (``Objective.keeps == "trajectory"``):
    trajectory: torch.Tensor | None = None  # [n, N + 1, *L] x_0 (noise) ... x_N
    log_probs: torch.Tensor | None = None  # [n, N] log p(x_{k+1} | x_k) at sampling time


@dataclass
class TrainBatch:
    """One micro-batch of an update: ``m`` (sample, unit) pairs of this rank.

    A unit is what the objective trains a sample on: a sampling step for GRPO, a forward-process
    timestep for DiffusionNFT (:meth:`Objective.train_units`).
    """

    rows: torch.Tensor  # [m] local rows of the rollout
    samples: torch.Tensor  # [m] global sample indices (for draws keyed by sample)
    units: torch.Tensor  # [m] which unit of each sample
    weight: torch.Tensor  # [m] bool, False on padding pairs (their loss is multiplied by 0)
    advantages: torch.Tensor  # [m] 0 on padding pairs
    iteration: int
    window: int  # index of the optimizer step within the iteration (0 = no update made yet)
    index: int  # index of the micro-batch within its optimizer step


@dataclass
class TrainingContext:
    """What an objective trains with, handed to :meth:`Objective.bind` once before training.
    (The sampler and schedule of each iteration come with its :class:`Rollout`.)"""

    policy: Policy
    seed: int  # the run's seed (trainer.seed): key its random draws by (seed, iteration, sample)


class Objective(ABC):
    """A training objective: what the rollout keeps and the loss of a micro-batch.

    The trainer (:mod:`dance.training.trainer`) owns everything else: rollout, rewards,
    advantages, Best-of-N, the split of (sample, unit) pairs into optimizer steps over ranks,
    gradient reduction, clipping, checkpoints. Per iteration it calls :meth:`begin_update`, then
    :meth:`loss` for each micro-batch of each optimizer step (it multiplies by ``weight``, divides
    by the optimizer step's global pair count and back-propagates), :meth:`after_optimizer_step`
    after each step, and :meth:`metrics` at the end.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    # "trajectory": every latent x_0 ... x_N and each transition's log-probability (GRPO);
    # "samples": the final clean samples only (DiffusionNFT), which saves [n, N, *L] of memory.
    keeps: ClassVar[Literal["trajectory", "samples"]] = "trajectory"
    # One line for `dance plugins`: which samplers the rollout may use.
    sampler_requirement: ClassVar[str] = "any sampler"

    def __init__(self, config: Any, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    @classmethod
    def check_sampler(
        cls,
        config: Any,
        sampler_cls: type[Sampler],
        sampler_config: Any,
    ) -> None:
        """Given the objective's ``config``, raise :class:`dance.errors.ConfigError` (one line,
        with the fix) when the rollout cannot use this sampler. Called when a recipe is resolved,
        before any model loads. Default: any sampler."""
        return None

    def needs_reference(self) -> bool:
        """Whether :meth:`loss` uses ``policy.reference()`` (a KL term): the trainer then calls
        ``policy.prepare_reference()`` before sharding."""
        return False

    def bind(self, context: TrainingContext) -> None:
        """Keep what training needs; called once, after the policy is sharded."""
        self.context = context

    @abstractmethod
    def train_units(self, rollout: Rollout) -> tuple[torch.Tensor, int]:
        """The units the samples of ``rollout`` may be trained on ``[U]`` and how many of them
        each trained sample draws (distinct, at random, keyed by (seed, iteration)). Called every
        iteration: the units may follow the rollout's sampler (GRPO trains its SDE steps)."""

    def rollout_weights(self) -> contextlib.AbstractContextManager[None]:
        """Context the rollout runs in: the sampling policy's weights (DiffusionNFT samples with
        a slowly updated copy of the trained weights). Default: the trained weights."""
        return contextlib.nullcontext()

    def begin_update(  # noqa: B027 - optional hook
        self, rollout: Rollout, batches: list[list[TrainBatch]]
    ) -> None:
        """Before the first optimizer step of an iteration, with every micro-batch this rank will
        train, grouped by optimizer step (GRPO recomputes old log-probs here)."""

    @abstractmethod
    def loss(self, rollout: Rollout, batch: TrainBatch) -> torch.Tensor:
        """The loss of each pair ``[m]`` (with gradients, unweighted): the trainer multiplies by
        ``batch.weight`` and divides by the optimizer step's global pair count."""

    def after_optimizer_step(self) -> None:  # noqa: B027 - optional hook
        """After each optimizer step."""

    def end_update(self) -> None:  # noqa: B027 - optional hook
        """After the iteration's last optimizer step (also when it made none): DiffusionNFT's
        soft update of the sampling policy."""

    def metrics(self) -> dict[str, float]:
        """The iteration's metrics over every rank (reduce with :mod:`dance.distributed`), reset
        for the next iteration. Every rank must call the same collectives."""
        return {}

    def shadow_weights(self) -> dict[str, list[torch.Tensor]]:
        """Copies of the trained parameters the objective keeps (shaped and sharded like them):
        checkpoints save and restore them with the weights. Name -> one tensor per parameter."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Small state to checkpoint (no weight tensors: see :meth:`shadow_weights`)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`."""


@dataclass
class RunInfo:
    """What a :class:`Logger` is told when a run starts or resumes."""

    output_dir: Path  # the run's folder (config.toml, metrics.jsonl, checkpoints/, ...)
    iterations: int  # the run's total, trainer.iterations
    # The first iteration this attempt runs: 0, or on resume the checkpoint's iteration. What an
    # earlier attempt logged for this iteration and later ones is stale: they run again.
    start: int
    config: dict[str, Any]  # the resolved recipe, as written to config.toml


class Logger(ABC):
    """Where a run's metrics go: a file, a dashboard, an experiment tracker.

    Chosen by name in ``trainer.loggers`` and configured by the recipe's ``[loggers.<name>]``
    table (its ``config_class`` fields). Loggers live on rank 0 only: the other ranks build none.
    The trainer calls :meth:`start` once before the first iteration, :meth:`log` after every
    iteration, and :meth:`close` at the end (also when the run fails or is stopped). A logger
    that raises stops the run with one line naming it.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    def start(self, run: RunInfo) -> None:
        """Open the destination; on resume (``run.start > 0``) drop or supersede what was
        logged for iterations ``>= run.start`` so that every iteration is shown once."""
        self.run = run

    @abstractmethod
    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        """Record the metrics of iteration ``iteration`` (0-based): the whole job's figures,
        gathered over ranks (``reward/<label>/mean``, ``loss``, ``time/update``, ...)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release the destination. Called once, also after a failure."""

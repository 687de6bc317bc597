"""A tiny flow policy for testing the trainer fast, without any diffusers model.

A per-pixel MLP velocity field over ``[B, C, S, S]`` latents, conditioned on the timestep and a
prompt embedding derived from the prompt text, with a low-rank trainable delta on its first layer
(the same shape of training as LoRA). Register it in a test with
``load_registry(extra={"toy": dance.testing.toy_policy})``.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dance.config import option
from dance.errors import UsageError
from dance.hookspecs import hookimpl
from dance.interfaces import Conditioning, Policy, Prompt, Runtime


@dataclass
class ToyPolicyConfig:
    channels: int = option(4, "latent channels", ge=3)
    size: int = option(8, "latent height and width", ge=1)
    hidden: int = option(32, "hidden width of the velocity MLP", ge=1)
    rank: int = option(4, "rank of the trainable delta", ge=1)
    embed: int = option(8, "prompt embedding size", ge=1)
    seed: int = option(0, "seed of the frozen weights", ge=0)


class ToyFlowPolicy(Policy):
    name = "toy-flow"
    config_class = ToyPolicyConfig
    modality = "image"
    prediction_type = "flow"

    def __init__(self, config: ToyPolicyConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        g = torch.Generator().manual_seed(config.seed)
        d_in = config.channels + 1 + config.embed
        dev = runtime.device
        self.w1 = (torch.randn(config.hidden, d_in, generator=g) / d_in**0.5).to(dev)
        self.w2 = (
            torch.randn(config.channels, config.hidden, generator=g) / config.hidden**0.5
        ).to(dev)
        self.lora_a = torch.nn.Parameter(
            (torch.randn(config.rank, d_in, generator=g) * 0.1).to(dev)
        )
        self.lora_b = torch.nn.Parameter(torch.zeros(config.hidden, config.rank, device=dev))
        self._delta_on = True
        self.encode_calls = 0

    def encode(self, prompts: Sequence[Prompt]) -> Conditioning:
        self.encode_calls += 1
        rows = []
        for p in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(p.text.encode()))
            rows.append(torch.randn(self.config.embed, generator=g))
        return Conditioning({"embedding": torch.stack(rows).to(self.runtime.device)})

    def initial_noise(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        c, s = self.config.channels, self.config.size
        return torch.randn(batch_size, c, s, s, generator=generator, device=self.runtime.device)

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        b, c, h, w = latents.shape
        x = latents.permute(0, 2, 3, 1)  # [B, H, W, C]
        t = timesteps.view(b, 1, 1, 1).expand(b, h, w, 1)
        e = cond["embedding"].view(b, 1, 1, -1).expand(b, h, w, -1)
        feats = torch.cat([x, t.to(x.dtype), e], dim=-1)  # [B, H, W, C + 1 + E]
        w1 = self.w1 + self.lora_b @ self.lora_a if self._delta_on else self.w1
        hidden = torch.nn.functional.silu(feats @ w1.T)
        return (hidden @ self.w2.T).permute(0, 3, 1, 2).float()  # [B, C, H, W]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents[:, :3].tanh() + 1) / 2  # [B, 3, S, S] in [0, 1]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.lora_a, self.lora_b]

    def save_trained(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        tensors = {"lora_a": self.lora_a.detach().cpu(), "lora_b": self.lora_b.detach().cpu()}
        save_file(tensors, str(Path(directory) / "toy_lora.safetensors"))

    def load_trained(self, directory: str) -> None:
        path = Path(directory) / "toy_lora.safetensors"
        if not path.is_file():
            raise UsageError(f"{directory} holds no toy_lora.safetensors.")
        tensors = load_file(str(path))
        with torch.no_grad():
            self.lora_a.copy_(tensors["lora_a"])
            self.lora_b.copy_(tensors["lora_b"])

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        self._delta_on = False
        try:
            yield
        finally:
            self._delta_on = True


@hookimpl
def register_policies(register):  # noqa: ANN001
    register(ToyFlowPolicy)


def toy_recipe(**trainer: object) -> dict[str, object]:
    """A raw recipe that trains this policy in a second or two: 3 ``dance-sde`` steps, one
    prompt of 2 samples per iteration, the ``jpeg-incompressibility`` reward, no sample grids;
    ``trainer`` sets or overrides ``[trainer]`` fields."""
    return {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "dance-sde", "num_steps": 3},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "trainer": {"prompts_per_iteration": 1, "group_size": 2, "sample_every": 0, **trainer},
    }

"""bitsandbytes' 8-bit AdamW on FSDP2's sharded parameters, with checkpointable states.

bitsandbytes' kernels take plain tensors: given an FSDP2 parameter (a DTensor) they would size
their quantization blocks by the global shape and write through the wrapper. So
:class:`AdamW8bitShards` runs one ``bitsandbytes.optim.AdamW8bit`` over each rank's local shards
(plain tensors that share the shards' storage) and keeps, towards torch, the look of
``torch.optim.AdamW`` over the real parameters: its ``param_groups`` hold them (what
``torch.distributed.checkpoint.state_dict.get_state_dict`` maps to parameter names), and its
``state_dict`` holds AdamW's ``step``, ``exp_avg`` and ``exp_avg_sq``, dequantized to fp32 and
shaped (and sharded) like the parameter. So the states save and load through dance's sharded
checkpoints at any number of processes, like AdamW's; ``load_state_dict`` quantizes them back.

Two consequences, said in docs/recipes.md: the quantization blocks (256 values) are cut from each
rank's shard, so runs at different numbers of processes agree only up to the 8-bit rounding of
the moments (not bit for bit, unlike ``adamw``); and a resume continues from the moments re-
quantized after a dequantize-quantize round trip, which may move a few values by one 8-bit code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from dance.training.sharding import local_tensor

# bitsandbytes' blockwise optimizer kernels quantize blocks of 256 consecutive values.
BLOCK = 256
HYPER = ("lr", "betas", "eps", "weight_decay")


class AdamW8bitShards(torch.optim.Optimizer):
    """``bitsandbytes.optim.AdamW8bit`` over the local shards of ``params`` (see the module
    docstring). ``min_8bit_size``: bitsandbytes' threshold (elements of a local shard) under
    which a tensor keeps fp32 states."""

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        min_8bit_size: int = 4096,
    ) -> None:
        import bitsandbytes as bnb

        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )
        # Plain tensors aliasing each parameter's local shard: bitsandbytes updates them in place.
        with torch.no_grad():
            self._shards = {p: local_tensor(p.detach()) for p in self._params()}
        self.inner = bnb.optim.AdamW8bit(
            [{"params": [self._shards[p] for p in g["params"]]} for g in self.param_groups],
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            min_8bit_size=min_8bit_size,
        )

    def _params(self) -> Iterator[torch.nn.Parameter]:
        for group in self.param_groups:
            yield from group["params"]

    def _shard(self, p: torch.nn.Parameter) -> torch.Tensor:
        """The alias of ``p``'s local shard, re-pointed at its current storage (FSDP2 or an
        offload may have moved it since the last step)."""
        shard = self._shards[p]
        current = local_tensor(p.detach())
        if shard.data_ptr() != current.data_ptr() or shard.device != current.device:
            shard.data = current
        return shard

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, inner in zip(self.param_groups, self.inner.param_groups, strict=True):
            inner.update({k: group[k] for k in HYPER})  # the schedule sets the outer lr
            for p in group["params"]:
                shard = self._shard(p)
                empty = shard.numel() == 0  # an uneven split can leave a rank nothing
                shard.grad = None if p.grad is None or empty else local_tensor(p.grad)
                if p.grad is not None:
                    # What torch's AdamW keeps, and what makes ``self.state`` non-empty (torch's
                    # get_state_dict takes an empty state for a fresh optimizer and steps it).
                    self.state[p]["step"] = self.state[p].get("step", 0) + 1
        self.inner.step()
        for p in self._params():
            shard = self._shards[p]
            shard.grad = None
            if shard.data_ptr() != local_tensor(p.detach()).data_ptr():
                # bitsandbytes made a non-contiguous shard contiguous: copy the update back.
                local_tensor(p.detach()).copy_(shard)
                self._shards[p] = local_tensor(p.detach())
        return loss

    # ---- state: torch AdamW's layout, dequantized --------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, dict[str, Any]] = {}
        groups = []
        index = 0
        for group in self.param_groups:
            numbers = list(range(index, index + len(group["params"])))
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": numbers})
            for p in group["params"]:
                if "step" in self.state.get(p, {}):  # .get: an empty entry would make
                    # torch's get_state_dict take this optimizer for one that has stepped
                    exp_avg, exp_avg_sq = self._moments(p)
                    state[index] = {
                        "step": torch.tensor(float(self.state[p]["step"])),
                        "exp_avg": _like(p, exp_avg),
                        "exp_avg_sq": _like(p, exp_avg_sq),
                    }
                index += 1
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"])
            for s, g in zip(saved_groups, self.param_groups, strict=True)
        ):
            raise ValueError("the saved optimizer state has other parameter groups than this one")
        ids = iter([i for saved in saved_groups for i in saved["params"]])
        for gindex, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            group.update({k: v for k, v in saved.items() if k != "params"})
            for pindex, p in enumerate(group["params"]):
                entry = state_dict["state"].get(next(ids))
                if entry is not None:
                    self.state[p]["step"] = int(entry["step"])
                    self._restore(p, gindex, pindex, entry)

    def _moments(self, p: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
        """AdamW's first and second moments of ``p``'s local shard, fp32, shard-shaped."""
        import bitsandbytes.functional as F

        shard = self._shards[p]
        inner = self.inner.state.get(shard, {})
        if not inner:  # an empty shard: nothing stepped
            zeros = torch.zeros(shard.shape, dtype=torch.float32, device=shard.device)
            return zeros, zeros.clone()
        moments = []
        for k in ("1", "2"):
            s = inner[f"state{k}"]
            if s.dtype == torch.uint8:
                _check_blocks(s, inner[f"absmax{k}"])
                s = F.dequantize_blockwise(
                    s, absmax=inner[f"absmax{k}"], code=inner[f"qmap{k}"], blocksize=BLOCK
                )
            moments.append(s.float().reshape(shard.shape).clone())
        return moments[0], moments[1]

    def _restore(self, p: torch.nn.Parameter, gindex: int, pindex: int, entry: dict) -> None:
        """Quantize a saved AdamW state of ``p`` into bitsandbytes' state of its shard."""
        import bitsandbytes.functional as F

        shard = self._shard(p)
        if shard.numel() == 0:
            return
        inner = self.inner.state[shard]
        if not inner:  # a fresh optimizer: let bitsandbytes lay out its state first
            self.inner.init_state(self.inner.param_groups[gindex], shard, gindex, pindex)
        inner["step"] = int(entry["step"])
        for k, name in (("1", "exp_avg"), ("2", "exp_avg_sq")):
            value = local_tensor(entry[name]).to(shard.device, torch.float32).reshape(-1)
            s = inner[f"state{k}"]
            if s.dtype == torch.uint8:
                codes, quant = F.quantize_blockwise(value, code=inner[f"qmap{k}"], blocksize=BLOCK)
                s.copy_(codes.view(s.shape))
                inner[f"absmax{k}"].copy_(quant.absmax)
            else:
                s.copy_(value.view(s.shape))


def _like(p: torch.nn.Parameter, local: torch.Tensor) -> torch.Tensor:
    """``local`` (shaped like ``p``'s shard) as a tensor sharded like ``p``."""
    if isinstance(p, DTensor):
        return DTensor.from_local(
            local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride(), run_check=False
        )
    return local


def _check_blocks(codes: torch.Tensor, absmax: torch.Tensor) -> None:
    if absmax.numel() != -(-codes.numel() // BLOCK):
        raise RuntimeError(
            f"bitsandbytes' 8-bit state has {absmax.numel()} blocks for {codes.numel()} values, "
            f"not blocks of {BLOCK}: this version of bitsandbytes is not supported"
        )

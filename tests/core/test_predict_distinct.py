"""The sampling loop computes the model once per distinct (latent, timestep, prompt) row."""

from __future__ import annotations

import torch

from dance.interfaces import Conditioning
from dance.sampling.generate import predict_distinct


class CountingPolicy:
    """A stand-in whose output depends on each row's latent, timestep and conditioning."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return x * 2 + t.view(-1, 1) + cond["text"].sum(1, keepdim=True)


def test_identical_rows_are_computed_once_and_the_result_is_unchanged():
    x = torch.randn(3, 4).repeat_interleave(4, 0)  # [12, 4] three groups of four equal rows
    x[11] += 1  # one sample left its group
    t = torch.full((12,), 0.5)
    cond = Conditioning(text=torch.randn(3, 2).repeat_interleave(4, 0))
    cond["text"][3] += 1  # same latent as its group, another prompt: a distinct row
    policy = CountingPolicy()
    with torch.no_grad():
        out = predict_distinct(policy, x, t, cond)
    assert policy.batch_sizes == [5]
    assert torch.equal(out, CountingPolicy().predict(x, t, cond))


def test_distinct_rows_and_gradients_take_the_plain_path():
    policy = CountingPolicy()
    x, t = torch.randn(4, 3), torch.zeros(4)
    cond = Conditioning(text=torch.zeros(4, 2))
    with torch.no_grad():
        predict_distinct(policy, x, t, cond)
    same = x[:1].expand(4, 3).clone().requires_grad_(True)
    predict_distinct(policy, same, t, cond).sum().backward()  # with gradients: never merged
    assert policy.batch_sizes == [4, 4]
    assert torch.equal(same.grad, torch.full((4, 3), 2.0))

"""FrozenOffload: a no-op on CPU; on CUDA, modules visit the GPU only inside on_device."""

import logging

import pytest
import torch

from dance.models.offload import FrozenOffload


def test_offloading_is_a_no_op_on_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="dance.models.offload"):
        offload = FrozenOffload(True, torch.device("cpu"))
    assert not offload.enabled and offload.home == torch.device("cpu")
    assert "no effect" in caplog.text
    module = torch.nn.Linear(2, 2)
    with offload.on_device(module):
        assert module.weight.device.type == "cpu"
    assert not FrozenOffload(False, torch.device("cpu")).enabled


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_modules_visit_the_gpu_only_inside_the_block():
    offload = FrozenOffload(True, torch.device("cuda"))
    module = torch.nn.Linear(2, 2).to(offload.home)
    assert offload.enabled and module.weight.device.type == "cpu"
    with offload.on_device(module):
        assert module.weight.device.type == "cuda"
        module(torch.ones(1, 2, device="cuda"))
    assert module.weight.device.type == "cpu"
    resident = FrozenOffload(False, torch.device("cuda"))
    assert resident.home.type == "cuda"

"""Bad input through the `dance` command: every case is one line naming the file or field, no
traceback, exit code 2 for a mistake the user fixes by editing the command and 1 for a fault in a
file (corrupt, truncated, not finite) or the machine (a full disk, a permission denied).

One table, one row per case, grouped by class: devices, files that are not UTF-8, directories
where a file is expected, corrupt or incomplete model files, output folders that cannot be
written, non-finite numbers, non-finite trained weights, misleading messages, downloads. The model
cases use the tiny FLUX checkpoint (copied and damaged per case); the others the toy policy.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dance.registry
from dance.errors import FileFault
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.cli_runner import run_cli

TOY_RUN = ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility", "--no-progress"]
TOY_SAMPLE = ["sample", "--policy", "toy-flow", "--prompt", "a cat"]
# `dance sample` on the tiny FLUX checkpoint: 32x32 images, 16 T5 tokens, LoRA rank 4.
FLUX_OPTIONS = [
    "policy.height=32",
    "policy.width=32",
    "policy.max_sequence_length=16",
    "policy.lora_rank=4",
    "policy.lora_alpha=8",
    "sampler.num_steps=2",
]
LATIN1 = "un caf\xe9 au lait\n".encode("latin-1")  # 0xe9 is not UTF-8 on its own


@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch):
    registry = load_registry(extra={"toy": toy_policy})
    monkeypatch.setattr(dance.registry, "_REGISTRY", registry)
    return registry


# --- building the inputs of each case --------------------------------------------------------


@dataclass
class Case:
    """``build(tmp, flux)`` writes what the case needs under ``tmp`` and returns the command
    line and the fragments the one error line must hold."""

    name: str
    build: Callable[[Path, Path], tuple[list[str], list[str]]]
    code: int


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _flux_copy(tmp: Path, flux: Path) -> Path:
    model = tmp / "model"
    shutil.copytree(flux, model)
    return model


def _flux_sample(model: Path, *extra: str) -> list[str]:
    args = ["sample", "--policy", "flux", "--model", str(model), "--prompt", "a cat"]
    return [*args, *FLUX_OPTIONS, "--output-dir", str(model.parent / "out"), *extra]


def _damaged(change: Callable[[Path], Path], code: int = 1) -> Callable[[Path, Path], tuple]:
    """A case on a copy of the tiny FLUX checkpoint that ``change`` damaged; the message must
    name the path ``change`` returns."""

    def build(tmp: Path, flux: Path) -> tuple[list[str], list[str]]:
        model = _flux_copy(tmp, flux)
        named = change(model)
        return _flux_sample(model), [str(named)]

    return build


def _truncate(rel: str) -> Callable[[Path], Path]:
    def change(model: Path) -> Path:
        path = model / rel
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path

    return change


def _random_bytes(rel: str) -> Callable[[Path], Path]:
    def change(model: Path) -> Path:
        path = model / rel
        path.write_bytes(os.urandom(path.stat().st_size))
        return path

    return change


def _not_json(rel: str) -> Callable[[Path], Path]:
    def change(model: Path) -> Path:
        (model / rel).write_text('{"_class_name": "Flux')
        return model / rel

    return change


def _emptied(rel: str) -> Callable[[Path], Path]:
    def change(model: Path) -> Path:
        for file in (model / rel).iterdir():
            file.unlink()
        return model / rel

    return change


def _edit_weights(rel: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable:
    def change(model: Path) -> Path:
        path = model / rel
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path))
        return path.parent

    return change


def _drop_first(tensors: dict[str, torch.Tensor]) -> None:
    tensors.pop(sorted(tensors)[0])


def _nan_first(tensors: dict[str, torch.Tensor]) -> None:
    tensors[sorted(tensors)[0]][...] = float("nan")


def _lora_case(damage: Callable[[Path], None]) -> Callable[[Path, Path], tuple]:
    """`dance sample --lora DIR` where DIR holds a LoRA of the tiny FLUX that ``damage``
    spoiled."""

    def build(tmp: Path, flux: Path) -> tuple[list[str], list[str]]:
        from dance.config import build as build_config
        from dance.interfaces import Runtime
        from dance_flux.policy import FluxConfig, FluxPolicy

        values = {"model": str(flux), "height": 32, "width": 32, "max_sequence_length": 16}
        config = build_config(FluxConfig, {**values, "lora_rank": 4, "lora_alpha": 8})
        lora = tmp / "lora"
        lora.mkdir()
        FluxPolicy(config, Runtime()).save_trained(str(lora))
        file = lora / "pytorch_lora_weights.safetensors"
        damage(file)
        return _flux_sample(flux, "--lora", str(lora)), [str(file)]

    return build


def _nan_lora(file: Path) -> None:
    tensors = load_file(str(file))
    _nan_first(tensors)
    save_file(tensors, str(file))


def _cut(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-100])


def _truncated_torch_file(path: Path) -> Path:
    torch.save({"state_dict": {"weight": torch.ones(64, 64)}}, path)
    path.write_bytes(path.read_bytes()[:-200])
    return path


def _resume_other_policy(tmp: Path, flux: Path) -> tuple[list[str], list[str]]:
    run = tmp / "run"
    _file(run, "config.toml", b'[policy]\nname = "flux"\nmodel = "bundled:demo"\n')
    args = ["run", "--resume", "--policy", "toy-flow", "--output-dir", str(run)]
    return args, ["made with policy 'flux'", "--policy"]


CASES = [
    # devices
    Case("run --device banana", lambda t, f: ([*TOY_RUN, "--device", "banana"], ["banana"]), 2),
    Case("sample --device banana", lambda t, f: ([*TOY_SAMPLE, "--device", "banana"], []), 2),
    Case(
        "run --device cuda:99",
        lambda t, f: ([*TOY_RUN, "--device", "cuda:99", "--output-dir", t], ["cuda:99"]),
        2,
    ),
    Case("sample --device cuda:99", lambda t, f: ([*TOY_SAMPLE, "--device", "cuda:99"], []), 2),
    *(
        []  # with a GPU, --device cuda is right
        if torch.cuda.is_available()
        else [
            Case(
                "run --device cuda without a GPU",
                lambda t, f: ([*TOY_RUN, "--device", "cuda"], ["--device cuda", "no usable CUDA"]),
                2,
            ),
            Case(
                "sample --device cuda without a GPU",
                lambda t, f: ([*TOY_SAMPLE, "--device", "cuda"], ["no usable CUDA"]),
                2,
            ),
        ]
    ),
    # files that are not UTF-8
    Case(
        "recipe not UTF-8",
        lambda t, f: (["run", "--recipe", _file(t, "r.toml", LATIN1)], ["r.toml", "UTF-8"]),
        2,
    ),
    Case(
        "trainer.prompts not UTF-8",
        lambda t, f: (
            [*TOY_RUN, f"trainer.prompts={_file(t, 'p.txt', LATIN1)}", "--output-dir", t / "o"],
            ["p.txt", "UTF-8"],
        ),
        2,
    ),
    Case(
        "evaluation.prompts not UTF-8",
        lambda t, f: (
            [*TOY_RUN, f"evaluation.prompts={_file(t, 'e.txt', LATIN1)}", "--output-dir", t],
            ["e.txt", "UTF-8"],
        ),
        2,
    ),
    Case(
        "--prompts-file not UTF-8",
        lambda t, f: (
            ["sample", "--policy", "toy-flow", "--prompts-file", _file(t, "p.txt", LATIN1)],
            ["p.txt", "UTF-8"],
        ),
        2,
    ),
    Case(
        "--prompts-file JSONL not UTF-8",
        lambda t, f: (
            ["sample", "--policy", "toy-flow", "--prompts-file", _file(t, "p.jsonl", LATIN1)],
            ["p.jsonl", "UTF-8"],
        ),
        2,
    ),
    # a directory where a file is expected
    Case("--recipe DIR", lambda t, f: (["run", "--recipe", t], [str(t), "is a directory"]), 2),
    Case(
        "trainer.prompts=DIR",
        lambda t, f: ([*TOY_RUN, f"trainer.prompts={t}"], [str(t), "is a directory"]),
        2,
    ),
    Case(
        "--prompts-file DIR",
        lambda t, f: (
            ["sample", "--policy", "toy-flow", "--prompts-file", t],
            [str(t), "is a directory"],
        ),
        2,
    ),
    Case(
        "JSONL image DIR",
        lambda t, f: (
            [
                "sample",
                "--policy",
                "toy-flow",
                "--prompts-file",
                _file(t, "p.jsonl", b'{"prompt": "a cat", "image": "."}\n'),
            ],
            ["p.jsonl:1", "is a directory"],
        ),
        2,
    ),
    # corrupt or incomplete model files
    Case(
        "truncated transformer",
        _damaged(_truncate("transformer/diffusion_pytorch_model.safetensors")),
        1,
    ),
    Case("truncated VAE", _damaged(_truncate("vae/diffusion_pytorch_model.safetensors")), 1),
    Case("random text encoder", _damaged(_random_bytes("text_encoder/model.safetensors")), 1),
    Case("random T5 encoder", _damaged(_random_bytes("text_encoder_2/model.safetensors")), 1),
    Case("model_index.json not JSON", _damaged(_not_json("model_index.json")), 1),
    Case("transformer config not JSON", _damaged(_not_json("transformer/config.json")), 1),
    Case("text encoder config not JSON", _damaged(_not_json("text_encoder/config.json")), 1),
    Case("tokenizer.json not JSON", _damaged(_not_json("tokenizer_2/tokenizer.json")), 1),
    Case("empty tokenizer_2/", _damaged(_emptied("tokenizer_2"), code=2), 2),
    Case("empty tokenizer/", _damaged(_emptied("tokenizer"), code=2), 2),
    Case(
        "text encoder missing a weight",
        _damaged(_edit_weights("text_encoder/model.safetensors", _drop_first)),
        1,
    ),
    Case(
        "NaN in the transformer",
        _damaged(_edit_weights("transformer/diffusion_pytorch_model.safetensors", _nan_first)),
        1,
    ),
    # reward weights (built after the toy policy; nothing large is made before the error)
    Case(
        "truncated CLIP-score safetensors",
        lambda t, f: (
            [*TOY_RUN, "--reward", "clip-score", "--output-dir", t / "run"]
            + [f"rewards.clip-score.checkpoint={_file(t, 'w.safetensors', b'{}' * 40)}"],
            ["w.safetensors", "corrupt or truncated"],
        ),
        1,
    ),
    Case(
        "truncated HPS checkpoint",
        lambda t, f: (
            [*TOY_RUN, "--reward", "hps", "--output-dir", t / "run"]
            + [f"rewards.hps.checkpoint={_truncated_torch_file(t / 'HPS.pt')}"],
            ["HPS.pt", "corrupt or truncated"],
        ),
        1,
    ),
    Case(
        "rewards.hps.checkpoint=DIR",
        lambda t, f: (
            [*TOY_RUN, "--reward", "hps", "--output-dir", t / "run"]
            + [f"rewards.hps.checkpoint={t}"],
            ["rewards.hps.checkpoint", "is a directory"],
        ),
        2,
    ),
    # trained weights
    Case("--lora with NaN", _lora_case(_nan_lora), 1),
    Case("--lora truncated", _lora_case(_cut), 1),
    # output folders, checked before any model loads (the model does not exist)
    Case(
        "run --output-dir FILE",
        lambda t, f: (
            ["run", "--policy", "flux", "--model", t / "none", "--reward", "jpeg-compressibility"]
            + ["--output-dir", _file(t, "out", b"")],
            ["--output-dir", "is a file"],
        ),
        2,
    ),
    Case(
        "run --output-dir under a file",
        lambda t, f: (
            [*TOY_RUN, "--output-dir", _file(t, "out", b"") / "sub"],
            ["--output-dir", "cannot be created"],
        ),
        2,
    ),
    Case(
        "sample --output-dir FILE",
        lambda t, f: (
            ["sample", "--policy", "flux", "--model", t / "none", "--prompt", "a cat"]
            + ["--output-dir", _file(t, "out", b"")],
            ["--output-dir", "is a file"],
        ),
        2,
    ),
    # numbers that are not finite
    Case(
        "learning_rate=inf",
        lambda t, f: ([*TOY_RUN, "trainer.learning_rate=inf"], ["trainer.learning_rate"]),
        2,
    ),
    Case(
        "learning_rate=nan",
        lambda t, f: ([*TOY_RUN, "trainer.learning_rate=nan"], ["trainer.learning_rate"]),
        2,
    ),
    Case(
        "adam_eps=-inf", lambda t, f: ([*TOY_RUN, "trainer.adam_eps=-inf"], ["trainer.adam_eps"]), 2
    ),
    Case("sampler.eta=inf", lambda t, f: ([*TOY_RUN, "sampler.eta=inf"], ["sampler.eta"]), 2),
    Case(
        "reward weight inf",
        lambda t, f: (
            ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility:inf"],
            ["rewards.jpeg-compressibility.weight"],
        ),
        2,
    ),
    Case(
        "policy.guidance=1e999",
        lambda t, f: (
            ["run", "--policy", "flux", "--model", f, "--reward", "jpeg-compressibility"]
            + ["policy.guidance=1e999"],
            ["policy.guidance"],
        ),
        2,
    ),
    Case("sample --fps inf", lambda t, f: ([*TOY_SAMPLE, "--fps", "inf"], ["--fps"]), 2),
    # optimizer and learning-rate schedule
    Case(
        "trainer.optimizer=sgd",
        lambda t, f: ([*TOY_RUN, "trainer.optimizer=sgd"], ["adamw8bit"]),
        2,
    ),
    Case(
        "trainer.lr_schedule=step",
        lambda t, f: ([*TOY_RUN, "trainer.lr_schedule=step"], ["trainer.lr_schedule", "cosine"]),
        2,
    ),
    Case(
        "constant schedule with warm-up",
        lambda t, f: (
            [*TOY_RUN, "trainer.lr_schedule=constant", "trainer.lr_warmup_steps=5"],
            ["trainer.lr_warmup_steps=5", "linear"],
        ),
        2,
    ),
    *(
        []  # with a GPU the 8-bit optimizer is allowed
        if torch.cuda.is_available()
        else [
            Case(
                "trainer.optimizer=adamw8bit without a GPU",
                lambda t, f: (
                    [*TOY_RUN, "trainer.optimizer=adamw8bit", "--output-dir", t],
                    ["trainer.optimizer=adamw8bit", "CUDA GPU"],
                ),
                2,
            )
        ]
    ),
    # misleading messages
    Case(
        "--model without --policy",
        lambda t, f: (
            ["run", "--model", f, "--reward", "jpeg-compressibility"],
            ["--model", "--policy"],
        ),
        2,
    ),
    Case("--resume --policy other", _resume_other_policy, 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line(
    case: Case,
    tmp_path: Path,
    tiny_flux: Path,
    toy_registry,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a default output folder lands here, not in the repository
    args, fragments = case.build(tmp_path, tiny_flux)
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_dir_is_one_line(
    tmp_path: Path, toy_registry, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, _, err = run_cli([*TOY_SAMPLE, "--output-dir", out], capsys)
    finally:
        out.chmod(0o700)
    assert code == 2 and "is not writable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["run", "sample"])
def test_unwritable_output_dir_is_found_before_the_model_loads(
    command: str, tmp_path: Path, toy_registry, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A read-only output folder (simulated: this test may run as root, who writes anywhere) is
    reported before the model loads: the model path does not even exist."""

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("dance.files.tempfile.mkstemp", read_only)
    args = [command, "--policy", "flux", "--model", tmp_path / "no-model"]
    args += ["--reward", "jpeg-compressibility"] if command == "run" else ["--prompt", "a cat"]
    code, _, err = run_cli([*args, "--output-dir", tmp_path / "out"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--output-dir" in err and "is not writable" in err and "Read-only" in err


def test_full_disk_is_one_line_exit_1(
    tmp_path: Path, toy_registry, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """An OS error while writing (here a full disk) names the path and the cause in words."""
    target = tmp_path / "out" / "0000-a-cat-seed0.png"

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr("dance.sampling.generate.save_media", full_disk)
    code, _, err = run_cli([*TOY_SAMPLE, "--output-dir", tmp_path / "out"], capsys)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "disk is full" in err and str(target) in err


def test_load_trained_refuses_nonfinite_full_finetune(tiny_flux: Path, tmp_path: Path) -> None:
    """Policy.load_trained (which --resume and `dance sample --lora` use) refuses NaN weights,
    naming the file, for a full fine-tune as for LoRA."""
    from dance.config import build
    from dance.interfaces import Runtime
    from dance_flux.policy import FluxConfig, FluxPolicy

    values = {"model": str(tiny_flux), "height": 32, "width": 32, "max_sequence_length": 16}
    policy = FluxPolicy(build(FluxConfig, {**values, "finetune": "full"}), Runtime())
    policy.save_trained(str(tmp_path))
    file = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(file))
    tensors[sorted(tensors)[-1]][0] = float("inf")
    save_file(tensors, str(file))
    with pytest.raises(FileFault, match="not finite") as exc:
        policy.load_trained(str(tmp_path))
    assert str(file) in str(exc.value)


# --- offline by construction -------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[object]:
    """Every socket connection attempt is recorded and refused; the Hugging Face cache is an
    empty folder, so nothing can come from it either."""
    import huggingface_hub.constants

    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return attempts


@pytest.mark.parametrize(
    "model, needs",
    [
        ("ViT-B-16-SigLIP", "timm/ViT-B-16-SigLIP"),  # Hugging Face tokenizer
        ("roberta-ViT-B-32", "roberta-base"),  # Hugging Face text tower and tokenizer
        ("hf-hub:timm/ViT-B-16-SigLIP", "Hugging Face Hub"),  # config from the Hub
    ],
)
def test_open_clip_name_that_needs_the_hub_is_one_line(
    model: str,
    needs: str,
    no_network: list[object],
    tmp_path: Path,
    toy_registry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [*TOY_RUN, "--reward", "clip-score", "--output-dir", tmp_path / "run"]
    args += [f"rewards.clip-score.model={model}", "trainer.iterations=1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "rewards.clip-score.model" in err and needs in err and "never downloads" in err
    assert no_network == []  # refused before any connection attempt


def test_importing_dance_switches_the_hub_offline(tmp_path: Path) -> None:
    """`import dance` sets the offline switches the user left unset, and keeps the ones set."""
    probe = (
        "import os, dance.cli.app, huggingface_hub.constants as c;"
        "print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'], c.HF_HUB_OFFLINE)"
    )
    env = {k: v for k, v in os.environ.items() if "OFFLINE" not in k}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1", "True"]
    env["TRANSFORMERS_OFFLINE"] = "0"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "0", "True"]

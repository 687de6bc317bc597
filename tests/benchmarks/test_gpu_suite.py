"""The GPU suite (benchmarks/gpu_suite.py): its --tiny run on CPU, the benchmark specs, and
random-weight loading through the policies' own from_pretrained calls."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dance
from dance.errors import UsageError
from dance.models.bench_spec import BenchmarkSpec, benchmark_specs
from dance.models.random_weights import (
    MARKER,
    ParametersOnMeta,
    random_weights,
    write_random_layout,
)
from dance.registry import get_registry, load_registry

SUITE = Path(__file__).parents[2] / "benchmarks" / "gpu_suite.py"
POLICIES = (
    "flux",
    "flux-kontext",
    "hunyuan-video",
    "qwen-image",
    "sd",
    "sd3",
    "skyreels-i2v",
    "wan-i2v",
    "wan-t2v",
)
UNITS = (
    "encode_s_per_prompt",
    "rollout_s_per_sample_step",
    "update_s_per_pair",
    "decode_s_per_sample",
    "reward_s_per_sample",
)


def _positive(value: object) -> bool:
    return isinstance(value, float) and value > 0


@pytest.mark.slow
def test_tiny_run_reports_every_figure_for_every_policy(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SUITE), "--tiny", "--out", str(out)]
    command += ["--peak-tflops", "0.1", "--repeats", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["tiny"] is True
    assert set(report["policies"]) == set(POLICIES)
    for name, r in report["policies"].items():
        assert r["status"] == "ok", (name, r["status"], r.get("attempts"))
        assert all(_positive(r["units"][k]) for k in UNITS), (name, r["units"])
        flops = r["flops"]
        assert flops["forward_per_sample"] > 0
        # The update's forward + backward counts more than its forward alone.
        assert flops["update_counted_per_pair"] > flops["forward_per_sample"]
        assert flops["update_mfu"] > 0 and flops["update_hfu"] > 0
        check = r["check"]  # the prediction check ran: a real iteration against the units
        assert check["samples"] == 2 and check["trained_pairs"] >= 2
        assert _positive(check["measured_s"]) and _positive(check["predicted_s"])
        assert check["error"] == pytest.approx(check["measured_s"] / check["predicted_s"] - 1)
        assert isinstance(check["within_tolerance"], bool)
        assert set(check["phases_s"]) >= {"rollout", "reward", "update"}
        assert check["excluded_samples"] == 0  # random weights gave finite scores
        assert r["memory"]["host_peak_rss_gib"] > 0 and r["memory"]["cuda"] is False
        full = r["computed_full_setting"]
        assert full["label"].startswith("computed")
        assert full["samples"] == r["setting"]["samples_per_gpu"]
        assert _positive(full["seconds_per_iteration"]) and _positive(
            full["samples_per_gpu_second"]
        )
        assert full["seconds_per_iteration"] > check["predicted_s"]  # the full setting is bigger
        versus = r["vs_diffusers"]
        assert _positive(versus["ratio"]), versus
        assert r["parameters"]["trainable"] > 0 and r["config_sources"]
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in POLICIES)


def _suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_too_small_skips_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "skip.json"
    code = _suite_module().main(
        ["--tiny", "--policies", "sd", "--budget-s", "1", "--out", str(out)]
    )
    assert code == 0
    status = json.loads(out.read_text())["policies"]["sd"]["status"]
    assert status.startswith("skipped: estimated") and "budget left" in status


def test_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    code = _suite_module().main(["--tiny", "--policies", "nope", "--out", str(tmp_path / "x.json")])
    assert code == 2


def test_every_policy_has_a_spec_with_published_network_sizes() -> None:
    """The shipped configs build the published networks (parameter counts from the model cards
    and the docs' tables): FLUX.1-dev 11.9 B, SD 1.5's UNet 859.5 M, HunyuanVideo 12.8 B."""
    import diffusers

    specs = benchmark_specs(get_registry())
    assert set(specs) >= set(POLICIES)
    expected = {"flux": 11.90e9, "sd": 859.5e6, "hunyuan-video": 12.82e9, "skyreels-i2v": 12.82e9}
    for name, billions in expected.items():
        spec = specs[name]
        assert set(spec.config_sources) == set(spec.configs)
        network = "unet" if name == "sd" else "transformer"
        config = spec.full_configs()[network]
        with ParametersOnMeta():
            model = getattr(diffusers, config["_class_name"]).from_config(config)
        count = sum(p.numel() for p in model.parameters())
        assert count == pytest.approx(billions, rel=2e-3), (name, count)
        assert all(p.is_meta for p in model.parameters())


def _meta_count(config: dict, buffers: bool = False) -> int:
    """Parameters (and, with ``buffers``, the persistent buffers a weights file stores) of the
    network a shipped config builds, constructed on the meta device."""
    import diffusers
    import transformers

    with ParametersOnMeta():
        if "_class_name" in config:
            model = getattr(diffusers, config["_class_name"]).from_config(config)
        else:
            cls = getattr(transformers, config["architectures"][0])
            model = cls(cls.config_class(**config))
    assert all(p.is_meta for p in model.parameters())
    tensors = model.state_dict().values() if buffers else model.parameters()
    return sum(t.numel() for t in tensors)


def test_later_policies_build_their_published_network_sizes() -> None:
    """SD3.5 Medium and Wan2.1 14B from their shipped configs, against the published sizes:
    SD3.5 Medium's MMDiT-X "2.5 B" (its file also stores the 384 x 384 position table, 226 M,
    which the published figure counts), Wan2.1-T2V-14B "14 B" (14.29 B counted), UMT5-XXL's
    encoder 5.7 B; Wan2.1-I2V-14B-480P adds the image branch (CLIP features, image keys and
    values in every block, 36 input channels) to the same 40 blocks."""
    specs = benchmark_specs(get_registry())
    sd3 = specs["sd3"].full_configs()
    assert _meta_count(sd3["transformer"], buffers=True) == pytest.approx(2.5e9, rel=0.015)
    assert _meta_count(sd3["text_encoder_3"]) == pytest.approx(4.76e9, rel=2e-3)  # T5-XXL
    t2v, i2v = specs["wan-t2v"].full_configs(), specs["wan-i2v"].full_configs()
    assert _meta_count(t2v["transformer"]) == pytest.approx(14.0e9, rel=0.025)
    assert _meta_count(t2v["text_encoder"]) == pytest.approx(5.7e9, rel=5e-3)
    assert _meta_count(i2v["transformer"]) > _meta_count(t2v["transformer"]) + 2e9
    assert i2v["image_encoder"]["hidden_size"] == 1280
    assert i2v["text_encoder"] == t2v["text_encoder"]
    for name in ("sd3", "wan-t2v", "wan-i2v"):
        assert set(specs[name].config_sources) == set(specs[name].configs)
    processor = specs["wan-i2v"].full_files["image_processor/preprocessor_config.json"]
    assert json.loads(processor.read_text())["crop_size"] == {"height": 224, "width": 224}


def test_kontext_and_qwen_image_build_their_published_network_sizes() -> None:
    """FLUX.1 Kontext [dev] reuses FLUX.1-dev's files (the same networks, 11.9 B); Qwen-Image's
    shipped configs are QwenImageTransformer2DModel's and AutoencoderKLQwenImage's defaults in
    diffusers (Qwen-Image's published files) and build the published sizes: the transformer
    "20 B" (20.43 B counted), Qwen2.5-VL-7B "8.29 B" (the text model and the vision tower), the
    VAE 126.9 M; the text encoder has the sizes activation_memory.py builds."""
    import inspect

    import diffusers

    specs = benchmark_specs(get_registry())
    kontext, flux = specs["flux-kontext"], specs["flux"]
    assert kontext.full_configs() == flux.full_configs() and kontext.needs_image
    assert set(kontext.config_sources) == set(kontext.configs)
    qwen = specs["qwen-image"].full_configs()
    assert set(specs["qwen-image"].config_sources) == set(specs["qwen-image"].configs)
    for network in ("transformer", "vae"):
        config = qwen[network]
        parameters = inspect.signature(getattr(diffusers, config["_class_name"])).parameters
        for key, value in config.items():
            if not key.startswith("_"):
                default = parameters[key].default
                assert value == (list(default) if isinstance(default, tuple) else default), key
    assert _meta_count(qwen["transformer"]) == pytest.approx(20.43e9, rel=1e-3)
    assert _meta_count(qwen["text_encoder"]) == pytest.approx(8.29e9, rel=1e-3)
    assert _meta_count(qwen["vae"]) == pytest.approx(126.9e6, rel=1e-3)
    script = Path(__file__).parents[2] / "plugins/qwen-image/scripts/activation_memory.py"
    module_spec = importlib.util.spec_from_file_location("qwen_activation_memory", script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    encoder = qwen["text_encoder"]
    for part, sizes in module.QWEN25_VL_7B.items():
        # tie_word_embeddings sits at the top of the published file, not in text_config.
        shipped = {k: encoder[part].get(k, encoder.get(k)) for k in sizes}
        assert shipped == sizes, part


def test_full_size_layouts_of_the_later_policies(tmp_path: Path) -> None:
    """The suite's full-size folders of sd3, wan-t2v, wan-i2v, flux-kontext and qwen-image: the
    tiny builder's layout with every shipped config in its folder (a folder the layout lacks
    would be an error), weights replaced by the marker, and Wan I2V's 224-pixel image processor
    copied over the tiny one."""
    from types import SimpleNamespace

    from transformers import AutoConfig, CLIPImageProcessor

    sys.path.insert(0, str(SUITE.parent))
    try:
        from gpu_suite_measure import write_model
    finally:
        sys.path.remove(str(SUITE.parent))
    specs = benchmark_specs(get_registry())
    ctx = SimpleNamespace(root=tmp_path, tiny=False)
    for name in ("sd3", "wan-t2v", "wan-i2v", "flux-kontext", "qwen-image"):
        spec = specs[name]
        folder = write_model(spec, ctx)
        for network, config in spec.full_configs().items():
            written = json.loads((folder / network / "config.json").read_text())
            assert {k: written[k] for k in config} == config, (name, network)
            assert (folder / network / MARKER).is_file()
            if "_class_name" not in written:  # a transformers config: it parses as its class
                assert (
                    AutoConfig.from_pretrained(folder / network).model_type == config["model_type"]
                )
    processor = CLIPImageProcessor.from_pretrained(tmp_path / "wan-i2v-model" / "image_processor")
    assert processor.crop_size == {"height": 224, "width": 224}


def test_random_weights_load_through_the_policy(tmp_path: Path) -> None:
    """A random-weights folder loads through the policy's own from_pretrained calls: configs as
    written, new random weights materialised on the device, buffers intact."""
    from dance_flux.tiny import build_tiny_flux

    plain = build_tiny_flux(tmp_path / "plain")
    folder = write_random_layout(build_tiny_flux(tmp_path / "random"))
    assert (folder / "transformer" / MARKER).is_file()
    assert not (folder / "tokenizer" / MARKER).exists()
    options = {"height": 32, "width": 32, "max_sequence_length": 16, "lora_rank": 4}
    runtime = dance.Runtime.auto("cpu")
    registry = get_registry()
    with random_weights("cpu", seed=1):
        policy = registry.create("policy", "flux", {**options, "model": str(folder)}, runtime)
        reference = registry.create("policy", "flux", {**options, "model": str(plain)}, runtime)
    ids = dict(policy.text_encoder.named_buffers())["embeddings.position_ids"]
    assert torch.equal(ids[0, :5], torch.arange(5))  # a real buffer survives to_empty
    a = dict(policy.transformer.named_parameters())
    b = dict(reference.transformer.named_parameters())
    assert a.keys() == b.keys()
    name = "transformer_blocks.0.attn.to_q.base_layer.weight"
    assert a[name].shape == b[name].shape and not torch.equal(a[name], b[name])
    assert a[name].std().item() == pytest.approx(a[name].shape[1] ** -0.5, rel=0.2)
    # The unmarked folder loaded its saved weights through the original from_pretrained.
    from safetensors.torch import load_file

    saved = load_file(str(plain / "transformer" / "diffusion_pytorch_model.safetensors"))
    base = name.replace(".base_layer", "")
    assert torch.equal(b[name].detach(), saved[base])


def test_two_specs_for_one_policy_are_an_error() -> None:
    class Plugin:
        def __init__(self, spec: BenchmarkSpec) -> None:
            self.spec = spec

        @dance.hookimpl
        def register_benchmark_specs(self, register) -> None:  # noqa: ANN001
            register(self.spec)

    spec = BenchmarkSpec(
        policy="flux",
        model="x",
        recipe="flux-hps",
        setting_source="",
        configs={},
        config_sources={},
        build_tiny=lambda path: path,
    )
    registry = load_registry(extra={"one": Plugin(spec), "two": Plugin(spec)})
    with pytest.raises(UsageError, match="both plugin"):
        benchmark_specs(registry)


def test_full_size_reward_files_load_through_the_rewards(tmp_path: Path) -> None:
    """The full-size reward path (random weights of an architecture written where the reward's
    loader reads them; VideoAlign's base and PickScore loaded through random_weights), with small
    architectures swapped in so that it runs on a CPU."""
    sys.path.insert(0, str(SUITE.parent))
    try:
        from gpu_suite_rewards import RewardFiles
    finally:
        sys.path.remove(str(SUITE.parent))
    from dance_clip_rewards.tiny import TINY_H14, register_tiny_open_clip

    register_tiny_open_clip(tmp_path / "open_clip_configs")
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"_source": "a test", "num_hidden_layers": 3}))
    files = RewardFiles(tmp_path, tiny=False, device=torch.device("cpu"))
    files.hps_model = files.clip_score_model = TINY_H14
    files.clip_score_pretrained = ""
    files.videoalign_base_sizes = sizes
    pick_sizes = tmp_path / "pickscore-sizes.json"
    pick_sizes.write_text(
        json.dumps({"_source": "a test", "text_config": {"num_hidden_layers": 3}})
    )
    files.pickscore_sizes, files.pickscore_pixels = pick_sizes, 28  # the tiny CLIP's 28 px
    names = ("hps", "clip-score", "videoalign", "pickscore")
    entries = files.prepare([{"name": name} for name in names])
    base = tmp_path / "videoalign" / "base"
    assert json.loads((base / "config.json").read_text())["num_hidden_layers"] == 3
    assert (base / MARKER).is_file()
    pickscore = Path(entries[3]["model"])
    text_config = json.loads((pickscore / "config.json").read_text())["text_config"]
    assert text_config["num_hidden_layers"] == 3 and text_config["hidden_size"] == 32
    assert (pickscore / MARKER).is_file()
    registry, runtime = get_registry(), dance.Runtime.auto("cpu")
    prompts = [dance.Prompt("a red circle")]
    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(0))
    with random_weights("cpu"):
        for entry in entries:
            options = {k: v for k, v in entry.items() if k != "name"}
            reward = registry.create("reward", entry["name"], options, runtime)
            scores = reward.score(video, prompts)
            assert all(torch.isfinite(v).all() for v in scores.values()), entry["name"]


def test_out_of_memory_tries_each_memory_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting that does not fit is reported with its figure, then tried with the frozen parts
    offloaded and with sharding's CPU offload (unavailable where this dance lacks the option)."""
    from dataclasses import fields
    from types import SimpleNamespace

    from dance.training.trainer_config import TrainerConfig

    suite = _suite_module()
    tried: list[dict] = []

    def runs_out(spec, ctx, extra):  # noqa: ANN001, ANN202
        tried.append(extra)
        if extra == {"policy.offload_frozen": True} and len(tried) > 3:
            return {"units": "measured"}
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(suite, "measure_policy", runs_out)
    registry = get_registry()
    specs = benchmark_specs(registry)
    ctx = SimpleNamespace(device=torch.device("cpu"), deadline=float("inf"), registry=registry)
    result = suite.run_policy(specs["flux"], ctx, 1.0)
    assert result["status"] == "out of memory in every configuration tried"
    first, offload, sharded = result["attempts"]
    assert first["options"] == {} and first["status"] == "out of memory"
    assert "20.00 GiB" in first["detail"]
    assert offload["options"] == {"policy.offload_frozen": True}
    assert sharded["options"]["trainer.fsdp_cpu_offload"] is True
    if "fsdp_cpu_offload" in {f.name for f in fields(TrainerConfig)}:
        assert sharded["status"] == "out of memory"
    else:
        assert sharded["status"].startswith("unavailable")
    # The second run fits once the frozen parts are offloaded: reported with that option.
    result = suite.run_policy(specs["flux"], ctx, 1.0)
    assert result["status"] == "ok" and result["options"] == {"policy.offload_frozen": True}
    assert [a["status"] for a in result["attempts"]] == ["out of memory", "ok"]
    # HunyuanVideo offloads its frozen parts by default: that option is not tried again.
    tried.clear()
    result = suite.run_policy(specs["hunyuan-video"], ctx, 1.0)
    sharding = [a["options"].get("trainer.fsdp_cpu_offload") for a in result["attempts"]]
    assert sharding == [None, True]


def test_computed_time_and_memory_of_the_published_setting() -> None:
    """The GPU branch of the computed memory, with made-up CUDA figures: the larger of the check's
    peak plus the extra trajectories and the start plus all trajectories plus the decoder grown
    linearly (1 GiB for one sample, 1.5 GiB for two: 0.5 GiB a sample)."""
    from types import SimpleNamespace

    sys.path.insert(0, str(SUITE.parent))
    try:
        from gpu_suite_measure import GIB, computed_full
    finally:
        sys.path.remove(str(SUITE.parent))
    latent = torch.zeros(1, 2**20)  # 4 MiB in fp32
    trainer = SimpleNamespace(policy=SimpleNamespace(initial_noise=lambda n, g: latent))
    setting = {
        "samples_per_gpu": 12,
        "trained_samples_per_gpu": 12,
        "trained_steps_per_sample": 9,
        "steps": 15,
        "prompts_per_gpu": 1,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 0,
        "old_log_probs": "recompute",
    }
    units = dict.fromkeys(UNITS, 0.01)
    check = {
        "samples": 2,
        "memory": {"max_allocated_gib": 30.0},
        "allocated_at_start_gib": 28.0,
    }
    decode = {"samples": 2, "peak_gib_1": 1.0, "peak_gib_n": 1.5}
    full = computed_full(setting, units, check, decode, trainer)
    trajectory = 4 * 2**20 * 16 / GIB  # 16 latents kept per sample
    assert full["trajectory_gib_per_sample"] == pytest.approx(trajectory)
    assert full["decode_peak_gib"] == pytest.approx(1.0 + 0.5 * 11)
    from_decode = 28.0 + 12 * trajectory + 6.5
    assert full["max_allocated_gib"] == pytest.approx(max(30.0 + 10 * trajectory, from_decode))
    assert full["seconds_per_iteration"] == pytest.approx(0.01 * (1 + 12 * 15 + 12 * 2 + 108))
    # Two optimizer steps (14 micro-batches of 4 pairs each): the 52 pairs after the first 56
    # need an extra forward for their old log-probs.
    setting["gradient_accumulation_steps"] = 14
    full = computed_full(setting, units, check, decode, trainer)
    assert full["recomputed_old_log_prob_pairs"] == 108 - 56
    assert full["seconds_per_iteration"] == pytest.approx(0.01 * (1 + 180 + 24 + 108 + 52))

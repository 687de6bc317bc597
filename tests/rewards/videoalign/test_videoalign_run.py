"""`dance run` with the videoalign reward on the tiny HunyuanVideo policy (when it is installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dance.cli.app import main
from dance.registry import reset_registry

pytest.importorskip(
    "dance_hunyuan_video", reason="the hunyuan-video policy plugin is not installed"
)

POLICY = [
    "policy.height=32",
    "policy.width=32",
    "policy.num_frames=5",
    "policy.max_sequence_length=16",
    "policy.lora_rank=4",
    "policy.lora_alpha=8",
]
TRAINER = [
    "trainer.iterations=1",
    "trainer.group_size=2",
    "trainer.prompts_per_iteration=1",
    "sampler.num_steps=2",
]


@pytest.fixture(scope="module")
def tiny_hunyuan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dance_hunyuan_video.tiny import build_tiny_hunyuan

    return build_tiny_hunyuan(tmp_path_factory.mktemp("hunyuan") / "tiny-hunyuan", seed=0)


def test_dance_run_scores_hunyuan_video_with_vq_and_mq(
    tiny_hunyuan: Path,
    tiny_videoalign: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dance_videoalign.reward as module

    loads = []
    original = module.load_reward_model
    monkeypatch.setattr(
        module, "load_reward_model", lambda *a, **k: loads.append(1) or original(*a, **k)
    )
    # The paper's HunyuanVideo setting is VQ alone; MQ at weight 0.5 checks that a component
    # is picked per weighted reward, and that both entries share one loaded model.
    reward_options = []
    for index in (0, 1):
        reward_options += [
            f"rewards.{index}.model={tiny_videoalign}",
            f"rewards.{index}.min_pixels=3136",
        ]
    run_dir = tmp_path / "run"
    reset_registry()
    with pytest.raises(SystemExit) as exc:
        main(
            ["run", "--policy", "hunyuan-video", "--model", str(tiny_hunyuan)]
            + ["--reward", "videoalign", "--reward", "videoalign.mq:0.5"]
            + ["--output-dir", str(run_dir), "--no-progress"]
            + POLICY
            + TRAINER
            + reward_options
        )
    assert exc.value.code == 0, capsys.readouterr().err
    assert len(loads) == 1
    (metrics,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in (
        "reward/videoalign/mean",
        "reward/videoalign.mq/mean",
        "component/videoalign.vq/mean",
        "component/videoalign.mq/mean",
        "component/videoalign.ta/mean",
    ):
        assert math.isfinite(metrics[key]), key
    # The default component is VQ; the second entry reports MQ.
    assert metrics["reward/videoalign/mean"] == metrics["component/videoalign.vq/mean"]
    assert metrics["reward/videoalign.mq/mean"] == metrics["component/videoalign.mq/mean"]
    assert metrics["optimizer_steps"] == 1

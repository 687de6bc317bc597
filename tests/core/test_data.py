"""Prompt files: plain text, and JSONL with conditioning images or videos; prompt sources."""

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

import dance.registry
from dance.cli.app import main
from dance.errors import UsageError
from dance.hookspecs import hookimpl
from dance.interfaces import Runtime
from dance.registry import load_registry
from dance.testing.toy_policy import ToyFlowPolicy
from dance.training.evaluation import EvaluationConfig, Evaluator
from dance.training.prompts import PromptEntry, PromptSource, load_prompts, read_prompts
from dance.video.mp4 import write_mp4


def write_png(path, height=6, width=5, seed=0, mode="RGB"):
    """A random picture; returns its pixels as ``[3, H, W]`` float in [0, 1]."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255


def smooth_video(frames=3, height=16, width=24):
    x = torch.linspace(0.1, 0.9, width).view(1, 1, 1, width).expand(1, frames, height, width)
    y = torch.linspace(0.9, 0.1, height).view(1, 1, height, 1).expand(1, frames, height, width)
    t = torch.linspace(0.2, 0.8, frames).view(1, frames, 1, 1).expand(1, frames, height, width)
    return torch.cat([x, y, t]).contiguous()


def write_jsonl(path, lines):
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text))
    return path


def test_text_files_are_unchanged(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text('a cat\n\n  a dog  \n{"prompt": "kept as text"}\n')
    entries = read_prompts(str(path))
    assert [e.text for e in entries] == ["a cat", "a dog", '{"prompt": "kept as text"}']
    assert all(e.source is None for e in entries)
    assert [p.text for p in load_prompts(str(path))] == [e.text for e in entries]
    assert all(p.image is None for p in load_prompts(str(path)))


def test_jsonl_with_images_and_videos(tmp_path):
    (tmp_path / "media").mkdir()
    cat = write_png(tmp_path / "media" / "cat.png")
    grey = write_png(tmp_path / "grey.png", seed=1, mode="L")
    palette = write_png(tmp_path / "palette.png", seed=2, mode="P")
    video = smooth_video()
    write_mp4(video, tmp_path / "media" / "clip.mp4")
    path = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "a cat", "image": "media/cat.png"},
            "",
            "   ",
            {"prompt": "text only"},
            {"prompt": "grey", "image": str(tmp_path / "grey.png")},  # absolute path
            {"prompt": "palette", "image": "palette.png"},
            {"prompt": "  a river  ", "video": "media/clip.mp4"},
        ],
    )
    entries = read_prompts(str(path))
    assert [e.text for e in entries] == ["a cat", "text only", "grey", "palette", "a river"]
    assert [e.source_kind for e in entries] == ["image", None, "image", "image", "video"]
    assert entries[0].origin == f"{path}:1" and entries[4].origin == f"{path}:7"
    prompts = load_prompts(str(path))
    assert prompts[1].image is None
    with_images = [prompts[0], prompts[2], prompts[3]]
    for prompt, expected in zip(with_images, [cat, grey, palette], strict=True):
        assert prompt.image.dtype == torch.float32 and prompt.image.shape == (3, 6, 5)
        assert torch.equal(prompt.image, expected)  # PNG is lossless
    first = prompts[4].image
    assert first.shape == (3, 16, 24)
    assert (first - video[:, 0]).abs().mean() < 0.02  # H.264 at high quality
    assert (first - video[:, 0]).abs().max() < 0.08


def test_jpeg_is_checked_cheaply_but_loaded_in_full(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "image": "a.jpg"}])
    (entry,) = read_prompts(str(path))
    assert entry.load().image.shape == (3, 300, 400)


def test_pkg_jsonl_resolves_paths_from_the_package_folder(tmp_path, monkeypatch):
    package = tmp_path / "site" / "dance_test_prompts"
    (package / "sets").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    expected = write_png(package / "sets" / "dog.png")
    write_jsonl(package / "sets" / "i2v.jsonl", [{"prompt": "a dog", "image": "dog.png"}])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (prompt,) = load_prompts("pkg:dance_test_prompts/sets/i2v.jsonl")
    assert prompt.text == "a dog" and torch.equal(prompt.image, expected)


def corrupt_files(folder):
    (folder / "notes.png").write_text("this is not a picture")
    png = folder / "whole.png"
    write_png(png, 64, 64)
    (folder / "truncated.png").write_bytes(png.read_bytes()[:200])
    (folder / "noise.mp4").write_bytes(bytes(range(256)) * 8)
    (folder / "empty.mp4").write_bytes(b"")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a cat", ', "invalid JSON"),
        ('["a cat"]', "expected a JSON object"),
        ('{"image": "whole.png"}', 'missing "prompt"'),
        ('{"prompt": "   "}', 'missing "prompt"'),
        ('{"prompt": 3}', 'missing "prompt"'),
        ('{"prompt": "a", "image": "whole.png", "video": "x.mp4"}', "not both"),
        ('{"prompt": "a", "imag": "whole.png"}', "Did you mean 'image'"),
        ('{"prompt": "a", "image": 5}', "must be a file path"),
        ('{"prompt": "a", "image": "missing.png"}', "does not exist"),
        ('{"prompt": "a", "video": "missing.mp4"}', "does not exist"),
        ('{"prompt": "a", "image": "notes.png"}', "cannot read image"),
        ('{"prompt": "a", "image": "truncated.png"}', "cannot read image"),
        ('{"prompt": "a", "video": "noise.mp4"}', "cannot read video"),
        ('{"prompt": "a", "video": "empty.mp4"}', "cannot read video"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, line, message):
    corrupt_files(tmp_path)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, "", line])
    with pytest.raises(UsageError) as exc:
        read_prompts(str(path))  # reported when the file is read, before any training
    text = str(exc.value)
    assert text.startswith(f"{path}:3: ") and message in text
    assert len(text.splitlines()) == 1


def test_empty_jsonl_and_a_file_removed_after_reading(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ["", "  "])
    with pytest.raises(UsageError, match="holds no prompts"):
        read_prompts(str(path))
    write_png(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "a", "image": "a.png"}])
    (entry,) = read_prompts(str(path))
    (tmp_path / "a.png").unlink()
    with pytest.raises(UsageError, match=r"q\.jsonl:1: image file .* does not exist"):
        entry.load()


def test_prompt_source_decodes_images_when_drawn(tmp_path):
    images = {name: write_png(tmp_path / f"{name}.png", seed=i) for i, name in enumerate("abc")}
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": name, "image": f"{name}.png"} for name in "abc"]
    )
    source = PromptSource(read_prompts(str(path)), seed=3)
    drawn = source.next(5)  # one epoch and two of the next
    assert sorted(p.text for p in drawn[:3]) == ["a", "b", "c"]
    for prompt in drawn:
        assert torch.equal(prompt.image, images[prompt.text])
    # Strings still work, and give the same order as entries with the same texts.
    plain = PromptSource(["a", "b", "c"], seed=3)
    assert [p.text for p in plain.next(5)] == [p.text for p in drawn]
    resumed = PromptSource(read_prompts(str(path)), seed=3)
    resumed.load_state_dict(source.state_dict())
    assert [p.text for p in resumed.next(4)] == [p.text for p in source.next(4)]


def test_evaluation_prompts_carry_their_images(tmp_path):
    expected = write_png(tmp_path / "a.png")
    lines = [{"prompt": "a", "image": "a.png"}, {"prompt": "b"}]
    path = write_jsonl(tmp_path / "eval.jsonl", lines)
    evaluator = Evaluator(
        EvaluationConfig(prompts=str(path), seeds=2),
        {},
        reward=None,
        registry=load_registry(),
        runtime=Runtime(),
    )
    assert [p.text for p in evaluator.prompts] == ["a", "a", "b", "b"]
    assert evaluator.seeds == [0, 1, 0, 1]
    assert torch.equal(evaluator.prompts[1].image, expected) and evaluator.prompts[2].image is None


class ImageRecordingPolicy(ToyFlowPolicy):
    """The toy policy, remembering the conditioning images it was asked to encode."""

    name = "toy-recording"
    seen: list = []

    def encode(self, prompts):
        type(self).seen.extend(p.image for p in prompts)
        return super().encode(prompts)


def test_dance_sample_passes_jsonl_images_to_the_policy(tmp_path, monkeypatch, capsys):
    plugin = types.SimpleNamespace(
        register_policies=hookimpl(lambda register: register(ImageRecordingPolicy))
    )
    monkeypatch.setattr(dance.registry, "_REGISTRY", load_registry(extra={"rec": plugin}))
    monkeypatch.setattr(ImageRecordingPolicy, "seen", [])
    expected = write_png(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "image": "a.png"}])
    args = ["sample", "--policy", "toy-recording", "--prompt", "text", "--prompts-file", str(path)]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--output-dir", str(tmp_path / "out")])
    assert exc.value.code == 0, capsys.readouterr().err
    seen = ImageRecordingPolicy.seen
    assert len(seen) == 2 and seen[0] is None and torch.equal(seen[1], expected)
    manifest = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert [m["prompt"] for m in manifest["images"]] == ["text", "a"]


def test_dance_sample_reports_a_bad_jsonl_line_in_one_line(tmp_path, monkeypatch, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "image": "gone.png"}])
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--policy", "flux", "--prompts-file", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"{path}:1: image file" in err and len(err.strip().splitlines()) == 1


def test_prompt_entry_without_source_loads_text_only():
    assert PromptEntry("x").load().image is None


def test_images_are_turned_upright_by_their_exif_orientation(tmp_path):
    """diffusers' load_image applies the EXIF orientation; so does a prompt file."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (4, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(array).save(tmp_path / "r.png", exif=exif)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "image": "r.png"}])
    (prompt,) = load_prompts(str(path))
    upright = torch.from_numpy(np.rot90(array, k=-1).copy()).permute(2, 0, 1).float() / 255
    assert prompt.image.shape == (3, 7, 4) and torch.equal(prompt.image, upright)
    from diffusers.utils import load_image

    reference = np.array(load_image(str(tmp_path / "r.png")))  # what diffusers pipelines are fed
    assert torch.equal(prompt.image, torch.from_numpy(reference).permute(2, 0, 1).float() / 255)

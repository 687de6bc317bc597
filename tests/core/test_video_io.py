"""MP4 writing and reading, dance sample's video output, and training/evaluation grids of videos."""

import json
import types

import av
import numpy as np
import pytest
import torch
from PIL import Image

import dance.registry
from dance.cli.app import main
from dance.hookspecs import hookimpl
from dance.interfaces import Prompt
from dance.registry import load_registry
from dance.reporting.plots import before_after_grid
from dance.reporting.run_log import frame_strips, media_to_grid, save_grid, video_grid
from dance.sampling.generate import save_media
from dance.testing.toy_policy import ToyFlowPolicy
from dance.video.mp4 import DEFAULT_FPS, read_first_frame, read_mp4, write_mp4


def smooth_video(frames: int = 6, height: int = 32, width: int = 48) -> torch.Tensor:
    """``[3, F, H, W]`` in [0, 1]: horizontal and vertical ramps, and a blue level per frame.

    Smooth content, so that H.264 at a high quality reproduces it closely."""
    x = torch.linspace(0.1, 0.9, width).view(1, 1, 1, width).expand(1, frames, height, width)
    y = torch.linspace(0.9, 0.1, height).view(1, 1, height, 1).expand(1, frames, height, width)
    t = torch.linspace(0.2, 0.8, frames).view(1, frames, 1, 1).expand(1, frames, height, width)
    return torch.cat([x, y, t]).contiguous()


def test_round_trip(tmp_path):
    video = smooth_video()
    path = write_mp4(video, tmp_path / "v.mp4", fps=24)
    back = read_mp4(path)
    assert back.frames.shape == (3, 6, 32, 48) and back.frames.dtype == torch.float32
    assert back.fps == 24
    error = (back.frames - video).abs()
    assert error.mean() < 0.02 and error.max() < 0.08  # 4:2:0 chroma and 8-bit YUV rounding
    # Frames stay in order: the blue level rises frame after frame.
    blue = back.frames[2].mean(dim=(1, 2))
    assert torch.all(blue[1:] > blue[:-1])
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert torch.allclose(read_first_frame(path), back.frames[:, 0])


def test_first_frame_agrees_with_decord(tmp_path):
    """An independent decoder gives the same first frame (64 wide: decord reads that size right)."""
    decord = pytest.importorskip("decord")
    path = write_mp4(smooth_video(3, 32, 64), tmp_path / "v.mp4")
    frame = decord.VideoReader(str(path), num_threads=1)[0].asnumpy()  # [H, W, 3] uint8
    expected = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
    assert torch.equal(read_first_frame(path), expected)


def test_odd_size_is_padded_with_the_last_row_and_column(tmp_path):
    video = smooth_video(2, 31, 33)
    back = read_mp4(write_mp4(video, tmp_path / "odd.mp4")).frames
    assert back.shape == (3, 2, 32, 34)
    assert (back[:, :, :31, :33] - video).abs().mean() < 0.02
    assert (back[:, :, 31] - back[:, :, 30]).abs().mean() < 0.02  # copy of the last row
    assert (back[..., 33] - back[..., 32]).abs().mean() < 0.02  # and of the last column


def test_uint8_grey_and_other_codecs(tmp_path):
    video = smooth_video(3)
    as_uint8 = (video * 255).round().to(torch.uint8)
    a = read_mp4(write_mp4(video, tmp_path / "f.mp4")).frames
    b = read_mp4(write_mp4(as_uint8, tmp_path / "u.mp4")).frames
    assert torch.equal(a, b)
    grey = read_mp4(write_mp4(video[:1], tmp_path / "g.mp4")).frames
    assert grey.shape == (3, 3, 32, 48)
    assert (grey - video[:1]).abs().mean() < 0.02
    back = read_mp4(write_mp4(video, tmp_path / "m.mp4", fps=24000 / 1001, codec="mpeg4"))
    assert back.fps == pytest.approx(23.976, abs=1e-3)
    assert (back.frames - video).abs().mean() < 0.03


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (torch.rand(3, 4, 4), "expected video frames"),
        (torch.rand(4, 2, 4, 4), "expected video frames"),
        (torch.rand(3, 0, 4, 4), "at least one frame"),
    ],
)
def test_bad_frames_are_refused(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        write_mp4(frames, tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    write_mp4(smooth_video(2), path)
    before = path.read_bytes()
    calls = {"n": 0}
    real = av.VideoFrame.from_ndarray

    def fail_on_third_frame(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_on_third_frame)
    with pytest.raises(RuntimeError, match="disk full"):
        write_mp4(smooth_video(5), path)
    assert calls["n"] == 3
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # and no temporary file is left
    monkeypatch.undo()
    with pytest.raises(ValueError, match="no-such-codec"):  # so does an unknown encoder
        write_mp4(smooth_video(2), tmp_path / "w.mp4", codec="no-such-codec")
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_save_media_writes_mp4_for_videos_and_png_for_images(tmp_path):
    videos = torch.stack([smooth_video(4, 16, 24), 1 - smooth_video(4, 16, 24)])  # [2, 3, 4, H, W]
    prompts = [Prompt("A red fox!"), Prompt("a cat")]
    paths = save_media(videos, prompts, [7, 8], tmp_path / "v", fps=12)
    assert [p.name for p in paths] == ["0000-a-red-fox-seed7.mp4", "0001-a-cat-seed8.mp4"]
    for path, video in zip(paths, videos, strict=True):
        back = read_mp4(path)
        assert back.frames.shape == (3, 4, 16, 24) and back.fps == 12
        assert (back.frames - video).abs().mean() < 0.03
    images = videos[:, :, 0]
    paths = save_media(images, prompts, [7, 8], tmp_path / "i")
    assert [p.suffix for p in paths] == [".png", ".png"]
    back = torch.from_numpy(np.array(Image.open(paths[1]))).permute(2, 0, 1).float() / 255
    assert (back - images[1]).abs().max() <= 0.5 / 255 + 1e-6  # PNG is lossless


def numbered_videos(batch: int = 3, frames: int = 5, size: int = 4) -> torch.Tensor:
    """``[B, 1, F, S, S]`` whose every pixel of frame f of video b is (10 * b + f) / 255."""
    values = torch.arange(batch).view(batch, 1) * 10 + torch.arange(frames).view(1, frames)
    return (values.float() / 255).view(batch, 1, frames, 1, 1).expand(-1, -1, -1, size, size)


def test_grid_helpers_on_videos():
    videos = numbered_videos()
    # The evaluation grid shows the middle frame, F // 2 = 2.
    grid = media_to_grid(videos, columns=3)  # [4, 12, 1]
    assert grid.shape == (4, 12, 1)
    assert grid[0, ::4, 0].tolist() == [2, 12, 22]
    # Strips: 3 frames out of 5 are 0, 2 and 4, side by side.
    strips = frame_strips(videos, 3)
    assert strips.shape == (3, 1, 4, 12)
    assert (strips[1, 0, 0, ::4] * 255).round().tolist() == [10, 12, 14]
    assert frame_strips(videos, 10).shape == (3, 1, 4, 20)  # never more frames than there are
    tiled = video_grid(videos, columns=2)  # 2 columns, 2 rows
    assert tiled.shape == (1, 5, 8, 8) and tiled.dtype == torch.uint8
    assert tiled[0, :, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert tiled[0, :, 0, 4].tolist() == [10, 11, 12, 13, 14]
    assert tiled[0, :, 4, 0].tolist() == [20, 21, 22, 23, 24]
    assert tiled[0, :, 4, 4].tolist() == [0] * 5  # the empty cell


def test_save_grid_on_videos_writes_a_strip_picture_and_a_tiled_mp4(tmp_path):
    videos = torch.stack([smooth_video(6, 16, 16), 1 - smooth_video(6, 16, 16)] * 3)  # B = 6
    written = save_grid(videos, tmp_path / "samples" / "iter-000003.png", columns=4)
    assert [p.name for p in written] == ["iter-000003.png", "iter-000003.mp4"]
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape == (6 * 16, 4 * 16, 3)  # one video per row, 4 frames each
    strip = torch.from_numpy(picture[16:32].copy()).permute(2, 0, 1).float() / 255
    assert (strip - frame_strips(videos[1:2], 4)[0]).abs().max() <= 0.5 / 255 + 1e-6
    back = read_mp4(written[1])
    assert back.frames.shape == (3, 6, 2 * 16, 4 * 16) and back.fps == DEFAULT_FPS
    assert (back.frames[:, :, :16, 16:32] - videos[1]).abs().mean() < 0.03
    # Images are unchanged: one PNG grid.
    assert save_grid(videos[:, :, 0], tmp_path / "img.png") == [tmp_path / "img.png"]
    assert np.asarray(Image.open(tmp_path / "img.png")).shape == (2 * 16, 4 * 16, 3)


def test_before_after_grid_on_videos(tmp_path):
    before, after = numbered_videos(), numbered_videos().flip(0)
    before_after_grid(before, after, tmp_path / "eval_grid.png", columns=8)
    picture = np.asarray(Image.open(tmp_path / "eval_grid.png"))
    assert picture.shape[1] == 3 * 4 and picture.shape[2] == 3
    assert picture[18, 0:12:4, 0].tolist() == [2, 12, 22]  # middle frames of "before"
    assert picture[-1, 0:12:4, 0].tolist() == [22, 12, 2]  # and of "after", below


class ToyVideoPolicy(ToyFlowPolicy):
    """The toy flow policy with a decoder that makes a 3-frame video of each latent."""

    name = "toy-video"
    modality = "video"

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        image = super().decode(latents)  # [B, 3, S, S]
        return torch.stack([image, image.flip(-1), 1 - image], dim=2)  # [B, 3, 3, S, S]


toy_video_plugin = types.SimpleNamespace(
    register_policies=hookimpl(lambda register: register(ToyVideoPolicy))
)


def test_dance_sample_writes_mp4_for_a_video_policy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        dance.registry, "_REGISTRY", load_registry(extra={"toy-video": toy_video_plugin})
    )
    args = ["sample", "--policy", "toy-video", "--prompt", "a cat", "--num-per-prompt", "2"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--fps", "8", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert "wrote 2 videos" in out
    manifest = json.loads((tmp_path / "samples.json").read_text())
    assert "images" not in manifest
    assert [v["file"] for v in manifest["videos"]] == [
        "0000-a-cat-seed0.mp4",
        "0001-a-cat-seed1.mp4",
    ]
    back = read_mp4(tmp_path / "0000-a-cat-seed0.mp4")
    assert back.frames.shape == (3, 3, 8, 8) and back.fps == 8

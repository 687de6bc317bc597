"""Shell commands of README.md and docs/, found and made runnable on a CPU with tiny models.

Which blocks are commands. A fenced block is a shell block when its info string is ``bash``,
``sh`` or ``shell``, or when it has none and every command in it starts with a known program
(``PROGRAMS``): an untagged block of output, formulas or file listings is left alone. Lines ending
in ``\\`` continue on the next; ``#`` starts a comment. A block right after the line
``<!-- no-test: REASON -->`` is not run (for what cannot run here: a download, a GPU, a cluster).

How a command is made runnable (``prepare``), changing only what the docs cannot hold fixed:

- real checkpoints (``--model /models/FLUX.1-dev`` or a Hugging Face id) become a tiny random
  checkpoint of the same policy in the same diffusers layout (``TINY_MODELS``), and every reward
  that needs weights is pointed at a tiny one of the same architecture (``Tiny.reward_options``);
- ``dance run`` and ``dance sample`` get settings that make them short (one iteration, 32x32
  pixels, ...): appended overrides, each only when the command does not set that field itself;
- ``/tmp/...`` paths go to a private folder; ``python SCRIPT.py`` and ``pip install PATH`` read
  their files from the repository, while every output stays in the page's working folder;
- ``pip install`` installs into that folder (``--target``), never into the test environment;
- scripts that take minutes get the arguments in ``QUICK_ARGS``;
- ``torchrun`` runs two processes (gloo on a CPU).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("dance", "python", "python3", "pip", "torchrun", "hf", "huggingface-cli")
SHELL_TAGS = ("bash", "sh", "shell")
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.+?)\s*-->")

# Real model names in the docs -> the tiny policy built in their place.
TINY_MODELS = {
    "/models/FLUX.1-dev": "flux",
    "/data/FLUX.1-dev": "flux",
    "black-forest-labs/FLUX.1-dev": "flux",
    "/models/FLUX.1-schnell": "flux",
    "black-forest-labs/FLUX.1-schnell": "flux",
    "/models/stable-diffusion-v1-4": "sd",
    "CompVis/stable-diffusion-v1-4": "sd",
    "/models/HunyuanVideo": "hunyuan-video",
    "hunyuanvideo-community/HunyuanVideo": "hunyuan-video",
    "/models/SkyReels-V1": "skyreels-i2v",
    "Skywork/SkyReels-V1-Hunyuan-I2V": "skyreels-i2v",
}

# Small settings of a policy, appended for each field its config has and the command leaves.
SMALL_POLICY = {
    "height": "32",
    "width": "32",
    "num_frames": "5",
    "max_sequence_length": "16",
    "lora_rank": "4",
    "lora_alpha": "4",
}
SHORT_TRAINER = {
    "trainer.iterations": "1",
    "trainer.prompts_per_iteration": "1",
    "trainer.group_size": "2",
    "trainer.sample_every": "1",
    "sampler.num_steps": "4",
}
SHORT_EVALUATION = {"evaluation.seeds": "1", "evaluation.num_steps": "4"}

# Scripts that run for minutes as documented: arguments appended to make them quick.
QUICK_ARGS = {
    "benchmarks/bench_grpo.py": ["--repeats", "1", "--batch", "4", "--steps", "4"],
    "benchmarks/bench_best_of_n.py": ["--repeats", "1", "--group", "4", "--steps", "4"],
    "benchmarks/best_of_n_curve.py": ["--candidates", "2", "--num-steps", "4"],
    "benchmarks/demo_speed.py": ["--iterations", "1"],
    # tests/benchmarks runs the whole tiny suite; here one policy shows the command works.
    "benchmarks/gpu_suite.py": ["--policies", "sd", "--repeats", "1"],
    "benchmarks/bench_distributed.py": ["--repeats", "1"],
    "plugins/flux/scripts/pretrain_shapes.py": [
        "--images", "64", "--vae-steps", "2", "--steps", "2", "--batch", "8", "--eval-seeds", "1",
    ],
}  # fmt: skip


@dataclass
class DocCommand:
    page: str  # path relative to the repository
    line: int  # 1-based line of the command's first line
    text: str  # the command as written, continuation lines joined
    skip: str | None = None  # the no-test reason of its block

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def extract(page: Path, name: str | None = None) -> list[DocCommand]:
    """The shell commands of one Markdown page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    name = name or page.relative_to(ROOT).as_posix()
    out: list[DocCommand] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        marker, tag = fence.group(2), fence.group(3).lower()
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(marker)),
            len(lines),
        )
        prior = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = NO_TEST.search(prior)
        commands = _commands(lines[i + 1 : end], i + 2)
        is_shell = tag in SHELL_TAGS or (
            tag == "" and commands and all(_program(c) in PROGRAMS for _, c in commands)
        )
        if is_shell:
            for number, text in commands:
                out.append(DocCommand(name, number, text, skip.group(1) if skip else None))
        i = end + 1
    return out


def _commands(block: list[str], first_line: int) -> list[tuple[int, str]]:
    """(line number, command) pairs: continuations joined, comments and blank lines dropped."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = first_line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, (pending + line).strip()))
        pending = ""
    if pending:
        out.append((start, pending.strip()))
    return out


def _program(command: str) -> str:
    return command.split(maxsplit=1)[0] if command else ""


def split(command: str) -> list[str]:
    """Words of a command, without its trailing ``# comment``."""
    return shlex.split(command, comments=True)


@dataclass
class Prepared:
    argv: list[str]
    needs_open_clip: bool = False  # tiny open_clip architectures must be registered
    site: list[str] = field(default_factory=list)  # extra PYTHONPATH entries
    env: dict[str, str] = field(default_factory=dict)  # the command's own NAME=value prefix


class Tiny:
    """Tiny checkpoints, each built the first time a command needs it (once per session)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tmp = folder / "tmp"  # where the docs' /tmp/... paths go
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._built: dict[str, Path] = {}

    def policy(self, name: str) -> Path:
        if name not in self._built:
            path = self.folder / f"tiny-{name}"
            if name == "flux":
                from dance_flux.tiny import build_tiny_flux

                build_tiny_flux(path, seed=0)
            elif name == "sd":
                from dance_sd.tiny import build_tiny_sd

                build_tiny_sd(path, seed=0)
            else:
                from dance_hunyuan_video.tiny import build_tiny_hunyuan

                build_tiny_hunyuan(path, seed=0, i2v=name == "skyreels-i2v")
            self._built[name] = path
        return self._built[name]

    def open_clip_configs(self) -> Path:
        import json

        from dance_clip_rewards.tiny import TINY_CONFIGS

        folder = self.folder / "open_clip_configs"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for name, cfg in TINY_CONFIGS.items():
                (folder / f"{name}.json").write_text(json.dumps(cfg))
            # Registered in every Python process the commands start, as a user's own
            # open_clip config folder would be.
            site = self.folder / "site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(
                f"import open_clip\nopen_clip.add_model_config({str(folder)!r})\n"
            )
        return self.folder / "site"

    def _file(self, key: str, build) -> Path:  # noqa: ANN001 - a builder callable
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def reward_options(self, name: str) -> dict[str, str] | None:
        """Options pointing reward ``name`` at tiny weights; None when it needs none."""
        if name in ("hps", "clip-score", "pickscore", "laion-aesthetic"):
            import open_clip

            from dance_clip_rewards import tiny

            open_clip.add_model_config(self.open_clip_configs().parent / "open_clip_configs")
            hps = self._file("hps", lambda: tiny.write_hps_checkpoint(self.folder / "hps.pt"))
            if name == "hps":
                return {"checkpoint": str(hps), "model": tiny.TINY_H14}
            if name == "clip-score":
                return {"checkpoint": str(hps), "model": tiny.TINY_H14, "pretrained": ""}
            if name == "pickscore":
                model, processor = (
                    self._file(
                        "pickscore",
                        lambda: tiny.write_pickscore(self.folder / "pick", self.folder / "pick-p")[
                            0
                        ],
                    ),
                    self.folder / "pick-p",
                )
                return {"model": str(model), "processor": str(processor)}
            l14 = self._file(
                "l14",
                lambda: tiny.write_open_clip_weights(
                    self.folder / "l14.safetensors", tiny.TINY_L14
                ),
            )
            head = self._file(
                "head", lambda: tiny.write_aesthetic_head(self.folder / "head.pth", 24)
            )
            return {
                "head": str(head),
                "clip_checkpoint": str(l14),
                "clip_model": tiny.TINY_L14,
                "clip_pretrained": "",
            }
        if name == "imagereward":
            from dance_imagereward.tiny import build_tiny_imagereward

            path = self._file("imagereward", lambda: build_tiny_imagereward(self.folder / "ir"))
            return {"model": str(path), "tokenizer": str(path / "tokenizer")}
        if name == "videoalign":
            from dance_videoalign.tiny import build_tiny_videoalign

            path = self._file("videoalign", lambda: build_tiny_videoalign(self.folder / "va"))
            return {"model": str(path), "base_model": str(path.parent / "base")}
        return None


def _sets(words: list[str], key: str) -> bool:
    return any(w.startswith(key + "=") for w in words)


def _option(words: list[str], name: str) -> list[str]:
    """Values of ``--name VALUE`` / ``--name=VALUE``."""
    values = []
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            values.append(words[i + 1])
        elif w.startswith(name + "="):
            values.append(w.split("=", 1)[1])
    return values


def _dance_args(words: list[str], sub: str, tiny: Tiny, workdir: Path) -> tuple[list[str], bool]:
    """Overrides that shorten ``dance run`` / ``dance sample`` words (after the subcommand)."""
    import dataclasses

    from dance.cli.recipe import read_recipe
    from dance.registry import get_registry

    extra: list[str] = []
    needs_open_clip = False
    resume = "--resume" in words
    if sub == "sample" and _option(words, "--lora"):
        return extra, needs_open_clip  # the trained run's own (already small) settings
    recipe = _option(words, "--recipe")
    policy = _option(words, "--policy")
    if recipe:
        path = Path(recipe[-1])
        raw = read_recipe(str(workdir / path) if path.suffix == ".toml" else recipe[-1])
    else:
        raw = {}
    if sub == "run" and not recipe and not policy and not resume:
        raw = read_recipe("demo")
    name = policy[-1] if policy else raw.get("policy", {}).get("name")
    registry = get_registry()
    if name and not resume:
        fields = {f.name for f in dataclasses.fields(registry.get("policy", name).config_class)}
        for key, value in SMALL_POLICY.items():
            if key in fields and not _sets(words, f"policy.{key}"):
                extra.append(f"policy.{key}={value}")
    if sub != "run" or resume:
        return extra, needs_open_clip
    for key, value in SHORT_TRAINER.items():
        if not _sets(words, key):
            extra.append(f"{key}={value}")
    if raw.get("evaluation", {}).get("prompts"):
        extra += [f"{k}={v}" for k, v in SHORT_EVALUATION.items() if not _sets(words, k)]
    rewards = [re.split(r"[.:]", r)[0] for r in _option(words, "--reward")] or [
        r["name"] for r in raw.get("rewards", [])
    ]
    for index, reward in enumerate(rewards):
        options = tiny.reward_options(reward)
        if options is not None:
            needs_open_clip |= "model" in options and options["model"].startswith("dance-tiny")
            needs_open_clip |= options.get("clip_model", "").startswith("dance-tiny")
            extra += [f"rewards.{index}.{k}={v}" for k, v in options.items()]
    return extra, needs_open_clip


def prepare(command: DocCommand, tiny: Tiny, workdir: Path) -> Prepared:
    """The words to run for ``command`` in ``workdir`` (see the module docstring)."""
    words = [_tmp_path(w, tiny) for w in split(command.text)]
    words = [_tiny_model(w, tiny) for w in words]
    env = {}  # leading NAME=value words, as a shell reads them
    while len(words) > 1 and re.match(r"[A-Za-z_]\w*=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    program = words[0]
    prepared = Prepared(words, env=env)
    if program in ("python", "python3"):
        words[0] = sys.executable
        if len(words) > 1 and words[1] == "-m" and words[2:3] == ["pytest"]:
            raise ValueError(f"{command.where()}: runs the test suite; mark it no-test")
        if len(words) > 1 and words[1].endswith(".py") and (ROOT / words[1]).is_file():
            script = words[1]
            words[1] = str(ROOT / script)
            words += QUICK_ARGS.get(script, [])
    elif program == "pip":
        words[:1] = [sys.executable, "-m", "pip"]
        if words[3:4] == ["install"] or "install" in words:
            site = workdir / "site"
            paths = [w for w in words if not w.startswith("-") and (ROOT / w).exists()]
            words = [str(ROOT / w) if w in paths else w for w in words]
            words += ["--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
            words += ["--target", str(site)]
            prepared.site.append(str(site))
    elif program == "torchrun":
        # torch's launcher as a module: the same program, found whatever PATH holds.
        words = [sys.executable, "-m", "torch.distributed.run"] + _two_processes(words)[1:]
        if "dance.cli" in words:
            at = words.index("dance.cli") + 1
            extra, prepared.needs_open_clip = _dance_args(words[at + 1 :], words[at], tiny, workdir)
            words += extra + ["--no-progress"]
    elif program == "dance" and len(words) > 1 and words[1] in ("run", "sample"):
        extra, prepared.needs_open_clip = _dance_args(words[2:], words[1], tiny, workdir)
        words += extra + (["--no-progress"] if words[1] == "run" else [])
    prepared.argv = words
    return prepared


def _two_processes(words: list[str]) -> list[str]:
    out = []
    for i, w in enumerate(words):
        if i and words[i - 1] in ("--nproc-per-node", "--nproc_per_node"):
            w = "2"
        elif re.match(r"--nproc[-_]per[-_]node=", w):
            w = w.split("=")[0] + "=2"
        out.append(w)
    return out


def _tmp_path(word: str, tiny: Tiny) -> str:
    return re.sub(r"(^|=)/tmp/", lambda m: f"{m.group(1)}{tiny.tmp}/", word)


def _tiny_model(word: str, tiny: Tiny) -> str:
    key, eq, value = word.rpartition("=") if "=" in word else ("", "", word)
    if value in TINY_MODELS:
        return f"{key}{eq}{tiny.policy(TINY_MODELS[value])}"
    return word

"""Find and load the released VideoAlign (VideoReward) checkpoint.

Released layout (``KwaiVGI/VideoReward`` on the Hugging Face hub)::

    VideoReward/
        model_config.json          data_config, model_config, peft_lora_config, inference_config
        checkpoint-11352/model.pth the reward model's whole state dict (torch.save)

and the base model it names in ``model_config.model_name_or_path`` (``Qwen/Qwen2-VL-2B-Instruct``):
config.json, the weights, the tokenizer, preprocessor_config.json and the chat template.

The model is rebuilt as VideoAlign's ``train_reward.create_model_and_processor`` builds it and then
filled as its ``utils.load_model_from_checkpoint`` fills it:

* the base Qwen2-VL from its folder, with a bias-free ``rm_head = Linear(hidden, output_dim)``;
* the tokenizer of the base, padding on the right, plus the three reward tokens as special tokens,
  and the token embeddings resized to the new tokenizer length (151660 for the 2B model);
* a peft LoRA (``r``, ``alpha``, dropout, rsLoRA from ``peft_lora_config``) on every ``Linear`` and
  ``Embedding`` whose name contains none of ``lora_namespan_exclude`` (``lm_head``, ``rm_head``,
  ``embed_tokens``, ``visual``): the language model's attention and MLP projections;
* the latest ``checkpoint-*/model.pth`` (or ``checkpoint_step``) loaded strictly over all of it.

``model.pth`` names keys as transformers 4.45 did (``base_model.model.visual.*`` for the vision
tower, ``base_model.model.model.*`` for the language model); transformers 5 nests both under
``model`` (``model.visual``, ``model.language_model``), so keys are renamed on the way in.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dance.errors import ModelLayoutError
from dance.files import check_finite, read_json, read_text, torch_load_error
from dance.models.model_layout import load_pretrained
from dance.models.model_layout import load_tokenizer as load_tokenizer_files
from dance_videoalign.frames import VisionSpec
from dance_videoalign.prompt import REWARD_TOKENS, TEMPLATE_TYPE

REWARD_EXPECTED = (
    "expected the VideoReward layout: model_config.json and checkpoint-<step>/model.pth "
    "(KwaiVGI/VideoReward)"
)
BASE_EXPECTED = (
    "expected a Qwen2-VL-Instruct checkpoint: config.json, *.safetensors, tokenizer files, "
    "preprocessor_config.json (Qwen/Qwen2-VL-2B-Instruct)"
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# transformers 4.45 (VideoAlign's) module paths -> transformers 5 module paths, under peft's
# ``base_model.model.`` prefix.
_PEFT_PREFIX = "base_model.model."
_LEGACY_TO_NEW = (("visual.", "model.visual."), ("model.", "model.language_model."))


def resolve_dir(name: str, what: str, expected: str, cache_dir: str | None = None) -> Path:
    """A local directory, or the newest cached snapshot of a Hugging Face repo id (no network)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLayoutError(f"{what} {path} is a file, not a directory; {expected}")
    if not _REPO_ID.match(name) or name.startswith((".", "~")):
        raise ModelLayoutError(f"{what} directory {path} does not exist; {expected}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # every failure here means "not in the local cache"
        raise ModelLayoutError(
            f"{what} '{name}' is not a local directory and not in the Hugging Face cache "
            f"({type(exc).__name__}); download it first (`hf download {name}`) or pass a local "
            "path"
        ) from None


def read_model_config(reward_dir: Path) -> dict[str, Any]:
    """model_config.json of a VideoReward folder, checked for what this plugin reproduces."""
    path = reward_dir / "model_config.json"
    if not path.is_file():
        raise ModelLayoutError(
            f"reward model directory {reward_dir} has no model_config.json; {REWARD_EXPECTED}"
        )
    config = read_json(path, "VideoAlign model config")
    if not isinstance(config, dict):
        raise ModelLayoutError(f"{path} is not a JSON object; {REWARD_EXPECTED}")
    for section in ("data_config", "model_config", "peft_lora_config"):
        if not isinstance(config.get(section), dict):
            raise ModelLayoutError(f"{path} has no '{section}' section; {REWARD_EXPECTED}")
    data, model = config["data_config"], config["model_config"]
    wanted = {
        ("data_config", "prompt_template_type"): (data.get("prompt_template_type"), TEMPLATE_TYPE),
        ("data_config", "sample_type"): (data.get("sample_type", "uniform"), "uniform"),
        ("model_config", "use_special_tokens"): (model.get("use_special_tokens"), True),
        ("model_config", "reward_token"): (model.get("reward_token"), "special"),
    }
    for (section, key), (got, want) in wanted.items():
        if got != want:
            raise ModelLayoutError(
                f"{path}: {section}.{key} is {got!r}; this plugin reproduces the released "
                f"VideoReward, which has {want!r}"
            )
    if model.get("output_dim") not in (1, 3):
        raise ModelLayoutError(
            f"{path}: model_config.output_dim must be 1 (one head read at the three reward "
            f"tokens, as released) or 3 (one head per token), got {model.get('output_dim')!r}"
        )
    return config


def find_weights(reward_dir: Path, step: int | None) -> Path:
    """``checkpoint-<step>/model.pth``: the given step, else the highest one (as VideoAlign)."""
    steps = {}
    for folder in reward_dir.glob("checkpoint-*"):
        suffix = folder.name.split("-", 1)[1]
        if folder.is_dir() and suffix.isdigit():
            steps[int(suffix)] = folder
    if not steps:
        raise ModelLayoutError(
            f"reward model directory {reward_dir} has no checkpoint-<step>/ "
            f"folder; {REWARD_EXPECTED}"
        )
    if step is not None and step not in steps:
        raise ModelLayoutError(
            f"reward model directory {reward_dir} has no checkpoint-{step}/ (steps: "
            f"{', '.join(str(s) for s in sorted(steps))})"
        )
    folder = steps[step if step is not None else max(steps)]
    weights = folder / "model.pth"
    if not weights.is_file():
        split = (folder / "adapter_model.safetensors").is_file()
        hint = (
            " (it holds adapter_model.safetensors + non_lora_state_dict.pth, a layout VideoAlign "
            "can write but did not release; save the whole state dict as model.pth)"
            if split
            else ""
        )
        raise ModelLayoutError(f"{folder} has no model.pth{hint}; {REWARD_EXPECTED}")
    return weights


def check_base(base_dir: Path) -> None:
    for rel in ("config.json", "preprocessor_config.json"):
        if not (base_dir / rel).is_file():
            raise ModelLayoutError(f"base model directory {base_dir} has no {rel}; {BASE_EXPECTED}")
    if not any(base_dir.glob("*.safetensors")):
        raise ModelLayoutError(
            f"base model directory {base_dir} has no *.safetensors weights; {BASE_EXPECTED}"
        )
    if not ((base_dir / "tokenizer.json").is_file() or (base_dir / "vocab.json").is_file()):
        raise ModelLayoutError(
            f"base model directory {base_dir} has no tokenizer.json; {BASE_EXPECTED}"
        )


def vision_spec(base_dir: Path) -> VisionSpec:
    """Patch sizes and normalisation from the base model's preprocessor_config.json."""
    raw = read_json(base_dir / "preprocessor_config.json", "preprocessor config")
    default = VisionSpec()
    return VisionSpec(
        patch_size=int(raw.get("patch_size", default.patch_size)),
        temporal_patch_size=int(raw.get("temporal_patch_size", default.temporal_patch_size)),
        merge_size=int(raw.get("merge_size", default.merge_size)),
        image_mean=tuple(float(v) for v in raw.get("image_mean", default.image_mean)),
        image_std=tuple(float(v) for v in raw.get("image_std", default.image_std)),
        rescale_factor=float(raw.get("rescale_factor", default.rescale_factor)),
    )


def load_tokenizer(base_dir: Path):
    """The base tokenizer, right padding, with the reward tokens added as VideoAlign adds them."""
    from transformers import AutoTokenizer

    tokenizer = load_tokenizer_files(AutoTokenizer, base_dir)
    # VideoAlign builds its processor with padding_side="right"; the reward tokens are then read
    # from right-padded rows whose positions start at 0, the layout the model was trained on.
    tokenizer.padding_side = "right"
    tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    return tokenizer


def lora_targets(model: torch.nn.Module, exclude: list[str], count: int) -> list[str]:
    """VideoAlign's ``find_target_linear_names``: every Linear and Embedding whose name holds
    none of ``exclude``; the last ``count`` of them when ``count > 0``."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))
        and not any(word in name for word in exclude)
    ]
    return names[-count:] if count > 0 else names


def build_peft_model(base_dir: Path, config: dict[str, Any], dtype: torch.dtype):
    """The reward model before its checkpoint is loaded: base Qwen2-VL + ``rm_head``, embeddings
    resized for the reward tokens, LoRA as ``peft_lora_config`` says. Returns it (a peft model)
    and the tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = load_tokenizer(base_dir)
    model = load_pretrained(
        Qwen2VLForConditionalGeneration, base_dir, dtype=dtype, attn_implementation="sdpa"
    )
    hidden = model.config.text_config.hidden_size
    output_dim = int(config["model_config"]["output_dim"])
    model.rm_head = torch.nn.Linear(hidden, output_dim, bias=False, dtype=dtype)
    # mean_resizing=False: the new rows come from the checkpoint; skip a costly random init.
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    lora = config["peft_lora_config"]
    if not lora.get("lora_enable", False):
        return model, tokenizer
    exclude = list(lora.get("lora_namespan_exclude") or [])
    if not lora.get("vision_lora", False) and "visual" not in exclude:
        exclude.append("visual")
    targets = lora_targets(model, exclude, int(lora.get("num_lora_modules", -1)))
    peft_config = LoraConfig(
        target_modules=targets,
        r=int(lora["lora_r"]),
        lora_alpha=int(lora["lora_alpha"]),
        lora_dropout=float(lora.get("lora_dropout", 0.0)),
        task_type=lora.get("lora_task_type", "CAUSAL_LM"),
        use_rslora=bool(lora.get("use_rslora", False)),
        bias="none",
        modules_to_save=lora.get("lora_modules_to_save"),
    )
    with warnings.catch_warnings():
        # peft asks transformers whether gradient checkpointing is on through a name transformers
        # 5 deprecates; nothing here trains.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        return get_peft_model(model, peft_config), tokenizer


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    if not key.startswith(_PEFT_PREFIX):
        return key
    rest = key[len(_PEFT_PREFIX) :]
    for old, new in table:
        if rest.startswith(old):
            return _PEFT_PREFIX + new + rest[len(old) :]
    return key


def from_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers 4.45 keys (as in the released model.pth) to transformers 5's; keys
    already in the new layout are kept."""
    if any(k.startswith(_PEFT_PREFIX + "model.language_model.") for k in state):
        return dict(state)
    return {_rename(k, _LEGACY_TO_NEW): v for k, v in state.items()}


def to_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_legacy_keys` (used to write tiny checkpoints as released)."""
    inverse = tuple((new, old) for old, new in _LEGACY_TO_NEW)
    return {_rename(k, inverse): v for k, v in state.items()}


def load_state(model: torch.nn.Module, weights: Path) -> None:
    """Load ``model.pth`` strictly: every key of the model, nothing else, same shapes."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a foreign or damaged file
        raise torch_load_error(exc, f"the VideoAlign weights {weights}") from None
    check_finite(state.items(), weights)
    state = from_legacy_keys(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelLayoutError(
            f"{weights} does not match the VideoAlign model built from model_config.json: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected "
            f"{unexpected[:3]}"
        )
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelLayoutError(
                f"{weights}: {key} has shape {tuple(state[key].shape)}, the model built from "
                f"model_config.json and the base tokenizer expects {tuple(value.shape)}"
            )
    model.load_state_dict(state, strict=True)


@dataclass
class LoadedVideoAlign:
    """Everything scoring needs: the network parts, the tokenizer and the preprocessing."""

    model: Any  # Qwen2VLForConditionalGeneration with LoRA layers injected and ``rm_head``
    tokenizer: Any
    chat_template: str
    vision: VisionSpec
    config: dict[str, Any]
    reward_token_ids: tuple[int, int, int]
    weights: Path


def chat_template_of(base_dir: Path, tokenizer: Any) -> str:
    """The base model's chat template: chat_template.json (as Qwen2-VL ships it), a
    chat_template.jinja, or the tokenizer's own."""
    for name in ("chat_template.json", "chat_template.jinja"):
        path = base_dir / name
        if path.is_file():
            if name.endswith(".json"):
                return read_json(path, "chat template")["chat_template"]
            return read_text(path, "chat template", "a Jinja chat template")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ModelLayoutError(
        f"base model directory {base_dir} has no chat template "
        f"(chat_template.json); {BASE_EXPECTED}"
    )


def load_reward_model(
    reward_dir: Path,
    base_dir: Path,
    config: dict[str, Any],
    step: int | None,
    device: torch.device,
    dtype: torch.dtype,
) -> LoadedVideoAlign:
    weights = find_weights(reward_dir, step)
    check_base(base_dir)
    peft_model, tokenizer = build_peft_model(base_dir, config, dtype)
    load_state(peft_model, weights)
    # Unwrap peft: the LoRA layers stay in place inside the transformers model, unmerged, as
    # VideoAlign runs them.
    model = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    model.requires_grad_(False).eval()
    model.to(device=device, dtype=dtype)
    ids = tuple(int(i) for i in tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS)))
    return LoadedVideoAlign(
        model=model,
        tokenizer=tokenizer,
        chat_template=chat_template_of(base_dir, tokenizer),
        vision=vision_spec(base_dir),
        config=config,
        reward_token_ids=ids,  # type: ignore[arg-type]
        weights=weights,
    )

"""Finding and safely loading reward weights from local files or the Hugging Face cache.

Nothing here downloads. Tensors load with ``safetensors`` or ``torch.load(weights_only=True)``,
which refuses pickles that would build arbitrary Python objects. A missing or unreadable file is a
:class:`dance.errors.ModelLayoutError` whose one line says which file, where to get it and which
option to set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from dance.errors import FileFault, ModelLayoutError
from dance.files import check_finite, first_line, torch_load_error


def cached_hub_file(repo_id: str, filenames: Iterable[str]) -> Path | None:
    """The first of ``filenames`` present in the Hugging Face cache for ``repo_id`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id.strip("/"), filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def resolve_file(
    value: str,
    *,
    what: str,
    option: str,
    how_to_get: str,
    hub: Mapping[str, Iterable[str]] | None = None,
    fallbacks: Iterable[Path] = (),
) -> Path:
    """The file ``value`` names, or when it is empty the first file found in the HF cache
    (``hub``: repo id -> file names) or among ``fallbacks``; else one clear error line."""
    if value:
        path = Path(value).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            raise ModelLayoutError(
                f"{option}={path} is a directory; expected the {what} file itself ({how_to_get})."
            )
        raise ModelLayoutError(
            f"{what} not found at '{path}'; {how_to_get}, then set {option}=PATH."
        )
    looked = []
    for repo_id, filenames in (hub or {}).items():
        names = list(filenames)
        found = cached_hub_file(repo_id, names)
        if found is not None:
            return found
        looked.append(f"{repo_id}/{{{','.join(names)}}} in the Hugging Face cache")
    for path in fallbacks:
        if path.expanduser().is_file():
            return path.expanduser()
        looked.append(str(path))
    where = f" (looked for {'; '.join(looked)})" if looked else ""
    raise ModelLayoutError(f"{what} not found{where}; {how_to_get}, then set {option}=PATH.")


def load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint (a state dict, or a dict holding
    one under ``"state_dict"`` as HPS's releases do), loaded on the CPU without unpickling
    arbitrary objects. A ``module.`` prefix left by DataParallel is removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise FileFault(
                f"{what} '{path}' is corrupt or truncated: not a readable safetensors file"
                f" ({first_line(exc)})."
            ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a foreign or damaged file
            raise torch_load_error(exc, f"{what} '{path}'") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ModelLayoutError(f"{what} '{path}' holds no state dict of tensors.")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ModelLayoutError(f"{what} '{path}' has non-tensor entries, e.g. {bad[0]!r}.")
    check_finite(state.items(), f"{what} '{path}'")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` with every key accounted for, else one error line."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        detail = " ".join(str(exc).split())[:300]
        raise ModelLayoutError(
            f"{what} does not match the model architecture ({detail}); check the model name "
            "options."
        ) from exc
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]!r})")
    if result.unexpected_keys:
        n, first = len(result.unexpected_keys), result.unexpected_keys[0]
        problems.append(f"{n} unexpected (e.g. {first!r})")
    if problems:
        raise ModelLayoutError(
            f"{what} does not match the model architecture: {', '.join(problems)} keys; check "
            "the model name options."
        )

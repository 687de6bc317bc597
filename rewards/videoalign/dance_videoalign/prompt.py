"""The text VideoAlign reads: its rating instructions and the Qwen2-VL chat around them.

The released VideoReward checkpoint was trained with VideoAlign's ``detailed_special`` prompt
(``prompt_template.py`` in KwaiVGI/VideoAlign, MIT licence, (c) 2025 Kling Team, Kuaishou
Technology). The model only works on that exact text: it asks for the three ratings and places the
three reward tokens ``<|VQ_reward|>``, ``<|MQ_reward|>`` and ``<|TA_reward|>`` at the end of their
sections, where the reward head reads the hidden states. The text is kept byte for byte in
``prompt_template.txt`` (trailing spaces included) and checked against the published text's
SHA-256 when loaded, so an editor that strips whitespace cannot change what the model sees.

The chat wrapped around it is the base model's own chat template (Qwen2-VL-Instruct's, from the
base checkpoint), applied with a single user turn holding the video and then the text, and
``add_generation_prompt=True``, as VideoAlign's ``inference.py`` does.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from dance.errors import ModelLayoutError

# The three tokens VideoAlign adds to the Qwen2-VL tokenizer, in the order of the reward heads.
REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
TEMPLATE_TYPE = "detailed_special"
# SHA-256 of the published ``DETAILED_PROMPT_WITH_SPECIAL_TOKEN`` string (3997 characters).
TEMPLATE_SHA256 = "fdb6309bac618dd0c8b1b589d3a0970a974f7856eecbb355a190b2dce54af700"
PLACEHOLDER = "{text_prompt}"


@lru_cache(maxsize=1)
def template() -> str:
    """The ``detailed_special`` instructions with a ``{text_prompt}`` placeholder."""
    text = (resources.files("dance_videoalign") / "prompt_template.txt").read_bytes().decode()
    if hashlib.sha256(text.encode()).hexdigest() != TEMPLATE_SHA256:
        raise ModelLayoutError(
            "dance_videoalign/prompt_template.txt differs from VideoAlign's published prompt "
            "(was it reformatted? trailing spaces matter); reinstall dance-videoalign"
        )
    return text


def instructions(prompt: str) -> str:
    """The user text for one video: the instructions with the generation prompt filled in."""
    # str.replace rather than str.format: a prompt is inserted once and never parsed again.
    return template().replace(PLACEHOLDER, prompt, 1)


def conversation(prompt: str) -> list[dict]:
    """One user turn: the video first, then the instructions (VideoAlign's message layout)."""
    return [
        {
            "role": "user",
            "content": [{"type": "video"}, {"type": "text", "text": instructions(prompt)}],
        }
    ]

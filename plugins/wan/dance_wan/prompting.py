"""Prompt text as the Wan pipelines clean it, and Wan's default negative prompt.

``clean_prompt`` follows ``prompt_clean`` of diffusers' pipeline_wan.py: ftfy's ``fix_text`` when
ftfy is installed, HTML entities unescaped twice, whitespace runs collapsed to one space.

``DEFAULT_NEGATIVE_PROMPT`` is the negative prompt Wan's own generation scripts use
(``sample_neg_prompt`` in Wan2.1's wan/configs/shared_config.py, also the one the diffusers model
cards pass): it lists what to avoid (over-saturated colours, overexposure, static frames, blurred
details, subtitles, worst quality, JPEG artefacts, deformed hands and faces, extra limbs, cluttered
backgrounds, people walking backwards).
"""

from __future__ import annotations

import html
import re

DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def clean_prompt(text: str) -> str:
    """The text the pipeline tokenizes for ``text``."""
    try:
        import ftfy
    except ImportError:  # the pipeline skips ftfy the same way
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()

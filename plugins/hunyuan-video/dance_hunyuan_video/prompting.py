"""HunyuanVideo's prompt template for its Llama text encoder.

The Llama encoder reads every prompt wrapped in a system instruction that asks for a description of
the video; the embeddings of the template's own tokens are then cropped off (``crop_start``). The
text and the crop are HunyuanVideo's (``DEFAULT_PROMPT_TEMPLATE`` of diffusers'
``HunyuanVideoPipeline`` and ``HunyuanSkyreelsImageToVideoPipeline``, from the original
repository's ``PROMPT_TEMPLATE_ENCODE_VIDEO``); a test checks that they still agree.
"""

from __future__ import annotations

DEFAULT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following "
    "aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the "
    "objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
# Tokens before the prompt (BOS + the template's prefix) with HunyuanVideo's Llama 3 tokenizer.
DEFAULT_CROP_START = 95

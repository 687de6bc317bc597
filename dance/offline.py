"""Offline by construction: dance never lets the Hugging Face libraries reach the network.

Every ``from_pretrained`` in dance and its plugins passes ``local_files_only=True``; on top of
that, importing :mod:`dance` sets the libraries' own offline switches, so that a code path of a
library (a tokenizer a model config names, a config lookup, telemetry) that dance did not think of
cannot open a connection either. A switch the user has set already is left as it is.
"""

from __future__ import annotations

import os
import sys

# The environment variables huggingface_hub, transformers, diffusers and datasets read.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
}


def go_offline() -> None:
    """Set the offline switches the user has not set; when huggingface_hub was imported before
    dance (it reads the variable once, at import), switch its constant too."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and os.environ["HF_HUB_OFFLINE"].upper() in ("1", "ON", "YES", "TRUE"):
        constants.HF_HUB_OFFLINE = True

"""The flux-kontext policy passes the shared policy contract on the tiny Kontext checkpoint, its
`dance run` reading a JSONL file of prompts with source images."""

from __future__ import annotations

import pytest
from kontext_helpers import source_image

from dance.interfaces import Prompt
from dance.testing.policy_contract import PolicyContract


class TestFluxKontextContract(PolicyContract):
    @pytest.fixture
    def policy_options(self, tiny_kontext):
        return {
            "name": "flux-kontext",
            "model": str(tiny_kontext),
            "height": 32,
            "width": 32,
            "max_sequence_length": 16,
            "lora_rank": 4,
            "lora_alpha": 8.0,
            # Source images of several sizes, each resized to the output size.
            "image_size": "output",
        }

    @pytest.fixture
    def prompts(self):
        return [
            Prompt("make the sky red", source_image(0, 40, 48)),
            Prompt("add a hat", source_image(1)),
        ]

    @pytest.fixture
    def train_prompts(self, edit_prompt_file):
        return str(edit_prompt_file)

"""Counts the docs state match what is installed: the plugins `dance plugins` lists and the
bundled recipes."""

from __future__ import annotations

import re
from pathlib import Path

from dance.cli.recipe import bundled_recipes
from dance.registry import get_registry, reset_registry

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_counts_what_dance_plugins_lists():
    text = (ROOT / "docs" / "quickstart.md").read_text()
    found = re.search(
        r"It\s+lists\s+(\d+)\s+plugins\s.*?register\s+(\d+)\s+policies,\s+(\d+)\s+samplers,\s+"
        r"(\d+)\s+rewards\s+and\s+(\d+)\s+advantage\s+estimators",
        text,
        re.S,
    )
    assert found, "docs/quickstart.md no longer states the plugin counts"
    reset_registry()
    registry = get_registry()
    kinds = [kind for p in registry.plugins.values() for kind, _ in p.components]
    actual = [len(registry.plugins)] + [
        kinds.count(k) for k in ("policy", "sampler", "reward", "advantage")
    ]
    assert [int(n) for n in found.groups()] == actual


def test_recipes_page_lists_every_bundled_recipe():
    text = (ROOT / "docs" / "recipes.md").read_text()
    # The recipe table is the first table after the sentence that counts the recipes.
    section = text[text.index("recipes ship inside the `dance` package") :]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    table = re.findall(r"^\| `([\w-]+)` \|", section, re.M)
    assert sorted(table) == sorted(bundled_recipes())
    words = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    words += ["eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]
    stated = re.search(r"(\w+) recipes ship inside the `dance` package", text)
    assert stated and stated.group(1).lower() == words[len(bundled_recipes())]

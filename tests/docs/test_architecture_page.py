"""docs/architecture.md shows the core's file tree: every module at the top of dance/, every
subpackage and every module of the layers it describes is on the page, and nothing that is gone."""

import re
from pathlib import Path

import dance

ROOT = Path(dance.__file__).parent
PAGE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
DETAILED = ("models", "video", "sampling", "reporting", "training", "cli")


def _tree() -> str:
    text = PAGE.read_text(encoding="utf-8")
    return text.split("```\ndance/\n", 1)[1].split("```", 1)[0]


def _listed() -> set[str]:
    """Paths the tree names: indentation says which folder an entry is in."""
    listed, folder = set(), ""
    for line in _tree().splitlines():
        match = re.match(r"( *)(\S+)", line)
        if (
            not match
            or not match.group(2).replace("/", "").replace("_", "").replace(".", "").isalnum()
        ):
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        if depth == 1:
            folder = name if name.endswith("/") else ""
            listed.add(name.rstrip("/"))
        elif depth == 2 and folder:
            listed.add(folder + name)
    return listed


def test_every_part_of_the_core_is_on_the_page():
    listed = _listed()
    expected = {p.name for p in ROOT.glob("*.py")}
    expected |= {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    expected |= {
        f"{part}/{p.name}"
        for part in DETAILED
        for p in (ROOT / part).glob("*.py")
        if not p.name.startswith("__")
    }
    assert expected <= listed, f"missing from docs/architecture.md: {sorted(expected - listed)}"
    gone = {name for name in listed if not (ROOT / name).exists()}
    assert not gone, f"docs/architecture.md lists what dance/ no longer has: {sorted(gone)}"

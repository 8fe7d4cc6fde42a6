"""The docs that are generated from code stay in sync with it."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_matches_field_help() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_config_docs.py"))["render"]
    text = (ROOT / "docs" / "config.md").read_text()
    assert text == render(), "run: python scripts/gen_config_docs.py"
    assert "| `training_duration` | `1ep` |" in text

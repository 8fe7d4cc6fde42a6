"""The docs that are generated from code stay in sync with it."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_matches_field_help() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_config_docs.py"))["render"]
    text = (ROOT / "docs" / "config.md").read_text()
    assert text == render(), "run: python scripts/gen_config_docs.py"
    assert "| `training_duration` | `1ep` |" in text


@pytest.mark.timeout(30)
def test_config_reference_lists_every_schema_field_once() -> None:
    from ftmagic.config import RunConfig

    text = (ROOT / "docs" / "config.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| (.*?) \| (.*) \|$", text, re.M)
    properties = RunConfig.json_schema()["properties"]
    assert sorted(name for name, *_ in rows) == sorted(properties)
    for name, _default, allowed, meaning in rows:
        assert meaning == properties[name]["description"], name
        for choice in properties[name].get("enum", []):
            assert f"`{choice}`" in allowed, name
    seed = next(row for row in rows if row[0] == "seed")
    assert seed[2] == "0 to 4,294,967,295"

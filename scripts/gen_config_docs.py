"""Write docs/config.md from RunConfig's JSON schema (the one place help, choices and bounds are
written)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ftmagic.config import RunConfig, value_type

GROUPS = {
    "run": "Run (the hosted product's fields)",
    "data": "Data",
    "method": "Method: full fine-tuning or LoRA",
    "optim": "Optimisation",
    "backend": "Where it runs",
}


def render() -> str:
    properties = RunConfig.json_schema()["properties"]
    lines = [
        "# Run configuration",
        "",
        "One typed config, the same in a `%%finetune` cell (YAML), `ftmagic.create(**kwargs)`,",
        "`ftmagic train CONFIG.yaml --field value` and the panel. Generated from the config's",
        "JSON schema (`RunConfig.json_schema()`) by `python scripts/gen_config_docs.py`; a test",
        "keeps it in sync.",
    ]
    for group, title in GROUPS.items():
        lines += [
            "",
            f"## {title}",
            "",
            "| field | default | allowed | meaning |",
            "|---|---|---|---|",
        ]
        for name, prop in properties.items():
            if prop["group"] == group:
                default = prop.get("default")
                shown = "" if default in (None, "", []) else f"`{default}`"
                lines.append(f"| `{name}` | {shown} | {allowed(prop)} | {prop['description']} |")
    return "\n".join(lines) + "\n"


def allowed(prop: dict[str, Any]) -> str:
    """The choices, the bounds or the duration limits a field's schema sets."""
    if "enum" in prop:
        return ", ".join(f"`{choice}`" for choice in prop["enum"])
    if "duration_limits" in prop:
        limits = prop["duration_limits"]
        return "up to " + ", ".join(f"`{limits[unit]:_}{unit}`" for unit in ("ep", "tok", "ba"))
    for option in prop.get("anyOf", [prop]):
        if "minimum" in option:
            low, high = option["minimum"], option["maximum"]
            if value_type(prop)[0] == "integer":
                return f"{low:,} to {high:,}"
            return f"{low:g} to {high:g}"
    return ""


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())

"""Write docs/config.md from RunConfig's field help (the one place help text is written)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ftmagic.config import RunConfig

GROUPS = {
    "run": "Run (the hosted product's fields)",
    "data": "Data",
    "method": "Method: full fine-tuning or LoRA",
    "optim": "Optimisation",
    "backend": "Where it runs",
}


def render() -> str:
    defaults = RunConfig()
    lines = [
        "# Run configuration",
        "",
        "One typed config, the same in a `%%finetune` cell (YAML), `ftmagic.create(**kwargs)`,",
        "`ftmagic train CONFIG.yaml --field value` and the panel. Generated from the field help by",
        "`python scripts/gen_config_docs.py`; a test keeps it in sync.",
    ]
    for group, title in GROUPS.items():
        lines += ["", f"## {title}", "", "| field | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(RunConfig):
            if f.metadata["group"] != group:
                continue
            default = getattr(defaults, f.name)
            shown = "" if default in (None, "", []) else f"`{default}`"
            lines.append(f"| `{f.name}` | {shown} | {f.metadata['help']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())

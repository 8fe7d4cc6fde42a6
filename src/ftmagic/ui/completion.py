"""Tab completion inside ``%%finetune`` cells, through IPython's completer (so every frontend
that asks the kernel gets it): config field names at the start of a line, and the values of
fields with fixed choices (models, task types, backends, ...) after ``field:``."""

from __future__ import annotations

import re
from typing import Any

from IPython.core.completer import SimpleCompletion, completion_matcher

KEY = re.compile(r"\s*([A-Za-z_]*)")
VALUE = re.compile(r"\s*([A-Za-z_]+)\s*:\s*(\S*)")


def field_values(name: str) -> list[str]:
    """The values a field takes from a fixed list ([] for free-form fields), from the config's
    JSON schema: its ``enum``, or true and false for a boolean."""
    from ftmagic.config import schema_fields, value_type

    if name == "model":
        import ftmagic
        from ftmagic.ui.form import model_order

        return [e.name for e in sorted(ftmagic.get_models(), key=model_order) if not e.retired]
    prop = schema_fields().get(name, {})
    if "enum" in prop:
        return list(prop["enum"])
    return ["true", "false"] if prop and value_type(prop)[0] == "boolean" else []


def finetune_completions(full_text: str, line: int, before_cursor: str) -> tuple[str, list[str]]:
    """``(typed fragment, candidates)`` for the cursor in a ``%%finetune`` cell body; no
    candidates elsewhere."""
    from ftmagic.config import RunConfig

    if line == 0 or not full_text.lstrip().startswith("%%finetune"):
        return "", []
    key = KEY.fullmatch(before_cursor)
    if key is not None:
        typed = key.group(1)
        return typed, [n for n in RunConfig.field_names() if n.startswith(typed)]
    value = VALUE.fullmatch(before_cursor)
    if value is not None:
        typed = value.group(2)
        return typed, [v for v in field_values(value.group(1)) if v.startswith(typed)]
    return "", []


@completion_matcher(identifier="ftmagic.finetune", priority=50, api_version=2)
def finetune_matcher(context: Any) -> dict[str, Any]:
    """IPython matcher (API v2); it alone answers inside a ``%%finetune`` body."""
    typed, names = finetune_completions(
        context.full_text, context.cursor_line, context.text_until_cursor
    )
    if not names:
        return {"completions": [], "suppress": False}
    return {
        "completions": [SimpleCompletion(name, type="ftmagic") for name in names],
        "matched_fragment": typed,
        "suppress": True,
    }


def register(shell: Any) -> None:
    """Add the matcher to ``shell``'s completer (once)."""
    completer = getattr(shell, "Completer", None)
    if completer is not None and finetune_matcher not in completer.custom_matchers:
        completer.custom_matchers.append(finetune_matcher)

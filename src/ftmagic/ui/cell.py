"""The ``%%finetune`` cell body: ``{var}`` substitution, YAML parsing, and the panel's reverse.

Substitution rule: only ``{identifier}`` (a Python name in braces) is replaced, by the value of that
variable in the notebook. Strings are inserted as they are (so ``data/{split}.jsonl`` works);
other values as JSON, which YAML reads back (``eval_prompts: {prompts}`` with a list). Every other
brace is left alone, so YAML flow mappings like ``{a: 1}`` keep working. Write ``{{name}}`` for a
literal ``{name}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml

from ftmagic.config import RunConfig
from ftmagic.errors import ConfigError

PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")
SOURCE = "%%finetune cell"


def substitute(body: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{name}`` with the notebook variable ``name``; ``{{name}}`` becomes ``{name}``.

    >>> substitute("model: {m}\\nx: {{m}}\\ny: {a: 1}", {"m": "tiny"})
    'model: tiny\\nx: {m}\\ny: {a: 1}'
    """

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}"
        if name not in namespace:
            raise ConfigError(
                "<cell>",
                f"{{{name}}} names no variable in the notebook",
                suggestion=f"define {name} in a cell above, or write {{{{{name}}}}} for a literal",
            )
        value = namespace[name]
        return value if isinstance(value, str) else json.dumps(value, default=str)

    return PLACEHOLDER.sub(replace, body)


def escape(text: str) -> str:
    """The inverse of ``substitute`` for literal text: ``{name}`` -> ``{{name}}``."""
    return re.sub(r"\{([A-Za-z_]\w*)\}", r"{{\1}}", text)


def parse_cell(
    body: str,
    namespace: Mapping[str, Any] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Build the cell's ``RunConfig``: ``defaults`` < the YAML body < ``overrides`` (flags)."""
    text = substitute(body, namespace or {})
    RunConfig.from_yaml(text, source=SOURCE)  # raises a located ConfigError for bad YAML or fields
    data = yaml.safe_load(text) or {}
    merged = {**(defaults or {}), **data, **(overrides or {})}
    return RunConfig.from_dict(merged, source=SOURCE)


def to_cell(config: RunConfig, *, flags: str = "") -> str:
    """The ``%%finetune`` cell that builds ``config`` (only non-default fields)."""
    body = config.to_yaml(only_changed=True)
    header = f"%%finetune {flags}".rstrip()
    return f"{header}\n{escape(body)}"

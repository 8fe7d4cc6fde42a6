"""One form row per ``RunConfig`` field: a widget chosen from the field's type, and an error line.

The widget kind comes from the field's JSON schema (``RunConfig.json_schema()``): ``boolean`` ->
Checkbox, ``integer`` -> IntText, ``number`` -> FloatText, ``array`` -> Textarea, one item a line,
nullable -> Text where empty means the default, ``enum`` (fixed choices) -> Dropdown. The help text
(the schema's ``description``) is the tooltip.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from ftmagic.config import schema_fields, value_type
from ftmagic.errors import ConfigError
from ftmagic.ui.errors import message_html

KINDS = {"boolean": "bool", "integer": "int", "number": "float", "array": "list"}
DESCRIPTION_WIDTH = "150px"
FIELD_WIDTH = "460px"


class FieldRow(widgets.HBox):
    """The input widget for one config field, with its error shown to the right."""

    def __init__(self, name: str, prop: dict[str, Any], options: list[Any] | None = None) -> None:
        self.name = name
        self.kind = field_kind(name, prop)
        self.widget = _make_widget(self.kind, name, options or prop.get("enum"))
        self.widget.tooltip = prop["description"]
        self.error = widgets.HTML()
        super().__init__([self.widget, self.error])

    def get(self) -> Any:
        """The field value, parsed; raises ``ConfigError`` for text that is not a number."""
        value = self.widget.value
        if self.kind == "list":
            return [line.strip() for line in value.splitlines() if line.strip()]
        if self.kind.startswith("optional"):
            return _parse_optional(self.name, self.kind, value)
        return value

    def set(self, value: Any) -> None:
        if self.kind == "list":
            self.widget.value = "\n".join(value)
        elif self.kind.startswith("optional"):
            self.widget.value = "" if value is None else str(value)
        elif self.kind == "choice" and value not in _option_values(self.widget.options):
            self.widget.options = [*self.widget.options, (f"{value} (unlisted)", value)]
            self.widget.value = value
        else:
            self.widget.value = value

    def show_error(self, message: str) -> None:
        self.error.value = message_html(message)

    def show_warning(self, message: str) -> None:
        """A value that is allowed but looks wrong: shown, not blocking."""
        self.error.value = f"<span style='color:#ef6c00'>⚠ {html.escape(message)}</span>"

    def clear_error(self) -> None:
        self.error.value = ""


def field_kind(name: str, prop: dict[str, Any]) -> str:
    """``choice``, ``bool``, ``int``, ``float``, ``list``, ``text`` or ``optional-<kind>``."""
    if "enum" in prop or name == "model":
        return "choice"
    json_type, nullable = value_type(prop)
    kind = KINDS.get(json_type, "text")
    return f"optional-{kind}" if nullable else kind


def config_fields() -> dict[str, dict[str, Any]]:
    """Each ``RunConfig`` field's JSON schema, in declaration order."""
    return schema_fields()


def _make_widget(kind: str, name: str, options: list[Any] | None) -> widgets.Widget:
    common: dict[str, Any] = {
        "description": name,
        "style": {"description_width": DESCRIPTION_WIDTH},
        "layout": {"width": FIELD_WIDTH},
    }
    if kind == "choice":
        return widgets.Dropdown(options=options or [], **common)
    if kind == "bool":
        return widgets.Checkbox(indent=True, **common)
    if kind == "int":
        return widgets.IntText(**common)
    if kind == "float":
        return widgets.FloatText(**common)
    if kind == "list":
        return widgets.Textarea(placeholder="one per line", rows=2, **common)
    placeholder = "empty: the default" if kind.startswith("optional") else ""
    return widgets.Text(placeholder=placeholder, continuous_update=False, **common)


def _parse_optional(name: str, kind: str, text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    if kind == "optional-int":
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(name, "must be a whole number", value=text) from None
    if kind == "optional-float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(name, "must be a number", value=text) from None
    return text


def _option_values(options: Any) -> list[Any]:
    return [o[1] if isinstance(o, tuple) else o for o in options]

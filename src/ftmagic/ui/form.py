"""The panel's form: every ``RunConfig`` field, the main ones first, LoRA options shown only for
LoRA, and the rest in an "Advanced" accordion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ftmagic.config import RunConfig
from ftmagic.errors import ConfigError
from ftmagic.ui.errors import message_html
from ftmagic.ui.fields import FieldRow, config_fields

MAIN_FIELDS = (
    "model",
    "task_type",
    "train_data_path",
    "eval_data_path",
    "training_duration",
    "learning_rate",
    "context_length",
    "method",
)
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora")
AFTER_LORA = ("register_to", "backend", "eval_prompts")
MODEL_WIDTH = "620px"


def model_label(entry: Any) -> str:
    """``name · 131k ctx · 1B · retired`` for the model dropdown."""
    parts = [
        entry.name,
        f"{entry.context_length // 1024}k ctx"
        if entry.context_length >= 1024
        else f"{entry.context_length} ctx",
    ]
    if entry.params:
        parts.append(str(entry.params))
    if entry.retired:
        parts.append(f"retired, use {entry.replacement}" if entry.replacement else "retired")
    return " · ".join(parts)


UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def parameter_count(text: str) -> float:
    """``"1.97M"`` -> 1.97e6, ``"8B"`` -> 8e9; unknown sizes sort last."""
    text = str(text or "").strip().upper()
    try:
        return float(text[:-1]) * UNITS[text[-1]]
    except (KeyError, ValueError, IndexError):
        return float("inf")


def model_order(entry: Any) -> tuple[bool, bool, float, str]:
    """What fits this machine first: current models before retired ones, the built-in tiny ones
    (seconds on a CPU) first, then the smallest."""
    return (bool(entry.retired), entry.kind != "tiny", parameter_count(entry.params), entry.name)


def model_options() -> list[tuple[str, str]]:
    """The catalog as ``(label, name)`` pairs, the smallest first, with an empty choice first."""
    import ftmagic

    entries = sorted(ftmagic.get_models(), key=model_order)
    return [("(choose a model)", ""), *[(model_label(e), e.name) for e in entries]]


def matching_options(
    options: list[tuple[str, str]], query: str, keep: str
) -> list[tuple[str, str]]:
    """The options whose label holds every word of ``query``, plus the one chosen now."""
    words = query.lower().split()
    return [
        (label, name)
        for label, name in options
        if name == keep or all(word in label.lower() for word in words)
    ]


class ConfigForm(widgets.VBox):
    """Widgets for a ``RunConfig``. ``config()`` builds it; ``rows[name]`` is each field's row."""

    def __init__(self, config: RunConfig | None = None) -> None:
        fields = config_fields()
        self.rows = {
            name: FieldRow(name, prop, model_options() if name == "model" else None)
            for name, prop in fields.items()
        }
        self.message = widgets.HTML()
        self.model_search = self._model_search()
        self.lora_box = widgets.VBox([self.rows[n] for n in LORA_FIELDS])
        advanced = [n for n in fields if n not in (*MAIN_FIELDS, *LORA_FIELDS, *AFTER_LORA)]
        self.advanced = widgets.Accordion(
            [widgets.VBox([self.rows[n] for n in advanced])], titles=("Advanced",)
        )
        super().__init__(
            [
                *[self.rows[n] for n in MAIN_FIELDS],
                self.lora_box,
                *[self.rows[n] for n in AFTER_LORA],
                self.advanced,
                self.message,
            ]
        )
        self.set_config(config or RunConfig())
        self.rows["method"].widget.observe(lambda _change: self._show_lora(), names="value")
        self._show_lora()

    def values(self) -> dict[str, Any]:
        """Every field's parsed value; marks all bad rows, then raises the first error."""
        values, errors = {}, []
        for name, row in self.rows.items():
            try:
                values[name] = row.get()
            except ConfigError as err:
                row.show_error(str(err))
                errors.append(err)
        if errors:
            raise errors[0]
        return values

    def config(self) -> RunConfig:
        """The ``RunConfig`` the form describes (``ConfigError`` if a field is wrong)."""
        return RunConfig.from_dict(self.values())

    def checked_config(self) -> RunConfig | None:
        """``config()``, or None after showing the error next to its field."""
        self.clear_errors()
        try:
            return self.config()
        except ConfigError as err:
            self.show_error(err.field, str(err))
            return None

    def set_config(self, config: RunConfig) -> None:
        for name, value in config.to_dict().items():
            self.rows[name].set(value)

    def show_error(self, field: str, message: str) -> None:
        """Show ``message`` next to ``field``, or under the form if no row has that name."""
        row = self.rows.get(field)
        if row is None:
            self.message.value = message_html(message)
        else:
            row.show_error(message)

    def show_warning(self, field: str, message: str) -> None:
        row = self.rows.get(field)
        if row is not None and not row.error.value:  # an error says more than a warning
            row.show_warning(message)

    def clear_errors(self) -> None:
        self.message.value = ""
        for row in self.rows.values():
            row.clear_error()

    def observe_changes(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(change)`` whenever any field's value changes."""
        for row in self.rows.values():
            row.widget.observe(callback, names="value")

    def _model_search(self) -> widgets.Text:
        """A search box next to the model picker, filtering it as one types."""
        row = self.rows["model"]
        row.widget.layout.width = MODEL_WIDTH  # labels with size, context and badges fit
        every = [tuple(o) for o in row.widget.options]
        search = widgets.Text(
            placeholder="search models", continuous_update=True, layout={"width": "180px"}
        )

        def narrow(change: Any) -> None:
            row.widget.options = matching_options(every, change["new"], row.widget.value)

        search.observe(narrow, names="value")
        row.children = (row.widget, search, row.error)
        return search

    def _show_lora(self) -> None:
        lora = self.rows["method"].widget.value == "lora"
        self.lora_box.layout.display = "" if lora else "none"

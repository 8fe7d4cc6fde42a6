"""The panel's Preview and Results tabs."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from ftmagic.config import RunConfig
from ftmagic.errors import FtmagicError
from ftmagic.ui import html as render
from ftmagic.ui.errors import message_html
from ftmagic.ui.examples import first_examples, preview_example

PREVIEW_LIMIT = 20  # examples the Preview tab can step through


class PreviewTab(widgets.VBox):
    """Example ``index`` token by token (trained tokens marked), with Prev/Next buttons."""

    def __init__(self) -> None:
        self.config: RunConfig | None = None
        self.examples: list[Any] = []
        self.index = 0
        self.prev_button = widgets.Button(description="Prev", icon="arrow-left")
        self.next_button = widgets.Button(description="Next", icon="arrow-right")
        self.prev_button.on_click(lambda _button: self.step(-1))
        self.next_button.on_click(lambda _button: self.step(1))
        self.label = widgets.HTML()
        self.counts = widgets.HTML()
        self.tokens = widgets.HTML("<i style='color:#777'>choose a model and training data</i>")
        nav = widgets.HBox([self.prev_button, self.next_button, self.label])
        super().__init__([nav, self.counts, self.tokens])

    def load(self, config: RunConfig) -> None:
        """Read the first examples of ``config``'s training data and show the first one."""
        self.config = config
        self.index = 0
        try:
            self.examples = first_examples(config, PREVIEW_LIMIT)
        except FtmagicError as err:
            self.examples = []
            self.tokens.value = message_html(str(err))
        self.show()

    def step(self, delta: int) -> None:
        if self.examples:
            self.index = (self.index + delta) % len(self.examples)
            self.show()

    def show(self) -> None:
        count = len(self.examples)
        self.prev_button.disabled = self.next_button.disabled = count < 2
        if self.config is None or not count:
            self.label.value = self.counts.value = ""
            return
        self.label.value = f"example {self.index + 1} of {count}"
        try:
            preview = preview_example(self.config, self.examples[self.index])
        except FtmagicError as err:
            self.counts.value = ""
            self.tokens.value = message_html(str(err))
            return
        self.counts.value = trained_counts_html(preview)
        self.tokens.value = preview._repr_html_()


def trained_counts_html(preview: Any) -> str:
    """``trained tokens: assistant 41, user 0 · 58 of 112 tokens trained``."""
    by_role = dict(getattr(preview, "trained_by_role", {}) or {})
    total = len(preview.tokens)
    trained = sum(1 for token in preview.tokens if token.trained)
    roles = ", ".join(f"{html.escape(str(r))} {n}" for r, n in by_role.items())
    prefix = f"trained tokens by role: {roles} · " if roles else ""
    return f"<b>{prefix}{trained} of {total} tokens trained</b>"


class ResultsTab(widgets.VBox):
    """Eval-prompt generations per checkpoint, the registered model and how to serve it."""

    def __init__(self) -> None:
        self.generations = widgets.HTML("<i style='color:#777'>no run yet</i>")
        self.model = widgets.HTML()
        super().__init__([self.generations, self.model])

    def show(self, run: Any) -> None:
        """Fill the tab from ``run`` (called when a run ends, or by hand)."""
        run.refresh()
        self.generations.value = render.generations_by_checkpoint_html(run.generations())
        self.model.value = render.results_html(run.registered_model, tracking_uri())


def tracking_uri() -> str | None:
    """The MLflow tracking URI runs are read from (needed to serve a registered model)."""
    from ftmagic.tracking.store import tracking_uri as store_uri

    return store_uri()

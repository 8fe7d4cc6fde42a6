"""The panel's Preview and Results tabs (the Results tab holds the checkpoint gallery)."""

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
    """The checkpoint gallery (a Promote button per checkpoint), eval-prompt generations per
    checkpoint, the registered model and how to serve it."""

    def __init__(self) -> None:
        self.gallery = GalleryBox()
        self.generations = widgets.HTML("<i style='color:#777'>no run yet</i>")
        self.model = widgets.HTML()
        super().__init__([self.gallery, self.generations, self.model])

    def show(self, run: Any) -> None:
        """Fill the tab from ``run`` (called when a run ends, or by hand)."""
        run.refresh()
        self.gallery.show(run)
        self.generations.value = render.generations_by_checkpoint_html(run.generations())
        self.model.value = render.results_html(run.registered_model, tracking_uri())


class GalleryBox(widgets.VBox):
    """A run's checkpoint gallery with, per checkpoint, an alias field and a Promote button that
    registers that checkpoint as a model version (``rows[step]`` holds the row's widgets)."""

    def __init__(self) -> None:
        self.run: Any = None
        self.table = widgets.HTML()
        self.register_to = widgets.Text(
            description="register to",
            placeholder="catalog.schema[.name]",
            layout=widgets.Layout(width="360px"),
        )
        self.rows: dict[int, PromoteRow] = {}
        self.controls = widgets.VBox()
        super().__init__([self.table, self.register_to, self.controls])

    def show(self, run: Any) -> None:
        from ftmagic.checkpoint_gallery import gallery

        self.run = run
        try:
            found = gallery(run)
        except FtmagicError as err:
            self.table.value = message_html(str(err))
            self.rows = {}
            self.controls.children = ()
            return
        self.table.value = found._repr_html_() if found.rows else ""
        self.register_to.value = self.register_to.value or run.config.register_to or ""
        self.register_to.layout.display = "" if found.rows else "none"
        self.rows = {row.step: PromoteRow(self, row.step, row.best) for row in found.rows}
        self.controls.children = tuple(self.rows.values())

    def promote(self, step: int, alias: str) -> str:
        """Register checkpoint ``step`` (``alias`` moved to it when given); refresh the table."""
        import ftmagic

        reference = ftmagic.promote(
            self.run, step, register_to=self.register_to.value.strip() or None, alias=alias or None
        )
        self.table.value = ftmagic.gallery(self.run)._repr_html_()
        return str(reference)


class PromoteRow(widgets.HBox):
    """``step N``, an optional alias and a Promote button; the result or error beside them."""

    def __init__(self, box: GalleryBox, step: int, best: bool) -> None:
        self.box = box
        self.step = step
        label = widgets.HTML(f"step {step}{' ★ best' if best else ''}")
        self.alias = widgets.Text(placeholder="alias (optional, e.g. champion)")
        self.button = widgets.Button(description="Promote", icon="upload")
        self.button.on_click(lambda _button: self.promote())
        self.result = widgets.HTML()
        super().__init__([label, self.alias, self.button, self.result])

    def promote(self) -> None:
        self.button.disabled = True
        alias = self.alias.value.strip()
        try:
            reference = self.box.promote(self.step, alias)
        except FtmagicError as err:
            self.result.value = message_html(str(err))
        except Exception as err:  # a click has no one to raise to: say what failed
            self.result.value = message_html(f"promoting step {self.step} failed: {err}")
        else:
            where = f" (alias <code>{html.escape(alias)}</code>)" if alias else ""
            self.result.value = f"registered <code>{html.escape(reference)}</code>{where}"
        finally:
            self.button.disabled = False


def tracking_uri() -> str | None:
    """The MLflow tracking URI runs are read from (needed to serve a registered model)."""
    from ftmagic.tracking.store import tracking_uri as store_uri

    return store_uri()

"""``ftmagic.panel()`` / ``%ft panel``: a form that builds, checks and drives a run.

The form is generated from ``RunConfig``; fields are validated as they change (debounced), with
errors shown next to their field. Tabs: Data (the validation report), Preview (token-level view of
the examples), Train (Start/Cancel and the live view), Results (generations per checkpoint, the
registered model and how to serve it). "Copy as cell" puts the equivalent ``%%finetune`` cell
below. Every button can be clicked from code (``panel.start_button.click()``).
"""

from __future__ import annotations

import html
import logging
import threading
from typing import Any

import ipywidgets as widgets

from ftmagic.config import RunConfig
from ftmagic.errors import FtmagicError
from ftmagic.ui.cell import to_cell
from ftmagic.ui.errors import message_html
from ftmagic.ui.form import ConfigForm
from ftmagic.ui.live import LiveView
from ftmagic.ui.tabs import PreviewTab, ResultsTab

log = logging.getLogger(__name__)

TAB_TITLES = ("Data", "Preview", "Train", "Results")
CELLS_COMM_TARGET = "ftmagic.cells"  # answered by ftmagic's JupyterLab extension


class Panel(widgets.VBox):
    """The fine-tuning panel. ``config`` is the form's current ``RunConfig``."""

    def __init__(self, config: RunConfig | None = None, *, debounce_s: float = 0.5) -> None:
        self.debounce_s = debounce_s
        self.form = ConfigForm(config)
        self.data_html = widgets.HTML("<i style='color:#777'>choose a model and training data</i>")
        self.preview = PreviewTab()
        self.results = ResultsTab()
        self.start_button = widgets.Button(description="Start", button_style="success", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.train_box = widgets.VBox()
        self.copy_button = widgets.Button(description="Copy as cell", icon="copy")
        self.validate_button = widgets.Button(description="Validate", icon="check")
        self.validate_button.on_click(lambda _button: self.validate_now(reread=True))
        self.message = widgets.HTML()
        self.start_button.on_click(lambda _button: self.start())
        self.cancel_button.on_click(lambda _button: self.cancel())
        self.copy_button.on_click(lambda _button: self.copy_as_cell())
        buttons = widgets.HBox([self.start_button, self.cancel_button])
        train = widgets.VBox([buttons, self.train_box])
        pages = [self.data_html, self.preview, train, self.results]
        self.tabs = widgets.Tab(pages, titles=TAB_TITLES)
        super().__init__(
            [
                widgets.HTML("<h3>ftmagic</h3>"),
                self.form,
                widgets.HBox([self.validate_button, self.copy_button]),
                self.message,
                self.tabs,
            ]
        )
        self.run: Any = None
        self.live: LiveView | None = None
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._edits = 0  # form changes so far; a timer skips work validate_now already did
        self._validated_edit = 0
        self._report: tuple[RunConfig, Any] | None = None
        self._preview_key: tuple[Any, ...] | None = None
        self.form.observe_changes(self._schedule_validation)
        self.extension_ready = False
        self._cells_comm = self._open_cells_comm()

    @property
    def config(self) -> RunConfig:
        """The form's ``RunConfig`` (raises ``ConfigError`` if a field is wrong)."""
        return self.form.config()

    def validate_now(self, *, reread: bool = False) -> Any:
        """Check the form, then the data (read again if ``reread`` or the form changed); fill the
        Data and Preview tabs. Returns the validation report, or None if the form is incomplete."""
        with self._lock:
            self._validated_edit = self._edits
            config = self.form.checked_config()
            if config is not None:
                for field, warning in implausible_values(config).items():
                    self.form.show_warning(field, warning)
            if config is None or not (config.model and config.train_data_path):
                return None
            try:
                report = self._validate_data(config, reread)
            except FtmagicError as err:
                self.data_html.value = message_html(str(err))
                self.form.show_error(getattr(err, "field", None) or "model", str(err))
                return None
            self._load_preview(config)
            return report

    def start(self) -> Any:
        """Start a run from the form and watch it in the Train tab; returns the ``Run``."""
        import ftmagic

        self.message.value = ""
        config = self.form.checked_config()
        if config is None:
            return None
        try:
            run = ftmagic.create(config)
        except FtmagicError as err:
            self.message.value = message_html(str(err))
            return None
        self.run = run
        self.live = LiveView(run)
        self.live.on_done(self._run_ended)
        self.train_box.children = [self.live]
        self.tabs.selected_index = TAB_TITLES.index("Train")
        self.cancel_button.disabled = False
        return run

    def cancel(self) -> None:
        """Ask the current run to stop."""
        if self.live is not None:
            self.live.cancel()
        self.cancel_button.disabled = True

    def to_cell(self) -> str:
        """The ``%%finetune`` cell equivalent to the form (only non-default fields)."""
        return to_cell(self.config)

    def copy_as_cell(self) -> str | None:
        """Put ``to_cell()`` in a new cell below the panel; returns the text.

        With ftmagic's JupyterLab extension the cell appears at once. Elsewhere the kernel can
        only queue it (``set_next_input``): the frontend adds it after the next cell runs, which
        the message says, with the text to copy by hand.
        """
        from IPython import get_ipython

        config = self.form.checked_config()
        if config is None:
            return None
        text = to_cell(config)
        if self.extension_ready and self._cells_comm is not None:
            self._cells_comm.send({"action": "insert_cell", "text": text})
            self.message.value = "<span style='color:#555'>inserting the cell below…</span>"
            return text
        shell = get_ipython()
        if shell is not None:
            shell.set_next_input(text, replace=False)
        self.message.value = (
            "<span style='color:#ef6c00'>The cell is queued: Jupyter adds it after the next cell "
            "you run (ftmagic's JupyterLab extension, which inserts it at once, is not active "
            "here). Or copy it:</span>"
            f"<pre style='margin:2px 0'>{html.escape(text)}</pre>"
        )
        return text

    def _open_cells_comm(self) -> Any:
        """A comm to ftmagic's JupyterLab extension, which answers ``hello`` when it is there
        (outside a kernel, or without the extension, nothing answers)."""
        try:
            from comm import create_comm

            channel = create_comm(target_name=CELLS_COMM_TARGET, data={"action": "hello"})
        except Exception as err:  # no kernel to talk through: Copy as cell falls back
            log.debug("no cells comm: %s", err)
            return None
        channel.on_msg(self.extension_message)
        return channel

    def extension_message(self, message: dict[str, Any]) -> None:
        """A message from the extension: it is there (``hello``), or a cell was inserted."""
        data = message.get("content", {}).get("data", {}) or {}
        if data.get("hello"):
            self.extension_ready = True
        if data.get("inserted"):
            self.message.value = (
                "<span style='color:#2e7d32'>the %%finetune cell is below the panel</span>"
            )

    def close(self) -> None:
        """Stop the pending validation and the live view's polling, then close the widgets."""
        if self._timer is not None:
            self._timer.cancel()
        if self.live is not None:
            self.live.stop()
        if self._cells_comm is not None:
            self._cells_comm.close()
        super().close()

    def _validate_data(self, config: RunConfig, reread: bool) -> Any:
        import ftmagic

        if not reread and self._report is not None and self._report[0] == config:
            report = self._report[1]  # unchanged form: the data was already read
        else:
            report = ftmagic.validate(config)
            self._report = (config, report)
        self.data_html.value = report._repr_html_()
        for field, errors in _errors_by_field(report, config).items():
            more = f" (and {len(errors) - 1} more: see the Data tab)" if len(errors) > 1 else ""
            self.form.show_error(field, errors[0].describe() + more)
        return report

    def _load_preview(self, config: RunConfig) -> None:
        key = (config.model, config.train_data_path, config.task_type, config.context_length)
        if key != self._preview_key:
            self._preview_key = key
            self.preview.load(config)

    def _schedule_validation(self, _change: Any = None) -> None:
        with self._lock:
            self._edits += 1
            if self._timer is not None:
                self._timer.cancel()
            timer = threading.Timer(self.debounce_s, self._validate_in_background, (self._edits,))
            timer.daemon = True
            timer.start()
            self._timer = timer

    def _validate_in_background(self, edit: int) -> None:
        try:
            with self._lock:
                if self._validated_edit < edit:
                    self.validate_now()
        except Exception as err:  # a timer thread has no one to raise to: show and log it
            log.exception("panel validation failed")
            self.message.value = message_html(f"validation failed: {err}")

    def _run_ended(self, run: Any) -> None:
        self.cancel_button.disabled = True
        self.results.show(run)


def _errors_by_field(report: Any, config: RunConfig) -> dict[str, list[Any]]:
    """Report errors grouped under the form field they are about: a config field the error names
    (a model error under ``model``), else the data file it is in."""
    grouped: dict[str, list[Any]] = {}
    for error in report.errors:
        grouped.setdefault(error_field(error, config), []).append(error)
    return grouped


def error_field(error: Any, config: RunConfig) -> str:
    """The form field ``error`` belongs next to."""
    field = getattr(error, "field", None)
    if str(getattr(error, "source", "")) == "config" and field in RunConfig.field_names():
        return str(field)
    source = str(getattr(error, "source", "") or "")
    if config.eval_data_path and source.startswith(str(config.eval_data_path)):
        return "eval_data_path"
    return "train_data_path"


MAX_PLAUSIBLE_LR = 1.0
MAX_PLAUSIBLE_EPOCHS = 20


def implausible_values(config: RunConfig) -> dict[str, str]:
    """Warnings for values that are allowed but almost surely a slip, by field."""
    found = {}
    if config.learning_rate is not None and config.learning_rate > MAX_PLAUSIBLE_LR:
        found["learning_rate"] = (
            f"learning rate {config.learning_rate:g} is above {MAX_PLAUSIBLE_LR:g}: training will "
            "almost surely diverge. Typical: 1e-5 to 1e-3 (LoRA up to about 2e-3)"
        )
    duration = str(config.training_duration).strip().lower().replace("_", "")
    if duration.endswith("ep"):
        try:
            epochs = float(duration[:-2])
        except ValueError:
            epochs = 0.0
        if epochs > MAX_PLAUSIBLE_EPOCHS:
            found["training_duration"] = (
                f"{epochs:g} epochs is over {MAX_PLAUSIBLE_EPOCHS}: the model will likely memorise "
                "the data. Typical: 1 to 5 epochs"
            )
    return found


def panel(config: Any = None, /, **kwargs: Any) -> Panel:
    """The ipywidgets panel that builds, checks and drives a run (``ftmagic.panel``)."""
    return Panel(RunConfig.coerce(config, **kwargs) if (config or kwargs) else None)

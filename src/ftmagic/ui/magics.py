"""The ``%%finetune`` cell magic and the ``%ft`` line magic (``%load_ext ftmagic``).

``%%finetune`` turns a YAML cell into a ``RunConfig`` (see ``ftmagic.ui.cell`` for ``{var}``
substitution), then validates it (``--dry-run``) or starts the run and shows its live view.
``%ft`` drives runs that already exist: ``runs``, ``status``, ``cancel``, ``models``, ``panel``,
``chat``, ``serve``, ``gallery`` and ``promote``. Defaults are traitlets:
``%config FinetuneMagics.backend = "local"``.
User errors (``FtmagicError``) are shown as a short message, never a traceback.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool, Float, Int, Unicode, observe

from ftmagic.config import RunConfig
from ftmagic.errors import FtmagicError
from ftmagic.ui import ft_commands
from ftmagic.ui.cell import parse_cell
from ftmagic.ui.errors import show_error


def with_config_help(func: Callable[..., Any]) -> Callable[..., Any]:
    """Append every ``RunConfig`` field and its help to the magic's docstring (``%%finetune?``)."""
    lines = [f"  {name}: {text}" for name, text in RunConfig.help().items()]
    func.__doc__ = f"{func.__doc__}\nCell body (YAML), RunConfig fields:\n" + "\n".join(lines)
    return func


@magics_class
class FinetuneMagics(Magics):
    """``%%finetune`` and ``%ft``. Configure with ``%config FinetuneMagics.<name> = value``."""

    backend = Unicode(
        "", help="Backend for cells that set none (empty: RunConfig's default, inkernel)."
    ).tag(config=True)
    experiment_path = Unicode(
        "", help="MLflow experiment for cells that set none (empty: 'ftmagic')."
    ).tag(config=True)
    preview_examples = Int(2, help="Examples shown token by token by --dry-run.").tag(config=True)
    refresh_interval = Float(1.0, help="Seconds between live-view polls (at least 0.5).").tag(
        config=True
    )
    wait = Bool(False, help="Block every %%finetune cell until its run ends.").tag(config=True)
    verbose = Bool(
        False,
        help="Show third-party progress bars, warnings and logs (transformers, mlflow) in cells; "
        "off, they go to Python logging only.",
    ).tag(config=True)

    @observe("verbose")
    def _verbose_changed(self, change: dict[str, Any]) -> None:
        from ftmagic import quiet

        quiet.set_verbose(change["new"])

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        self.last_run: Any = None
        self.last_view: Any = None  # the newest live view (%%finetune or %ft status)
        if shell is not None:
            from ftmagic.ui import completion

            completion.register(shell)  # config fields and values complete in %%finetune cells

    @cell_magic
    @with_config_help
    @magic_arguments("%finetune")  # IPython adds one '%': the usage line reads %%finetune
    @argument("--dry-run", action="store_true", help="Validate the data and preview examples.")
    @argument("--backend", default=None, help="Override the backend (inkernel, local, ...).")
    @argument("-o", "--out", default=None, help="Store the Run (or dry-run report) in this name.")
    @argument("--wait", action="store_true", help="Block until the run ends.")
    def finetune(self, line: str, cell: str) -> None:
        """Fine-tune a model: the cell body is YAML with RunConfig fields; ``{var}`` inserts a
        notebook variable (``{{var}}`` is a literal). Without --wait the cell returns at once and
        the run trains in the background while the output shows its live view.
        """
        args = parse_argstring(self.finetune, line)  # type: ignore[misc]
        try:
            config = self.cell_config(cell, backend=args.backend)
            result = self._dry_run(config) if args.dry_run else self._train(config, args.wait)
        except FtmagicError as err:
            show_error(err)
            return None
        if args.out and self.shell is not None:
            self.shell.user_ns[args.out] = result
        return None

    def cell_config(self, cell: str, *, backend: str | None = None) -> RunConfig:
        """The cell's config: traitlet defaults < the YAML body < the flags."""
        defaults = {
            "backend": self.backend,
            "experiment_path": self.experiment_path,
            "verbose": self.verbose,
        }
        overrides = {"backend": backend} if backend else {}
        return parse_cell(
            cell,
            self.shell.user_ns if self.shell else {},
            defaults={k: v for k, v in defaults.items() if v},
            overrides=overrides,
        )

    def _dry_run(self, config: RunConfig) -> Any:
        import ftmagic
        from ftmagic.ui.examples import first_examples, preview_example

        report = ftmagic.validate(config)
        display_rich(report)
        try:
            for example in first_examples(config, self.preview_examples):
                display_rich(preview_example(config, example))
        except FtmagicError as err:  # the report already lists data problems; say why no preview
            show_error(err)
        return report

    def _train(self, config: RunConfig, wait: bool) -> Any:
        import ftmagic
        from ftmagic.ui.live import LiveView, display_live, status_name

        run = ftmagic.create(config)
        self.last_run = run
        view = LiveView(run, refresh_interval=self.refresh_interval, start=False)
        self.last_view = view
        display_live(view)
        if wait or self.wait:
            try:
                run.wait()
            except KeyboardInterrupt:  # stop waiting, not training: the run goes on
                print(f"stopped waiting; run {run.name} goes on (%ft cancel {run.run_id} stops it)")
                return run
            view.join()
            print(f"run {run.name} ({run.run_id}): {status_name(run.status)}")
        return run

    @line_magic
    def ft(self, line: str) -> Any:
        """Work with runs:

        %ft runs [--limit N] [--experiment PATH]   table of runs from MLflow
        %ft status [RUN]                           live view of a run (default: the last one)
        %ft compare RUN RUN ...                    overlay the loss curves of several runs
        %ft cancel RUN                             ask a run to stop
        %ft models                                 the model catalog
        %ft panel                                  the fine-tuning panel
        %ft chat RUN [--checkpoint STEP]           chat with a fine-tuned model
        %ft serve [RUN] [--port N]                 serve a run's registered model (Stop button)
        %ft gallery [RUN]                          checkpoints: eval loss, metric, generations
        %ft promote RUN STEP [--alias A] [--register-to NAME]
                                                   register a checkpoint as a model version

        RUN is a run id, a run name or a notebook variable holding a Run.
        """
        words = shlex.split(line)
        if not words:
            raise UsageError(f"%ft needs a command: {', '.join(ft_commands.COMMANDS)}")
        handler = ft_commands.COMMANDS.get(words[0])
        if handler is None:
            raise UsageError(f"unknown %ft command {words[0]!r}: {', '.join(ft_commands.COMMANDS)}")
        try:
            return handler(self, words[1:])
        except FtmagicError as err:
            show_error(err)
            return None


def display_rich(value: Any) -> None:
    """Display ``value`` as HTML with ``str(value)`` (not the dataclass repr) as the plain text."""
    display({"text/html": value._repr_html_(), "text/plain": str(value)}, raw=True)


def load_ipython_extension(ipython: Any) -> None:
    """Register ``FinetuneMagics`` (and make it configurable with ``%config``)."""
    ipython.register_magics(FinetuneMagics(ipython))

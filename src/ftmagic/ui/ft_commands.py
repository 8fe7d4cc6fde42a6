"""The ``%ft`` subcommands. Each takes the magics object and its argument words."""

from __future__ import annotations

import builtins
import html
from types import MappingProxyType
from typing import Any

from IPython.core.magic_arguments import MagicArgumentParser

from ftmagic.errors import RunError

RUN_COLUMNS = ("name", "status", "model", "loss", "steps", "duration", "started", "run_id")


class RunTable:
    """The result of ``%ft runs``: ``rows`` (tuples of ``RUN_COLUMNS``), a compact table as HTML
    or text (the full run id is in ``run_ids``; the table shows its first 8 characters)."""

    def __init__(self, runs: builtins.list[Any]) -> None:
        self.columns = RUN_COLUMNS
        self.rows = [run_row(run) for run in runs]
        self.run_ids = [str(run.run_id) for run in runs]

    def _repr_html_(self) -> str:
        head = "".join(f"<th {NOWRAP}>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td {NOWRAP} title='{html.escape(full)}'>{html.escape(_text(v))}</td>"
                if c in ("name", "run_id")
                else f"<td {NOWRAP}>{html.escape(_text(v))}</td>"
                for c, v, full in zip(self.columns, row, _titles(run_id), strict=True)
            )
            + "</tr>"
            for row, run_id in zip(self.rows, self.run_ids, strict=True)
        )
        return f"<table style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"

    def __repr__(self) -> str:
        table = [self.columns, *[tuple(_text(v) for v in r) for r in self.rows]]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(self.columns))]
        return "\n".join(
            "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        )


NOWRAP = "style='text-align:left;white-space:nowrap;padding:1px 8px;border-bottom:1px solid #ddd'"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _titles(run_id: str) -> builtins.list[str]:
    """Hover text per cell: the full run id on the name and id cells."""
    return [run_id if c in ("name", "run_id") else "" for c in RUN_COLUMNS]


def run_row(run: Any) -> tuple[Any, ...]:
    """One compact row: status, model, latest train loss, steps, duration, start."""
    from ftmagic.ui.html import clock
    from ftmagic.ui.live import status_name

    progress = dict(run.progress or {})
    latest = (getattr(run, "_data", None) or {}).get("latest", {})
    loss = latest.get("train/loss")
    total = progress.get("total_steps")
    steps = f"{progress.get('step') or 0}" + (f"/{total}" if total else "")
    created = getattr(run, "created", None)
    return (
        run.name,
        status_name(run.status),
        run.config.model,
        None if loss is None else f"{loss[1]:.4f}",
        steps,
        clock(progress.get("elapsed_s")),
        created.strftime("%Y-%m-%d %H:%M") if created else None,
        str(run.run_id)[:8],
    )


def resolve_run(magics: Any, ref: str | None) -> Any:
    """A run from a notebook variable, an id or a name; ``None`` means the last run."""
    import ftmagic

    if ref is None:
        if magics.last_run is not None:
            return magics.last_run
        runs = ftmagic.list(limit=1)
        if not runs:
            raise RunError("there are no runs yet: start one with a %%finetune cell")
        return runs[0]
    value = magics.shell.user_ns.get(ref) if magics.shell else None
    if value is not None and hasattr(value, "run_id"):
        return value
    return ftmagic.get(ref)


def _parser(name: str) -> MagicArgumentParser:
    return MagicArgumentParser(prog=f"%ft {name}", add_help=False)


def runs(magics: Any, argv: builtins.list[str]) -> RunTable:
    import ftmagic

    parser = _parser("runs")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--experiment", default=None)
    args = parser.parse_args(argv)
    return RunTable(ftmagic.list(experiment_path=args.experiment, limit=args.limit))


def status(magics: Any, argv: builtins.list[str]) -> None:
    """Show the run's live view; it turns into a summary card and curves when the run ends
    (``magics.last_view`` is the view). The checkpoint gallery shows below it once the run has
    checkpoints."""
    from ftmagic.ui.live import LiveView, display_live

    parser = _parser("status")
    parser.add_argument("run", nargs="?", default=None)
    args = parser.parse_args(argv)
    run = resolve_run(magics, args.run)
    magics.last_view = LiveView(run, refresh_interval=magics.refresh_interval, start=False)
    display_live(magics.last_view)
    if run.checkpoints:
        display_gallery(run)


def display_gallery(run: Any) -> None:
    """The run's checkpoint gallery as plain HTML and text (kept by a saved notebook)."""
    from IPython.display import display

    from ftmagic.checkpoint_gallery import gallery
    from ftmagic.ui.html import gallery_plain, gallery_text

    found = gallery(run)
    text = "\n".join([f"checkpoints of {found.run_name}:", *gallery_text(gallery_plain(found))])
    display({"text/html": found._repr_html_(), "text/plain": text}, raw=True)


def cancel(magics: Any, argv: builtins.list[str]) -> None:
    import ftmagic

    parser = _parser("cancel")
    parser.add_argument("run")
    run = resolve_run(magics, parser.parse_args(argv).run)
    ftmagic.cancel(run)
    print(f"asked run {run.name} ({run.run_id}) to stop; it ends as STOPPED after its step")


def models(magics: Any, argv: builtins.list[str]) -> Any:
    import ftmagic

    parser = _parser("models")
    parser.add_argument("--current", action="store_true", help="hide retired models")
    return ftmagic.get_models(include_retired=not parser.parse_args(argv).current)


def panel(magics: Any, argv: builtins.list[str]) -> Any:
    from ftmagic.ui.panel import Panel

    _parser("panel").parse_args(argv)
    return Panel()


def chat(magics: Any, argv: builtins.list[str]) -> Any:
    from ftmagic.ui.chat import ChatBox

    parser = _parser("chat")
    parser.add_argument("run", nargs="?", default=None)
    parser.add_argument("--checkpoint", type=int, default=None)
    args = parser.parse_args(argv)
    return ChatBox(resolve_run(magics, args.run), checkpoint=args.checkpoint)


def serve(magics: Any, argv: builtins.list[str]) -> Any:
    """Serve a run's registered model in the background, shown with a Stop button; the widget's
    ``endpoint`` is the ``Endpoint`` (``.url``, ``.chat(...)``, ``.stop()``)."""
    import ipywidgets as widgets

    parser = _parser("serve")
    parser.add_argument("run", nargs="?", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    endpoint = resolve_run(magics, args.run).serve(port=args.port)
    label = widgets.HTML(endpoint._repr_html_())
    stop_button = widgets.Button(description="Stop", button_style="danger")

    def stop(_button: Any) -> None:
        endpoint.stop()
        label.value = endpoint._repr_html_()
        stop_button.disabled = True

    stop_button.on_click(stop)
    box = widgets.HBox([label, stop_button])
    box.endpoint = endpoint
    box.stop_button = stop_button
    return box


def gallery(magics: Any, argv: builtins.list[str]) -> Any:
    """The checkpoint gallery of a run: eval loss, eval_metric and generations per checkpoint."""
    import ftmagic

    parser = _parser("gallery")
    parser.add_argument("run", nargs="?", default=None)
    return ftmagic.gallery(resolve_run(magics, parser.parse_args(argv).run))


def promote(magics: Any, argv: builtins.list[str]) -> None:
    """Register a checkpoint of a run as a model version, optionally moving an alias to it."""
    import ftmagic

    parser = _parser("promote")
    parser.add_argument("run")
    parser.add_argument("step", type=int)
    parser.add_argument("--alias", default=None)
    parser.add_argument("--register-to", default=None)
    args = parser.parse_args(argv)
    run = resolve_run(magics, args.run)
    ref = ftmagic.promote(run, args.step, register_to=args.register_to, alias=args.alias)
    alias = f" (alias {args.alias})" if args.alias else ""
    print(f"checkpoint {args.step} of run {run.name} is {ref}{alias}")


class LossComparison:
    """The result of ``%ft compare``: the train/eval loss of several runs overlaid. ``figure`` is a
    plotly figure (hover, zoom, legend toggles) or ``None`` without plotly; it displays as that
    figure plus a PNG of the same curves, which a saved notebook keeps either way."""

    METRICS = ("train/loss", "eval/loss")

    def __init__(self, runs: builtins.list[Any]) -> None:
        from ftmagic.ui import charts

        self.names = unique_names(runs)
        self.metrics = {
            name: run.metrics(list(self.METRICS))
            for name, run in zip(self.names, runs, strict=True)
        }
        self.figure = (
            charts.compare_figure(self.metrics) if charts.interactive_available() else None
        )

    def png(self) -> bytes:
        from ftmagic.ui.plot import compare_png

        return compare_png(self.metrics)

    def _repr_mimebundle_(self, **_kwargs: Any) -> dict[str, Any]:
        import base64

        bundle: dict[str, Any] = {
            "image/png": base64.b64encode(self.png()).decode("ascii"),
            "text/plain": f"<loss of runs {', '.join(self.names)}>",
        }
        if self.figure is not None:
            bundle["application/vnd.plotly.v1+json"] = self.figure.to_plotly_json()
        return bundle


def unique_names(runs: builtins.list[Any]) -> builtins.list[str]:
    """Run names for the legend; a name used twice gets its run id's first 8 characters."""
    names = [str(getattr(run, "name", "") or run.run_id) for run in runs]
    return [
        f"{name} ({str(run.run_id)[:8]})" if names.count(name) > 1 else name
        for name, run in zip(names, runs, strict=True)
    ]


def compare(magics: Any, argv: builtins.list[str]) -> LossComparison:
    """Overlay the train and eval loss of two or more runs in one figure."""
    parser = _parser("compare")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    runs = [resolve_run(magics, ref) for ref in args.runs]
    for run in runs:
        run.refresh()
    return LossComparison(runs)


COMMANDS = MappingProxyType(
    {
        "runs": runs,
        "status": status,
        "cancel": cancel,
        "models": models,
        "panel": panel,
        "chat": chat,
        "serve": serve,
        "gallery": gallery,
        "promote": promote,
        "compare": compare,
    }
)

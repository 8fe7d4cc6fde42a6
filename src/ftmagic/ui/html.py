"""Small pure functions that turn run data into HTML for the live view, the panel and ``%ft``.

They take plain values (dicts, lists, strings), never widgets, so they are easy to test.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

from ftmagic.tracking.state import RunStatus

TABLE = "<table style='border-collapse:collapse;text-align:left'>"
CELL = "style='text-align:left;vertical-align:top;padding:2px 8px;border-bottom:1px solid #ddd'"

STATUS_COLORS: MappingProxyType[str, str] = MappingProxyType(
    {
        RunStatus.PENDING: "#757575",
        RunStatus.RUNNING: "#1565c0",
        RunStatus.COMPLETED: "#2e7d32",
        RunStatus.FAILED: "#c62828",
        RunStatus.STOPPED: "#ef6c00",
    }
)


def clock(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss``) for a duration; an em dash when unknown.

    >>> clock(75), clock(3725), clock(None)
    ('1:15', '1:02:05', '—')
    """
    if seconds is None or seconds < 0:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status_badge(status: str, reason: str | None = None) -> str:
    color = STATUS_COLORS.get(status, "#757575")
    badge = (
        f"<span style='background:{color};color:white;border-radius:3px;padding:1px 6px'>"
        f"{html.escape(status)}</span>"
    )
    if reason:
        badge += f" <span style='color:#555'>{html.escape(reason)}</span>"
    return badge


SETUP_STAGES = MappingProxyType(
    {
        "CREATED": "starting",
        RunStatus.PENDING: "starting",
        RunStatus.RUNNING: "validating the data",
        "DATA_VALIDATED": "tokenizing the data and loading the model",
        "MODEL_INITIALIZED": "packing and running the first step",
        "TRAIN_STARTED": "running the first step",
    }
)


def setup_stage(events: Sequence[Any]) -> str | None:
    """What a run that has not logged a step yet is doing, from its newest known event."""
    for event in reversed(list(events)):
        stage = SETUP_STAGES.get(str(getattr(event, "type", "")))
        if stage is not None:
            return stage
    return None


def progress_html(
    progress: dict[str, Any], status: str, reason: str | None = None, stage: str | None = None
) -> str:
    """One line: status, step of total (or the setup stage before the first step), tokens,
    elapsed and ETA."""
    step = progress.get("step") or 0
    total = progress.get("total_steps")
    tokens = progress.get("tokens") or 0
    setup = stage is not None and not step and status in (RunStatus.PENDING, RunStatus.RUNNING)
    parts = [
        f"<i>{html.escape(stage or '')}…</i>" if setup else f"step {step} of {total or '?'}",
        f"{int(tokens):,} tokens",
        f"elapsed {clock(progress.get('elapsed_s'))}",
        f"ETA {clock(progress.get('eta_s')) if status == RunStatus.RUNNING else '—'}",
    ]
    return f"{status_badge(status, reason)} &nbsp; " + " · ".join(parts)


def events_html(events: Sequence[Any], *, last: int = 8) -> str:
    """The newest ``last`` events, oldest first, as a compact list."""
    if not events:
        return "<i style='color:#777'>no events yet</i>"
    rows = []
    for event in list(events)[-last:]:
        step = f" (step {event.step})" if getattr(event, "step", None) is not None else ""
        rows.append(
            f"<li><code>{html.escape(str(event.type))}</code>{step}: "
            f"{html.escape(str(event.message))}</li>"
        )
    return "<ul style='margin:2px 0;padding-left:18px'>" + "".join(rows) + "</ul>"


def generations_html(generations: Sequence[dict[str, Any]]) -> str:
    """The eval-prompt generations of the newest checkpoint."""
    if not generations:
        return "<i style='color:#777'>no generations yet (they come with each checkpoint)</i>"
    newest = max(int(g.get("step", 0)) for g in generations)
    rows = [g for g in generations if int(g.get("step", 0)) == newest]
    table = table_html(("prompt", "response"), [(g.get("prompt"), g.get("response")) for g in rows])
    return f"<b>generations at step {newest}</b>{table}"


def generations_by_checkpoint_html(generations: Sequence[dict[str, Any]]) -> str:
    """A prompt-by-checkpoint grid: one row per eval prompt, one column per checkpoint step."""
    if not generations:
        return "<i style='color:#777'>no generations (set eval_prompts to see the model learn)</i>"
    steps = sorted({int(g.get("step", 0)) for g in generations})
    prompts = list(dict.fromkeys(str(g.get("prompt")) for g in generations))
    answer = {(str(g.get("prompt")), int(g.get("step", 0))): g.get("response") for g in generations}
    head = f"<tr><th {CELL}>prompt</th>" + "".join(f"<th {CELL}>step {s}</th>" for s in steps)
    body = "".join(
        f"<tr><td {CELL}>{_cell(p)}</td>"
        + "".join(f"<td {CELL}>{_cell(answer.get((p, s), ''))}</td>" for s in steps)
        + "</tr>"
        for p in prompts
    )
    return f"{TABLE}{head}</tr>{body}</table>"


def serve_command(registered_model: str, *, port: int = 5001) -> str:
    """The shell command that serves a registered model locally."""
    return (
        f"mlflow models serve -m {registered_model} --host 127.0.0.1 --port {port} "
        "--env-manager local"
    )


def results_html(registered_model: str | None, tracking_uri: str | None = None) -> str:
    """Where the final model is and how to serve it."""
    if not registered_model:
        return "<i style='color:#777'>no registered model (set register_to to register one)</i>"
    env = f"MLFLOW_TRACKING_URI={tracking_uri} " if tracking_uri else ""
    command = html.escape(env + serve_command(registered_model))
    return (
        f"<b>registered model</b>: <code>{html.escape(registered_model)}</code><br>"
        f"serve it: <pre style='margin:2px 0'>{command}</pre>"
    )


def table_html(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th {CELL}>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td {CELL}>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"{TABLE}<tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return f"<span style='white-space:pre-wrap'>{html.escape(text)}</span>"


def ui_command(tracking_uri: str | None) -> str:
    """The shell command that opens MLflow's UI on the run's store."""
    return f"mlflow ui --backend-store-uri {tracking_uri}" if tracking_uri else "mlflow ui"


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's rows as (label, text); rows whose value is unknown are left out."""

    def loss(value: Any) -> str | None:
        return None if value is None else f"{float(value):.4f}"

    step, total = summary.get("step"), summary.get("total_steps")
    tokens, speed = summary.get("tokens"), summary.get("tokens_per_s")
    rows = [
        ("final eval loss", loss(summary.get("final_eval_loss"))),
        ("best eval loss", loss(summary.get("best_eval_loss"))),
        ("final train loss", loss(summary.get("final_train_loss"))),
        ("steps", None if step is None else f"{step}" + (f" of {total}" if total else "")),
        ("tokens", None if tokens is None else f"{int(tokens):,}"),
        ("duration", _took(summary)),
        ("tokens/s", None if speed is None else f"{float(speed):,.0f}"),
        ("checkpoints", _checkpoints(summary.get("checkpoints") or [])),
        ("registered model", summary.get("registered_model")),
        ("run", f"{summary.get('name', '')} ({summary.get('run_id', '')})"),
    ]
    return [(label, text) for label, text in rows if text]


def _took(summary: dict[str, Any]) -> str | None:
    took = summary.get("elapsed_s")
    if took is None:
        return None
    if summary.get("timing"):  # the trainer's own "estimated X, took Y" for training
        return f"{clock(took)} ({summary['timing']})"
    estimated = summary.get("estimated_s")
    return f"{clock(took)} (estimated {clock(estimated)})" if estimated else clock(took)


def _checkpoints(steps: Sequence[int]) -> str | None:
    if not steps:
        return None
    shown = ", ".join(str(s) for s in list(steps)[-6:])
    return f"{len(steps)} (steps {'…, ' if len(steps) > 6 else ''}{shown})"


def summary_commands(summary: dict[str, Any]) -> list[str]:
    """``mlflow ui`` for every run, plus ``mlflow models serve`` when a model was registered."""
    uri = summary.get("tracking_uri")
    commands = [ui_command(uri)]
    if summary.get("registered_model"):
        env = f"MLFLOW_TRACKING_URI={uri} " if uri else ""
        commands.append(env + serve_command(summary["registered_model"]))
    return commands


GALLERY_OPEN_CHARS = 240  # generations longer than this (all together) start collapsed


def gallery_plain(gallery: Any) -> dict[str, Any]:
    """A ``Gallery`` as plain values (what the summary card keeps)."""
    from dataclasses import asdict

    return {
        "run_name": gallery.run_name,
        "metric_name": gallery.metric_name,
        "rows": [asdict(row) for row in gallery.rows],
    }


def gallery_card_html(gallery: dict[str, Any]) -> str:
    """The checkpoint gallery for the summary card: one row per checkpoint, the best marked, each
    row's generations folded into a ``<details>`` when they are long."""
    metric = html.escape(gallery.get("metric_name") or "metric")
    columns = ("step", "eval loss", metric, "generations (prompt → answer | reference)", "models")
    head = "".join(f"<th {CELL}>{c}</th>" for c in columns)
    body = "".join(_gallery_row_html(row) for row in gallery.get("rows", []))
    return f"<div><b>checkpoints</b>{TABLE}<tr>{head}</tr>{body}</table></div>"


def _gallery_row_html(row: dict[str, Any]) -> str:
    from ftmagic.checkpoint_gallery import SHOWN_GENERATIONS, _short

    shown = list(row.get("generations") or [])[:SHOWN_GENERATIONS]
    lines = [
        f"{html.escape(_short(str(g.get('prompt', ''))))} → "
        f"<code>{html.escape(str(g.get('prediction', '')))}</code>"
        f" | <code>{html.escape(str(g.get('reference', '')))}</code>"
        for g in shown
    ]
    answers = "<br>".join(lines)
    if sum(len(line) for line in lines) > GALLERY_OPEN_CHARS:
        answers = f"<details><summary>{len(lines)} generations</summary>{answers}</details>"
    best = bool(row.get("best"))
    style = " style='background:#e8f5e9'" if best else ""
    cells = (
        f"{row.get('step')}{' ★ best' if best else ''}",
        _score(row.get("eval_loss")),
        _score(row.get("metric")),
        answers,
        html.escape(", ".join(row.get("models") or [])),
    )
    return f"<tr{style}>" + "".join(f"<td {CELL}>{c}</td>" for c in cells) + "</tr>"


def _score(value: Any) -> str:
    return "—" if value is None else f"{float(value):.4f}"


def gallery_text(gallery: dict[str, Any]) -> list[str]:
    """The gallery as text lines: step, eval loss, metric, the best marked."""
    metric = gallery.get("metric_name") or "metric"
    return [
        f"step {row.get('step')}: eval loss {_score(row.get('eval_loss'))}, "
        f"{metric} {_score(row.get('metric'))}{' (best)' if row.get('best') else ''}"
        for row in gallery.get("rows", [])
    ]


def summary_card_html(summary: dict[str, Any]) -> str:
    """A run's end as a self-contained HTML card (inline styles only: it is saved in notebooks
    and shown without a kernel, on GitHub and by nbconvert)."""
    title = html.escape(str(summary.get("name", "")))
    badge = status_badge(str(summary.get("status", "")), summary.get("status_reason"))
    rows = "".join(
        f"<tr><th {CELL}>{html.escape(label)}</th><td {CELL}>{_cell(text)}</td></tr>"
        for label, text in summary_rows(summary)
    )
    commands = "".join(
        f"<pre style='margin:2px 0;white-space:pre-wrap'>{html.escape(c)}</pre>"
        for c in summary_commands(summary)
    )
    gallery = gallery_card_html(summary["gallery"]) if summary.get("gallery") else ""
    return (
        "<div class='ftmagic-summary' style='border:1px solid #ddd;border-radius:4px;"
        "padding:6px 10px;max-width:760px'>"
        f"<div><b>{title}</b> &nbsp; {badge}</div>{TABLE}{rows}</table>{gallery}{commands}</div>"
    )


def summary_text(summary: dict[str, Any]) -> str:
    """The same card as plain text, for terminals and text-only viewers."""
    reason = summary.get("status_reason")
    head = f"run {summary.get('name', '')}: {summary.get('status', '')}"
    lines = [head + (f" ({reason})" if reason else "")]
    lines += [f"  {label:<17}{text}" for label, text in summary_rows(summary)]
    if summary.get("gallery"):
        lines += [f"  {line}" for line in gallery_text(summary["gallery"])]
    lines += [f"  {command}" for command in summary_commands(summary)]
    return "\n".join(lines)

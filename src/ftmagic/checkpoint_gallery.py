"""The checkpoint gallery: one row per checkpoint with its eval loss, the run's ``eval_metric`` and
the generations it was scored on, the best checkpoint marked; and ``promote`` to register any
checkpoint as a model version or move an alias such as ``champion`` to it."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftmagic.errors import RunError

if TYPE_CHECKING:
    from ftmagic.tracking.run import Run

STEP_TAG = "ftmagic.checkpoint_step"
RUN_TAG = "ftmagic.run_id"
SHOWN_GENERATIONS = 3


@dataclass
class GalleryRow:
    step: int
    eval_loss: float | None
    metric: float | None
    generations: list[dict[str, str]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # versions promoted from this checkpoint
    best: bool = False


@dataclass
class Gallery:
    """A run's checkpoints side by side (``rows``); ``best_step`` has the highest metric (the
    lowest eval loss when the run has no ``eval_metric``)."""

    run_name: str
    metric_name: str | None
    rows: list[GalleryRow]

    @property
    def best_step(self) -> int | None:
        return next((r.step for r in self.rows if r.best), None)

    def row(self, step: int) -> GalleryRow:
        found = next((r for r in self.rows if r.step == step), None)
        if found is None:
            steps = ", ".join(str(r.step) for r in self.rows) or "none"
            raise RunError(f"run {self.run_name} has no checkpoint at step {step} (it has {steps})")
        return found

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "step": r.step,
                    "eval_loss": r.eval_loss,
                    self.metric_name or "metric": r.metric,
                    "best": r.best,
                    "models": ", ".join(r.models),
                }
                for r in self.rows
            ]
        )

    def _repr_html_(self) -> str:
        metric = html.escape(self.metric_name or "metric")
        head = (
            f"<tr><th>step</th><th>eval loss</th><th>{metric}</th>"
            "<th>generations (prompt → answer | reference)</th><th>models</th></tr>"
        )
        body = "".join(_row_html(r) for r in self.rows)
        title = f"<b>checkpoints of {html.escape(self.run_name)}</b>"
        return f"<div>{title}<table>{head}{body}</table></div>"


def _row_html(row: GalleryRow) -> str:
    mark = " ★ best" if row.best else ""
    shown = row.generations[:SHOWN_GENERATIONS]
    answers = "<br>".join(
        f"{html.escape(_short(g['prompt']))} → <code>{html.escape(g['prediction'])}</code>"
        f" | <code>{html.escape(g['reference'])}</code>"
        for g in shown
    )
    style = " style='background:#e8f5e9'" if row.best else ""
    return (
        f"<tr{style}><td>{row.step}{mark}</td><td>{_num(row.eval_loss)}</td>"
        f"<td>{_num(row.metric)}</td><td style='text-align:left'>{answers}</td>"
        f"<td>{html.escape(', '.join(row.models))}</td></tr>"
    )


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def gallery(run: Run) -> Gallery:
    """The gallery of ``run`` read from MLflow."""
    from ftmagic.metrics import metric_key
    from ftmagic.tracking import store

    name = run.config.eval_metric
    key = metric_key(name) if name else None
    scores = dict(run.metrics([key])[key]) if key else {}
    generations: dict[int, list[dict[str, str]]] = {}
    for g in store.read_scored_generations(run.run_id, uri=run.tracking_uri):
        generations.setdefault(int(g["step"]), []).append(g)
    models: dict[int, list[str]] = {}
    for version in store.run_model_versions(run.run_id, uri=run.tracking_uri):
        if STEP_TAG in version["tags"]:
            aliases = "".join(f" @{a}" for a in version["aliases"])
            models.setdefault(int(version["tags"][STEP_TAG]), []).append(version["uri"] + aliases)
    rows = [
        GalleryRow(
            step=c.step,
            eval_loss=c.eval_loss,
            metric=scores.get(c.step),
            generations=generations.get(c.step, []),
            models=models.get(c.step, []),
        )
        for c in run.checkpoints
    ]
    _mark_best(rows)
    return Gallery(run.name, name.removeprefix("python:") if name else None, rows)


def _mark_best(rows: list[GalleryRow]) -> None:
    scored = [r for r in rows if r.metric is not None]
    if scored:
        max(scored, key=lambda r: (r.metric, -r.step)).best = True
        return
    losses = [r for r in rows if r.eval_loss is not None]
    if losses:
        min(losses, key=lambda r: (r.eval_loss, r.step)).best = True


def promote(
    run: Run, step: int, *, register_to: str | None = None, alias: str | None = None
) -> str:
    """Register checkpoint ``step`` of ``run`` as a new version of the model ``register_to``
    (default: the run's own ``register_to``), or reuse the version already promoted from it; then
    point ``alias`` at it. Returns ``models:/name/version``."""
    from ftmagic.config import check_register_to
    from ftmagic.models.loading import model_folder
    from ftmagic.tracking import store

    target = register_to or run.config.register_to
    if not target:
        raise RunError(
            f"run {run.name} has no register_to. Fix: "
            f"ftmagic.promote(run, {step}, register_to='catalog.schema[.name]')"
        )
    check_register_to(target)
    name = store.registered_model_name(target, run.name)
    reference = _promoted_version(run, step, name)
    if reference is None:
        folder = model_folder(store.download_checkpoint(run.run_id, step, uri=run.tracking_uri))
        reference = store.register_model(run.run_id, folder, target, run.name, uri=run.tracking_uri)
        store.tag_model_version(
            reference, {RUN_TAG: run.run_id, STEP_TAG: step}, uri=run.tracking_uri
        )
    if alias:
        store.set_model_alias(reference, alias, uri=run.tracking_uri)
    return reference


def _promoted_version(run: Run, step: int, name: str) -> str | None:
    from ftmagic.tracking import store

    for version in store.run_model_versions(run.run_id, uri=run.tracking_uri):
        same_model = version["uri"].startswith(f"models:/{name}/")
        if same_model and version["tags"].get(STEP_TAG) == str(step):
            return str(version["uri"])
    return None

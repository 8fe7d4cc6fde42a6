"""The public Python API, shaped like the hosted product's ``fm.*`` functions.

Each function is a thin, typed entry that imports its implementation lazily, so ``import ftmagic``
stays cheap. The CLI, the magics, the panel and the Jupyter server extension all call these.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.config import RunConfig, TaskType

if TYPE_CHECKING:
    from ftmagic.catalog import ModelList
    from ftmagic.checkpoint_gallery import Gallery
    from ftmagic.data.preview import Preview
    from ftmagic.data.validate import ValidationReport
    from ftmagic.tracking.run import Checkpoint, Event, Run
    from ftmagic.tracking.serving import Endpoint

ConfigLike = RunConfig | dict[str, Any] | str | Path | None


def get_models(*, include_retired: bool = True) -> ModelList:
    """The model catalog: hosted-product models, small open models and the built-in tiny models."""
    from ftmagic.catalog import get_models as impl

    return impl(include_retired=include_retired)


def validate(config: ConfigLike = None, /, **kwargs: Any) -> ValidationReport:
    """Validate a run's data and settings; returns a report (never raises for bad data)."""
    from ftmagic.data.validate import validate as impl
    from ftmagic.train.calibration import measure

    return impl(RunConfig.coerce(config, **kwargs), measure=measure)


def preview(
    model: str,
    example: dict[str, Any] | str,
    *,
    task_type: str = TaskType.CHAT_COMPLETION,
    context_length: int | None = None,
) -> Preview:
    """Render one example exactly as training sees it: each token, its id, whether it is trained."""
    from ftmagic.data.preview import preview as impl

    return impl(model, example, task_type=task_type, context_length=context_length)


def create(config: ConfigLike = None, /, **kwargs: Any) -> Run:
    """Start a fine-tuning run on ``config.backend`` and return its ``Run`` at once."""
    from ftmagic.runners import launch

    resolved = RunConfig.coerce(config, **kwargs)
    _check_metric_backend(resolved)
    return launch(resolved)


def _check_metric_backend(config: RunConfig) -> None:
    from ftmagic.errors import ConfigError

    metric = config.eval_metric or ""
    if metric.startswith("python:") and config.backend != "inkernel":
        raise ConfigError(
            "eval_metric",
            f"is a function of this kernel, which backend {config.backend} cannot call",
            value=metric,
            suggestion="Fix: use backend inkernel, or a built-in metric (e.g. json_list_f1)",
        )


def get(run: Run | str) -> Run:
    """A run by id or name, read from MLflow."""
    from ftmagic.tracking.run import get_run

    return get_run(run)


def list(  # mirrors fm.list, so it shadows the builtin
    *, experiment_path: str | None = None, limit: int = 50
) -> builtins.list[Run]:
    """Runs, newest first."""
    from ftmagic.tracking.run import list_runs

    return list_runs(experiment_path=experiment_path, limit=limit)


def cancel(run: Run | str) -> Run:
    """Ask a run to stop: it finishes its step, writes a checkpoint and ends as STOPPED."""
    from ftmagic.runners import cancel as impl

    return impl(get(run))


def delete(run: Run | str) -> None:
    """Delete a finished run and its artifacts from MLflow."""
    from ftmagic.tracking.run import delete_run

    delete_run(get(run))


def get_events(run: Run | str) -> builtins.list[Event]:
    return get(run).events


def get_checkpoints(run: Run | str) -> builtins.list[Checkpoint]:
    return get(run).checkpoints


def resume(run: Run | str, *, backend: str | None = None) -> Run:
    """Continue a stopped, failed or killed run from its last committed checkpoint."""
    from ftmagic.runners import resume as impl

    return impl(get(run), backend=backend)


def serve(model_uri: str, *, port: int | None = None, timeout: float = 300.0) -> Endpoint:
    """Serve ``model_uri`` with ``mlflow models serve`` on 127.0.0.1 in the background; the
    returned ``Endpoint`` has ``.url``, ``.chat(...)``, ``.logs()``, ``.stop()``."""
    from ftmagic.tracking.serving import serve as impl

    return impl(model_uri, port=port, timeout=timeout)


def promote(
    run: Run | str, step: int, *, register_to: str | None = None, alias: str | None = None
) -> str:
    """Register checkpoint ``step`` of ``run`` as a new model version (under ``register_to``,
    default the run's own) and optionally point ``alias`` (e.g. ``champion``) at it; returns
    ``models:/name/version``."""
    from ftmagic.checkpoint_gallery import promote as impl

    return impl(get(run), step, register_to=register_to, alias=alias)


def gallery(run: Run | str) -> Gallery:
    """The checkpoint gallery of ``run``: one row per checkpoint with its eval loss, its
    ``eval_metric`` and the generations it was scored on; the best one marked."""
    from ftmagic.checkpoint_gallery import gallery as impl

    return impl(get(run))


def rerun(run: Run | str, *, backend: str | None = None) -> Run:
    """Start a new run with ``run``'s resolved config and seed (on ``backend``, default the
    original's). Its summary (``run.reproducibility``) says whether the data or the package
    versions changed since the original; a change seen before the start is also an event."""
    from ftmagic.runners import backend_module
    from ftmagic.tracking import state
    from ftmagic.tracking.client import set_tag
    from ftmagic.tracking.reproduce import RERUN_OF_TAG, preflight_changes

    original = get(run)
    config = original.config if backend is None else original.config.replace(backend=backend)
    changed = preflight_changes(original.run_id, config, uri=original.tracking_uri)
    run_id = state.create_run(config, backend=config.backend)
    set_tag(run_id, RERUN_OF_TAG, original.run_id)
    note = "; changed since: " + "; ".join(changed) if changed else ""
    state.add_event(run_id, "RERUN_OF", f"rerun of {original.name} ({original.run_id}){note}")
    try:
        backend_module(config.backend).submit(config, run_id, resume=False)
    except Exception as err:
        state.set_status(
            run_id, state.RunStatus.FAILED, f"backend {config.backend} could not start: {err}"
        )
        raise
    return get(run_id)

"""The public Python API, shaped like the hosted product's ``fm.*`` functions.

Each function is a thin, typed entry that imports its implementation lazily, so ``import ftmagic``
stays cheap. The CLI, the magics, the panel and the Jupyter server extension all call these.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.config import RunConfig

if TYPE_CHECKING:
    from ftmagic.catalog import ModelList
    from ftmagic.data.preview import Preview
    from ftmagic.data.validate import ValidationReport
    from ftmagic.tracking.run import Checkpoint, Event, Run

ConfigLike = RunConfig | dict[str, Any] | str | Path | None


def get_models(*, include_retired: bool = True) -> ModelList:
    """The model catalog: hosted-product models, small open models and the built-in tiny models."""
    from ftmagic.catalog import get_models as impl

    return impl(include_retired=include_retired)


def validate(config: ConfigLike = None, /, **kwargs: Any) -> ValidationReport:
    """Validate a run's data and settings; returns a report (never raises for bad data)."""
    from ftmagic.data.validate import validate as impl

    return impl(RunConfig.coerce(config, **kwargs))


def preview(
    model: str,
    example: dict[str, Any] | str,
    *,
    task_type: str = "CHAT_COMPLETION",
    context_length: int | None = None,
) -> Preview:
    """Render one example exactly as training sees it: each token, its id, whether it is trained."""
    from ftmagic.data.preview import preview as impl

    return impl(model, example, task_type=task_type, context_length=context_length)


def create(config: ConfigLike = None, /, **kwargs: Any) -> Run:
    """Start a fine-tuning run on ``config.backend`` and return its ``Run`` at once."""
    from ftmagic.runners import launch

    return launch(RunConfig.coerce(config, **kwargs))


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


def panel(config: ConfigLike = None, /, **kwargs: Any) -> Any:
    """The ipywidgets panel that builds, checks and drives a run."""
    from ftmagic.ui.panel import Panel

    return Panel(RunConfig.coerce(config, **kwargs) if (config or kwargs) else None)

"""Drop-in for the retired hosted SDK: ``from ftmagic import foundation_model as fm``.

Scripts written for ``from databricks.model_training import foundation_model as fm`` run
unchanged apart from the import: the same functions, argument names, defaults, run statuses and
event names, returning a ``TrainingRun``. Training happens here (``backend`` and ftmagic's other
config fields are accepted as extra keyword arguments); see ``docs/migrating.md``.

Importing this module is cheap: torch, transformers and mlflow load when a function is called.
"""

from __future__ import annotations

import builtins
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.config import TaskType
from ftmagic.errors import ConfigError, RunError
from ftmagic.tracking.state import TERMINAL
from ftmagic.tracking.state import RunStatus as TrackedStatus

if TYPE_CHECKING:
    from ftmagic.catalog import ModelList
    from ftmagic.tracking.run import Checkpoint, Run

__all__ = [
    "FinetuningEvent",
    "HostedOnlyArgument",
    "RunStatus",
    "TrainingRun",
    "cancel",
    "create",
    "delete",
    "get",
    "get_checkpoints",
    "get_events",
    "get_models",
    "list",
]

VOLUMES_ROOT_ENV = "FTMAGIC_VOLUMES_ROOT"
"""Where ``dbfs:/Volumes/...`` paths are mounted on this machine (default ``/Volumes``)."""

HOSTED_ONLY = {
    "data_prep_cluster_id": (
        "data is read and tokenized by the process that trains, so there is no data-preparation "
        "cluster to choose"
    ),
}
"""Arguments of the hosted ``create`` that have no meaning outside the hosted platform."""


class HostedOnlyArgument(UserWarning):
    """An argument of the hosted SDK that ftmagic accepts and ignores."""


class RunStatus(str, Enum):
    """The hosted run statuses; a value compares equal to its name (``status == "COMPLETED"``)."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        return self.value in TERMINAL


EVENT_NAMES = {
    "SUBMITTED": "QUEUED",
    "RUNNING": "STARTED",
    "CANCEL_REQUESTED": "STOPPING",
    "TRAIN_FINISHED": "TRAIN_FINISHED",
    "REGISTERED": "MODEL_REGISTERED",
}
"""ftmagic event types under their hosted names; the others (CREATED, DATA_VALIDATED,
TRAIN_STARTED, CHECKPOINT_SAVED, COMPLETED, STOPPED, FAILED, ...) are the same in both."""


@dataclass(frozen=True)
class FinetuningEvent:
    """One entry of a run's timeline, as ``fm.get_events`` returned it."""

    type: str
    time: datetime
    message: str


@dataclass
class TrainingRun:
    """A fine-tuning run with the hosted ``TrainingRun`` fields.

    Anything else is read from the ftmagic ``Run`` behind it (``run.serve()``, ``run.generate()``,
    ``run.metrics()``, ``run.wait()``, ...), which ``run.ftmagic_run`` returns.
    """

    name: str
    status: RunStatus
    model: str
    train_data_path: str
    register_to: str | None
    task_type: str
    experiment_path: str
    eval_data_path: str | None = None
    eval_prompts: builtins.list[str] = field(default_factory=builtins.list)
    custom_weights_path: str | None = None
    training_duration: str | None = None
    learning_rate: float | None = None
    context_length: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    estimated_end_time: datetime | None = None
    details: str | None = None
    run_id: str = ""
    _run: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_run(cls, run: Run) -> TrainingRun:
        config = run.config
        events = run.events
        started = next((e.time for e in events if e.type == TrackedStatus.RUNNING), None)
        completed = None
        if run.is_done:
            completed = next((e.time for e in reversed(events) if e.type == run.status), None)
        eta = run.progress["eta_s"]
        return cls(
            name=run.name,
            status=hosted_status(run),
            model=config.model,
            train_data_path=config.train_data_path,
            register_to=config.register_to,
            task_type=config.task_type,
            experiment_path=run.experiment_path,
            eval_data_path=config.eval_data_path,
            eval_prompts=builtins.list(config.eval_prompts),
            custom_weights_path=config.custom_weights_path,
            training_duration=config.training_duration,
            learning_rate=config.learning_rate,
            context_length=config.context_length,
            created_at=run.created,
            started_at=started,
            completed_at=completed,
            estimated_end_time=_eta(eta),
            details=run.status_reason,
            run_id=run.run_id,
            _run=run,
        )

    @property
    def ftmagic_run(self) -> Run:
        return self._run  # type: ignore[no-any-return]

    def refresh(self) -> TrainingRun:
        """A fresh copy of this run, read again from MLflow."""
        return get(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._run, name)


def hosted_status(run: Run) -> RunStatus:
    """PENDING until a backend took the run, then QUEUED until it trains; the rest as is."""
    status = run.status
    if status == TrackedStatus.PENDING:
        submitted = any(e.type == "SUBMITTED" for e in run.events)
        return RunStatus.QUEUED if submitted else RunStatus.PENDING
    return RunStatus(str(status))


def _eta(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + seconds, timezone.utc)


# --- paths ---------------------------------------------------------------------------------------


def local_path(path: str | os.PathLike[str] | None, field_name: str) -> str | None:
    """``dbfs:/Volumes/...`` as ``/Volumes/...`` when that mount exists here; a clear error for
    other DBFS paths and for volumes that are not mounted."""
    if path is None:
        return None
    path = os.fspath(path)
    if not path.startswith("dbfs:"):
        return path
    rest = path[len("dbfs:") :]
    if rest.startswith("/Volumes/"):
        root = Path(os.environ.get(VOLUMES_ROOT_ENV) or "/Volumes")
        if root.is_dir():
            return str(root / rest[len("/Volumes/") :])
        raise ConfigError(
            field_name,
            f"is a Unity Catalog volume path, and no volume is mounted at {root} on this machine",
            value=path,
            suggestion=(
                "Fix: copy the file here and pass its local path, mount the volumes at /Volumes, "
                f"or set {VOLUMES_ROOT_ENV} to where they are mounted"
            ),
        )
    raise ConfigError(
        field_name,
        "is a DBFS path, which only a Databricks cluster can read",
        value=path,
        suggestion="Fix: copy the file here (databricks fs cp) and pass its local path",
    )


# --- the hosted functions ------------------------------------------------------------------------


def create(
    model: str,
    train_data_path: str,
    register_to: str | None = None,
    *,
    task_type: str = TaskType.CHAT_COMPLETION,
    training_duration: str | None = None,
    learning_rate: str | float | None = None,
    context_length: int | None = None,
    eval_data_path: str | None = None,
    eval_prompts: builtins.list[str] | str | None = None,
    custom_weights_path: str | None = None,
    experiment_path: str | None = None,
    validate_inputs: bool = True,
    data_prep_cluster_id: str | None = None,
    **ftmagic_fields: Any,
) -> TrainingRun:
    """Start a fine-tuning run, as the hosted ``fm.create`` did; returns its ``TrainingRun`` at
    once. ftmagic's own config fields (``method``, ``backend``, ``tokens_per_batch``, ...) may be
    passed as extra keyword arguments."""
    from ftmagic import api

    _note_hosted_only({"data_prep_cluster_id": data_prep_cluster_id})
    fields: dict[str, Any] = {
        "model": model,
        "train_data_path": local_path(train_data_path, "train_data_path"),
        "register_to": register_to,
        "task_type": task_type,
        "learning_rate": learning_rate,
        "context_length": context_length,
        "eval_data_path": local_path(eval_data_path, "eval_data_path"),
        "eval_prompts": eval_prompts or [],
        "custom_weights_path": local_path(custom_weights_path, "custom_weights_path"),
        "experiment_path": experiment_path,
        "validate_inputs": validate_inputs,
    }
    if training_duration is not None:
        fields["training_duration"] = training_duration
    fields.update(ftmagic_fields)
    return TrainingRun.from_run(api.create(**fields))


def _note_hosted_only(values: dict[str, Any]) -> None:
    given = [name for name, value in values.items() if value is not None]
    if given:
        reasons = "; ".join(f"{name}: {HOSTED_ONLY[name]}" for name in given)
        warnings.warn(
            f"ignored (only meaningful on the hosted platform): {reasons}",
            HostedOnlyArgument,
            stacklevel=3,
        )


def get(finetuning_run: str | TrainingRun | Run) -> TrainingRun:
    """A run by name, MLflow run id or run object, read again."""
    from ftmagic import api

    return TrainingRun.from_run(api.get(_ref(finetuning_run)))


def list(  # mirrors fm.list, so it shadows the builtin
    finetuning_runs: builtins.list[str | TrainingRun] | None = None,
    *,
    user_emails: builtins.list[str] | None = None,
    before: datetime | str | None = None,
    after: datetime | str | None = None,
    limit: int | None = None,
    experiment_path: str | None = None,
) -> builtins.list[TrainingRun]:
    """Runs, newest first, filtered as the hosted ``fm.list`` filtered them."""
    from ftmagic import api

    if finetuning_runs is not None:
        return [get(r) for r in finetuning_runs]
    if user_emails:
        warnings.warn(
            "ignored (only meaningful on the hosted platform): user_emails: runs in this MLflow "
            "store are not filtered by who submitted them",
            HostedOnlyArgument,
            stacklevel=2,
        )
    runs = api.list(experiment_path=experiment_path, limit=limit or 500)
    low, high = _when(after, "after"), _when(before, "before")
    picked = [
        r for r in runs if (low is None or r.created > low) and (high is None or r.created < high)
    ]
    return [TrainingRun.from_run(r) for r in picked]


def _when(value: datetime | str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(name, "is not a date", value=value, allowed="e.g. 2024-06-30") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def cancel(finetuning_runs: str | TrainingRun | builtins.list[str | TrainingRun]) -> int:
    """Ask runs to stop (each ends STOPPED after its step, with a checkpoint); returns how many
    were still running."""
    from ftmagic import api

    count = 0
    for ref in _many(finetuning_runs):
        run = api.get(_ref(ref))
        if not run.is_done:
            api.cancel(run)
            count += 1
    return count


def delete(finetuning_runs: str | TrainingRun | builtins.list[str | TrainingRun]) -> int:
    """Delete finished runs and their artifacts; returns how many were deleted."""
    from ftmagic import api

    runs = _many(finetuning_runs)
    for ref in runs:
        api.delete(_ref(ref))
    return len(runs)


def get_events(finetuning_run: str | TrainingRun) -> builtins.list[FinetuningEvent]:
    """The run's timeline under the hosted event names."""
    from ftmagic import api

    return [
        FinetuningEvent(EVENT_NAMES.get(e.type, e.type), e.time, e.message)
        for e in api.get_events(_ref(finetuning_run))
    ]


def get_checkpoints(finetuning_run: str | TrainingRun) -> builtins.list[Checkpoint]:
    """The run's committed checkpoints (``step``, ``uri``, ``tokens``, ``eval_loss``, ``time``)."""
    from ftmagic import api

    return api.get_checkpoints(_ref(finetuning_run))


def get_models() -> ModelList:
    """The models you can fine-tune (the hosted catalog, small open models, the tiny ones)."""
    from ftmagic import api

    return api.get_models()


def _ref(value: Any) -> Any:
    if isinstance(value, TrainingRun):
        return value.run_id
    return value


def _many(value: Any) -> builtins.list[Any]:
    if isinstance(value, (builtins.list, tuple)):
        return builtins.list(value)
    if value is None:
        raise RunError("no run given. Fix: pass a run name, a TrainingRun or a list of them")
    return [value]

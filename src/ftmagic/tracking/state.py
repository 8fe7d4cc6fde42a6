"""A run's state in MLflow tags: its status, its events, the trainer's heartbeat and the cancel
request. Every write of these goes through here, from any process on any machine.

A run is created PENDING, goes RUNNING when a trainer takes it and ends COMPLETED, FAILED or
STOPPED; a resumed run goes back to PENDING. Each status change is also an event. An event is a
tag of its own, ``ftmagic.event.<nanoseconds>-<writer>``, so writers in several processes never
read or overwrite each other's; readers order events by time. Runs written before this keep
their ``ftmagic.event.NNNN`` events, which read the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

from ftmagic.errors import RunError, shorten
from ftmagic.tracking.artifacts import CONFIG_FILE
from ftmagic.tracking.client import client, experiment_id, slug

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ftmagic.config import RunConfig

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


log = logging.getLogger(__name__)


class RunStatus(StrEnum):
    """Where a run is; each value is the string stored in tag ``ftmagic.status``."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED})
STATUSES = tuple(RunStatus)
MLFLOW_STATUS = {
    RunStatus.PENDING: "SCHEDULED",
    RunStatus.RUNNING: "RUNNING",
    RunStatus.COMPLETED: "FINISHED",
    RunStatus.FAILED: "FAILED",
    RunStatus.STOPPED: "KILLED",
}

STATUS_TAG = "ftmagic.status"
REASON_TAG = "ftmagic.status_reason"
EVENT_PREFIX = "ftmagic.event."
HEARTBEAT_TAG = "ftmagic.heartbeat"
CANCEL_TAG = "ftmagic.cancel_requested"
BACKEND_TAG = "ftmagic.backend"
MODEL_TAG = "ftmagic.model"
TOTAL_STEPS_TAG = "ftmagic.total_steps"
NUMBER_TAGS = (HEARTBEAT_TAG, TOTAL_STEPS_TAG)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_EVENT_MESSAGE_CHARS = 4000  # keeps an event tag well under MLflow's 8000-char tag limit
MAX_REASON_CHARS = 4000

WRITER_ID = f"{os.getpid():x}-{secrets.token_hex(4)}"
"""Tells this process's event keys from those of any other process, here or on another host
(a forked child shares the random part but not the pid)."""


@dataclass(frozen=True)
class Event:
    """One entry of a run's timeline (created, running, checkpoint, completed, ...)."""

    type: str
    time: datetime
    message: str
    step: int | None = None


class _EventClock:
    """Wall-clock nanoseconds that never repeat or go back within one process, so a writer's
    own events keep their order and their keys."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def now_ns(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_CLOCK = _EventClock()


# --- creating a run --------------------------------------------------------------------------


def create_run(config: RunConfig, *, backend: str, uri: str | None = None) -> str:
    """Create the MLflow run of a new ftmagic run (status PENDING) and return its id."""
    from mlflow.entities import Param

    mlflow_client = client(uri)
    exp_id = experiment_id(mlflow_client, config.experiment())
    name = _unique_run_name(mlflow_client, exp_id, default_run_name(config))
    tags = {STATUS_TAG: RunStatus.PENDING.value, BACKEND_TAG: backend, MODEL_TAG: config.model}
    run = mlflow_client.create_run(exp_id, run_name=name, tags=tags)
    run_id = str(run.info.run_id)
    mlflow_client.update_run(run_id, status=MLFLOW_STATUS[RunStatus.PENDING])
    params = [Param(key, _param_value(value)) for key, value in config.to_dict().items()]
    mlflow_client.log_batch(run_id, params=params)
    mlflow_client.log_text(run_id, config.to_yaml(), CONFIG_FILE)
    add_event(run_id, "CREATED", f"run {name} created (backend {backend})", uri=uri)
    return run_id


def default_run_name(config: RunConfig) -> str:
    """A readable name: model, data and local time, e.g. ``tiny-chat-ner-1128-1012``."""
    parts = [slug(config.model.rstrip("/").rsplit("/", 1)[-1], "-")[:24]]
    data = config.train_data_path.rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    if data:
        parts.append(slug(data, "-")[:24])
    parts.append(datetime.now().strftime("%m%d-%H%M"))
    return "-".join(p for p in parts if p)


def _unique_run_name(mlflow_client: MlflowClient, exp_id: str, name: str) -> str:
    taken = {
        r.info.run_name
        for r in mlflow_client.search_runs(
            [exp_id], filter_string=f"attributes.run_name LIKE '{name}%'", max_results=1000
        )
    }
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return shorten(text, MAX_PARAM_CHARS)


# --- status ----------------------------------------------------------------------------------


def as_status(status: str) -> RunStatus:
    """``status`` (any case) as a ``RunStatus``; a RunError names the valid ones."""
    try:
        return RunStatus(str(status).upper())
    except ValueError:
        raise RunError(
            f"status '{str(status).upper()}' is not one of {', '.join(STATUSES)}"
        ) from None


def set_status(
    run_id: str, status: str, reason: str | None = None, *, uri: str | None = None
) -> None:
    """Record a status change (and its event); terminal states also end the MLflow run."""
    from mlflow.entities import RunTag

    status = as_status(status)
    mlflow_client = client(uri)
    previous = recorded_status(mlflow_client.get_run(run_id).data.tags)
    # The event first: whoever sees the new status (a waiting Run) also sees its event.
    add_event(run_id, status, reason or f"run is {status.lower()}", uri=uri)
    tags = [
        RunTag(STATUS_TAG, status.value),
        RunTag(REASON_TAG, shorten(reason or "", MAX_REASON_CHARS)),
    ]
    if status is RunStatus.RUNNING:  # a resumed run must not look dead before its first beat
        tags.append(RunTag(HEARTBEAT_TAG, f"{time.time():.3f}"))
    mlflow_client.log_batch(run_id, tags=tags)
    if status is RunStatus.PENDING or (status not in TERMINAL and previous in TERMINAL):
        # A resubmitted run (even one killed while RUNNING) must not stop on the old request.
        clear_cancel(run_id, uri=uri)
    if status in TERMINAL:
        mlflow_client.set_terminated(run_id, status=MLFLOW_STATUS[status])
    else:
        mlflow_client.update_run(run_id, status=MLFLOW_STATUS[status])


def recorded_status(tags: dict[str, str]) -> RunStatus:
    """The status in a run's tags; PENDING when the tag is missing or unreadable."""
    try:
        return RunStatus(tags.get(STATUS_TAG, RunStatus.PENDING))
    except ValueError:
        return RunStatus.PENDING


def read_status(run_id: str, *, uri: str | None = None) -> RunStatus:
    """The run's recorded status, read now."""
    return recorded_status(client(uri).get_run(run_id).data.tags)


# --- events ----------------------------------------------------------------------------------


def add_event(
    run_id: str, type: str, message: str, step: int | None = None, *, uri: str | None = None
) -> None:
    """Add an event under a key of its own (see the module docstring). A failed write is logged
    and dropped: an event is never worth failing a run for."""
    now_ns = _CLOCK.now_ns()
    value = json.dumps(
        {
            "type": str(type),
            "time": datetime.fromtimestamp(now_ns / 1e9, timezone.utc).isoformat(),
            "message": shorten(str(message), MAX_EVENT_MESSAGE_CHARS),
            "step": step,
        }
    )
    try:
        client(uri).set_tag(run_id, f"{EVENT_PREFIX}{now_ns:019d}-{WRITER_ID}", value)
    except Exception as err:
        log.warning("run %s: event %s not recorded (%s)", run_id, type, err)


def parse_events(tags: dict[str, str]) -> list[Event]:
    """The events stored in a run's tags, oldest first (unreadable ones are skipped)."""
    found = []
    for key, value in tags.items():
        if key.startswith(EVENT_PREFIX):
            event = _parse_event(key, value)
            if event is not None:
                found.append((event.time, _key_rank(key), key, event))
    return [entry[-1] for entry in sorted(found, key=lambda entry: entry[:3])]


def read_events(run_id: str, *, uri: str | None = None) -> list[Event]:
    """The run's events, read now."""
    return parse_events(client(uri).get_run(run_id).data.tags)


def _parse_event(key: str, value: str) -> Event | None:
    try:
        data = json.loads(value)
        when = datetime.fromisoformat(data["time"])
    except (ValueError, KeyError, TypeError):
        log.warning("skipping unreadable event tag %s", key)
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    step = data.get("step")
    return Event(str(data.get("type", "")), when, str(data.get("message", "")), step)


def _key_rank(key: str) -> int:
    """Orders events written in the same microsecond: by the old keys' number or the new keys'
    nanoseconds."""
    digits = key[len(EVENT_PREFIX) :].split("-", 1)[0]
    return int(digits) if digits.isdigit() else 0


# --- heartbeat and cancel --------------------------------------------------------------------


def heartbeat(run_id: str, *, uri: str | None = None) -> None:
    """Say the trainer is alive (epoch seconds in tag ``ftmagic.heartbeat``)."""
    client(uri).set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.3f}")


def request_cancel(run_id: str, *, uri: str | None = None) -> None:
    """Ask the trainer to stop: it checks :func:`cancel_requested` between steps."""
    client(uri).set_tag(run_id, CANCEL_TAG, datetime.now(timezone.utc).isoformat())
    add_event(run_id, "CANCEL_REQUESTED", "cancel requested", uri=uri)


def cancel_requested(run_id: str, *, uri: str | None = None) -> bool:
    return bool(client(uri).get_run(run_id).data.tags.get(CANCEL_TAG))


def clear_cancel(run_id: str, *, uri: str | None = None) -> None:
    mlflow_client = client(uri)
    if mlflow_client.get_run(run_id).data.tags.get(CANCEL_TAG):
        mlflow_client.delete_tag(run_id, CANCEL_TAG)


# --- reading number tags ---------------------------------------------------------------------


def number_tag(tags: dict[str, str], key: str) -> float | None:
    """Tag ``key`` as a number; None when it is missing or not a finite number."""
    text = tags.get(key)
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def tag_problems(tags: dict[str, str]) -> list[str]:
    """What is unreadable in a run's state tags (and so read as absent)."""
    problems = [
        f"tag {key} is not a number: {shorten(tags[key], 40)!r}"
        for key in NUMBER_TAGS
        if tags.get(key) and number_tag(tags, key) is None
    ]
    status = tags.get(STATUS_TAG)
    if status is not None and status not in STATUSES:
        problems.append(f"tag {STATUS_TAG} is not a status: {shorten(status, 40)!r}")
    return problems

"""MLflow access for ftmagic: the one place that knows how run state is laid out in MLflow.

A run's state lives entirely in MLflow so that any process on any machine can drive or watch it:
params (every config field) and ``config.yaml``, tags (status, events, heartbeat, cancel request),
metrics (logged asynchronously in batches), checkpoints (artifacts committed with a ``COMPLETE``
marker written last) and the registered model. Every function takes an optional ``uri`` (the
tracking URI, default :func:`tracking_uri`) and builds its own ``MlflowClient``; global mlflow
state is touched only while ``mlflow.transformers.log_model`` needs an active run, and restored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ftmagic.errors import RunError, shorten

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from ftmagic.config import RunConfig

log = logging.getLogger(__name__)

STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED")
MLFLOW_STATUS = {
    "PENDING": "SCHEDULED",
    "RUNNING": "RUNNING",
    "COMPLETED": "FINISHED",
    "FAILED": "FAILED",
    "STOPPED": "KILLED",
}
TERMINAL = ("COMPLETED", "FAILED", "STOPPED")

STATUS_TAG = "ftmagic.status"
REASON_TAG = "ftmagic.status_reason"
EVENT_PREFIX = "ftmagic.event."
HEARTBEAT_TAG = "ftmagic.heartbeat"
CANCEL_TAG = "ftmagic.cancel_requested"
BACKEND_TAG = "ftmagic.backend"
MODEL_TAG = "ftmagic.model"
TOTAL_STEPS_TAG = "ftmagic.total_steps"
REGISTERED_TAG = "ftmagic.registered_model"

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
CONFIG_FILE = "config.yaml"
GENERATIONS_FILE = "eval_generations.json"
SCORED_FILE = "eval_metric_generations.json"
SCORED_COLUMNS = ("prompt", "reference", "prediction")
CHECKPOINTS_DIR = "checkpoints"
COMPLETE = "COMPLETE"

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_EVENT_MESSAGE_CHARS = 4000  # keeps an event tag well under MLflow's 8000-char tag limit
MAX_BATCH_METRICS = 1000  # MLflow's limit on metrics in one log_batch call

# Serialises event numbering between threads of the one writer process (an unavoidable
# process-wide lock: the trainer thread and a runner thread may both add events).
_EVENT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Event:
    """One entry of a run's timeline (created, running, checkpoint, completed, ...)."""

    type: str
    time: datetime
    message: str
    step: int | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: its step, artifact URI and what the trainer recorded with it."""

    step: int
    uri: str
    tokens: int | None = None
    eval_loss: float | None = None
    time: datetime | None = None


# --- clients and locations -------------------------------------------------------------------


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``mlflow.db`` in the current folder.

    The embedded default keeps a notebook's runs next to it, readable with
    ``mlflow ui --backend-store-uri sqlite:///mlflow.db``.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def client(uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` (mlflow caches the store behind it, so this is cheap)."""
    from mlflow import MlflowClient

    from ftmagic import quiet

    quiet.apply()  # before the client's first query, which may create the SQLite tables
    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def artifact_root(uri: str) -> Path | None:
    """Where experiments of a SQLite store keep artifacts: ``mlartifacts`` next to the database.

    None for servers and other stores, which choose their own artifact location.
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :].split("?")[0]
    if not db or db == ":memory:":
        return None
    return (Path.cwd() / db).resolve().parent / ARTIFACTS_DIR


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    """Get or create experiment ``name`` (restoring it when it was deleted)."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    root = artifact_root(mlflow_client.tracking_uri)
    location = (root / _slug(name, "_")).as_uri() if root else None
    try:
        return str(mlflow_client.create_experiment(name, artifact_location=location))
    except MlflowException:
        found = mlflow_client.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return str(found.experiment_id)


def local_artifact_dir(mlflow_client: MlflowClient, run_id: str) -> Path | None:
    """The run's artifact folder when artifacts are plain local files, else None."""
    artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri
    return local_path(artifact_uri)


def local_path(artifact_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(artifact_uri)
    return None


def cache_dir() -> Path:
    """``$FTMAGIC_CACHE`` or ``~/.cache/ftmagic``: downloaded checkpoints and models."""
    return Path(os.environ.get("FTMAGIC_CACHE") or Path.home() / ".cache" / "ftmagic")


def check_run_id(run_id: str) -> str:
    """Reject anything but an MLflow run id, so a bad id never becomes a path or a query."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise RunError(
            f"'{shorten(str(run_id), 60)}' is not an MLflow run id (32 hex characters). "
            "Fix: pass a run id from ftmagic.list() or the run's name."
        )
    return run_id


# --- runs, status, events --------------------------------------------------------------------


def create_run(config: RunConfig, *, backend: str, uri: str | None = None) -> str:
    """Create the MLflow run of a new ftmagic run (status PENDING) and return its id."""
    from mlflow.entities import Param

    mlflow_client = client(uri)
    exp_id = experiment_id(mlflow_client, config.experiment())
    name = _unique_run_name(mlflow_client, exp_id, default_run_name(config))
    tags = {STATUS_TAG: "PENDING", BACKEND_TAG: backend, MODEL_TAG: config.model}
    run = mlflow_client.create_run(exp_id, run_name=name, tags=tags)
    run_id = str(run.info.run_id)
    mlflow_client.update_run(run_id, status=MLFLOW_STATUS["PENDING"])
    params = [Param(key, _param_value(value)) for key, value in config.to_dict().items()]
    mlflow_client.log_batch(run_id, params=params)
    mlflow_client.log_text(run_id, config.to_yaml(), CONFIG_FILE)
    add_event(run_id, "CREATED", f"run {name} created (backend {backend})", uri=uri)
    return run_id


def default_run_name(config: RunConfig) -> str:
    """A readable name: model, data and local time, e.g. ``tiny-chat-ner-1128-1012``."""
    parts = [_slug(config.model.rstrip("/").rsplit("/", 1)[-1], "-")[:24]]
    data = config.train_data_path.rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    if data:
        parts.append(_slug(data, "-")[:24])
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


def _slug(text: str, sep: str) -> str:
    return re.sub(r"[^a-z0-9]+", sep, text.lower()).strip(sep)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return shorten(text, MAX_PARAM_CHARS)


def set_status(
    run_id: str, status: str, reason: str | None = None, *, uri: str | None = None
) -> None:
    """Record a status change (and its event); terminal states also end the MLflow run."""
    from mlflow.entities import RunTag

    status = status.upper()
    if status not in STATUSES:
        raise RunError(f"status '{status}' is not one of {', '.join(STATUSES)}")
    mlflow_client = client(uri)
    previous = mlflow_client.get_run(run_id).data.tags.get(STATUS_TAG)
    # The event first: whoever sees the new status (a waiting Run) also sees its event.
    add_event(run_id, status, reason or f"run is {status.lower()}", uri=uri)
    tags = [RunTag(STATUS_TAG, status), RunTag(REASON_TAG, shorten(reason or "", 4000))]
    if status == "RUNNING":  # a resumed run must not look dead before its first beat
        tags.append(RunTag(HEARTBEAT_TAG, f"{time.time():.3f}"))
    mlflow_client.log_batch(run_id, tags=tags)
    if status == "PENDING" or (status not in TERMINAL and previous in TERMINAL):
        # A resubmitted run (even one killed while RUNNING) must not stop on the old request.
        clear_cancel(run_id, uri=uri)
    if status in TERMINAL:
        mlflow_client.set_terminated(run_id, status=MLFLOW_STATUS[status])
    else:
        mlflow_client.update_run(run_id, status=MLFLOW_STATUS[status])


def add_event(
    run_id: str, type: str, message: str, step: int | None = None, *, uri: str | None = None
) -> None:
    """Append an event as tag ``ftmagic.event.NNNN`` (numbers increase; one writer process)."""
    mlflow_client = client(uri)
    value = json.dumps(
        {
            "type": type,
            "time": datetime.now(timezone.utc).isoformat(),
            "message": shorten(str(message), MAX_EVENT_MESSAGE_CHARS),
            "step": step,
        }
    )
    with _EVENT_LOCK:
        tags = mlflow_client.get_run(run_id).data.tags
        numbers = [event_number(key) for key in tags if key.startswith(EVENT_PREFIX)]
        mlflow_client.set_tag(run_id, f"{EVENT_PREFIX}{max(numbers, default=0) + 1:04d}", value)


def event_number(tag_key: str) -> int:
    suffix = tag_key[len(EVENT_PREFIX) :]
    return int(suffix) if suffix.isdigit() else 0


def parse_events(tags: dict[str, str]) -> list[Event]:
    """The events stored in a run's tags, oldest first (unreadable ones are skipped)."""
    events = []
    for key in sorted((k for k in tags if k.startswith(EVENT_PREFIX)), key=event_number):
        try:
            data = json.loads(tags[key])
            when = datetime.fromisoformat(data["time"])
        except (ValueError, KeyError, TypeError):
            log.warning("skipping unreadable event tag %s", key)
            continue
        step = data.get("step")
        events.append(Event(str(data.get("type", "")), when, str(data.get("message", "")), step))
    return events


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


def set_tag(run_id: str, key: str, value: object, *, uri: str | None = None) -> None:
    client(uri).set_tag(run_id, key, str(value))


# --- metrics ---------------------------------------------------------------------------------


class MetricsLogger:
    """Logs metrics from a background thread in batches, so training never waits on MLflow.

    When the tracking server is unreachable, metrics stay buffered and are retried with backoff
    until they are accepted; ``close()`` waits (bounded) for the buffer to drain.
    """

    def __init__(
        self,
        run_id: str,
        *,
        flush_interval: float = 1.0,
        uri: str | None = None,
        max_backoff: float = 4.0,
    ) -> None:
        self.run_id = run_id
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.sent = 0
        self.failures = 0
        self._client = client(uri)
        self._pending: list[Metric] = []
        self._in_flight = 0
        self._wake = threading.Condition()
        self._flush_requested = False
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name=f"ftmagic-metrics-{run_id[:8]}", daemon=True
        )
        self._thread.start()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Queue ``values`` for ``step``; returns at once."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value in values.items()]
        with self._wake:
            if self._closing:
                raise RunError(f"metrics logger of run {self.run_id} is closed")
            self._pending.extend(metrics)
            if len(self._pending) >= MAX_BATCH_METRICS:
                self._wake.notify_all()

    @property
    def buffered(self) -> int:
        """Metrics not yet accepted by MLflow."""
        with self._wake:
            return len(self._pending) + self._in_flight

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every metric logged so far is stored; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            self._flush_requested = True
            self._wake.notify_all()
            while self._pending or self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._wake.wait(left if left is None else min(left, 0.5))
        return True

    def close(self, timeout: float = 60.0) -> bool:
        """Flush (waiting at most ``timeout`` seconds) and stop the thread."""
        done = self.flush(timeout)
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout=5.0)
        if not done:
            log.warning(
                "run %s: %d metrics could not be sent to MLflow", self.run_id, self.buffered
            )
        return done

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._wake:
                idle = not self._flush_requested and len(self._pending) < MAX_BATCH_METRICS
                if idle and not self._closing:
                    self._wake.wait(self.flush_interval)  # gather a batch
                if self._closing:
                    return  # close() already waited for the buffer to drain
                batch = self._pending[:MAX_BATCH_METRICS]
                del self._pending[: len(batch)]
                self._in_flight = len(batch)
                if not self._pending:
                    self._flush_requested = False
            if not batch:
                continue
            if self._send(batch):
                backoff = 0.5
                continue
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _send(self, batch: list[Metric]) -> bool:
        try:
            self._client.log_batch(self.run_id, metrics=batch, synchronous=True)
        except Exception as err:  # the server may be down for a while: keep and retry
            self.failures += 1
            log.info("run %s: metrics not sent yet (%s); will retry", self.run_id, err)
            with self._wake:
                self._pending[:0] = batch
                self._in_flight = 0
                self._wake.notify_all()
            return False
        with self._wake:
            self.sent += len(batch)
            self._in_flight = 0
            self._wake.notify_all()
        return True

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- checkpoints -----------------------------------------------------------------------------


def checkpoint_path(step: int) -> str:
    """The run-relative artifact folder of checkpoint ``step``."""
    return f"{CHECKPOINTS_DIR}/step-{step:07d}"


def checkpoint_dir(run_id: str, step: int, *, uri: str | None = None) -> Path:
    """Where the trainer should save checkpoint ``step`` before :func:`commit_checkpoint`.

    With a local artifact store this is the artifact folder itself, so committing only writes the
    marker (no copy of the weights); elsewhere it is a fresh local staging folder. A leftover
    folder of an interrupted attempt at the same step is cleared (marker first).
    """
    root = local_artifact_dir(client(uri), run_id)
    if root is None:
        return Path(tempfile.mkdtemp(prefix=f"ftmagic-{run_id[:8]}-step-{step}-"))
    target = root / checkpoint_path(step)
    (target / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return target


def commit_checkpoint(
    run_id: str, local_dir: Path, step: int, meta: dict[str, Any], *, uri: str | None = None
) -> Checkpoint:
    """Upload ``local_dir`` as checkpoint ``step``, then write its ``COMPLETE`` marker last.

    ``meta`` holds what the trainer knows (tokens, eval_loss, ...); the marker adds the step,
    the time and every file with its size, which downloads check.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise RunError(f"checkpoint folder {local_dir} does not exist")
    if (local_dir / COMPLETE).exists():
        raise RunError(
            f"checkpoint folder {local_dir} already holds a {COMPLETE} marker; "
            "commit a freshly saved folder (see checkpoint_dir)"
        )
    mlflow_client = client(uri)
    dest = checkpoint_path(step)
    files = _file_sizes(local_dir)
    root = local_artifact_dir(mlflow_client, run_id)
    if root is None or local_dir.resolve() != (root / dest).resolve():
        mlflow_client.log_artifacts(run_id, str(local_dir), artifact_path=dest)
    now = datetime.now(timezone.utc)
    marker = {**meta, "step": step, "time": now.isoformat(), "files": files}
    mlflow_client.log_text(run_id, json.dumps(marker, indent=1), f"{dest}/{COMPLETE}")
    return _checkpoint_from_marker(run_id, marker)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }


def _checkpoint_from_marker(run_id: str, marker: dict[str, Any]) -> Checkpoint:
    step = int(marker["step"])
    tokens = marker.get("tokens")
    eval_loss = marker.get("eval_loss")
    when = marker.get("time")
    return Checkpoint(
        step=step,
        uri=f"runs:/{run_id}/{checkpoint_path(step)}",
        tokens=None if tokens is None else int(tokens),
        eval_loss=None if eval_loss is None else float(eval_loss),
        time=datetime.fromisoformat(when) if when else None,
    )


def list_checkpoints(run_id: str, *, uri: str | None = None) -> list[Checkpoint]:
    """Committed checkpoints (those with a ``COMPLETE`` marker), oldest step first."""
    mlflow_client = client(uri)
    root = local_artifact_dir(mlflow_client, run_id)
    markers = _local_markers(root) if root is not None else _remote_markers(mlflow_client, run_id)
    checkpoints = []
    for name, text in markers:
        try:
            checkpoints.append(_checkpoint_from_marker(run_id, json.loads(text)))
        except (ValueError, KeyError, TypeError):
            log.warning("run %s: unreadable %s marker in %s; ignored", run_id, COMPLETE, name)
    return sorted(checkpoints, key=lambda c: c.step)


def _local_markers(root: Path) -> Iterator[tuple[str, str]]:
    folder = root / CHECKPOINTS_DIR
    if not folder.is_dir():
        return
    for marker in sorted(folder.glob(f"step-*/{COMPLETE}")):
        yield marker.parent.name, marker.read_text(encoding="utf-8")


def _remote_markers(mlflow_client: MlflowClient, run_id: str) -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        for folder in mlflow_client.list_artifacts(run_id, CHECKPOINTS_DIR):
            if not folder.is_dir:
                continue
            names = {
                f.path.rsplit("/", 1)[-1] for f in mlflow_client.list_artifacts(run_id, folder.path)
            }
            if COMPLETE not in names:
                continue
            path = mlflow_client.download_artifacts(run_id, f"{folder.path}/{COMPLETE}", tmp)
            yield folder.path, Path(path).read_text(encoding="utf-8")


def download_checkpoint(run_id: str, step: int | None = None, *, uri: str | None = None) -> Path:
    """A local folder holding committed checkpoint ``step`` (the latest when None).

    A local artifact store is read in place; otherwise the checkpoint is downloaded once into
    the cache, its files checked against the marker, and the folder renamed into place.
    """
    check_run_id(run_id)
    checkpoints = list_checkpoints(run_id, uri=uri)
    if not checkpoints:
        raise RunError(f"run {run_id} has no complete checkpoint yet")
    chosen = (
        checkpoints[-1] if step is None else next((c for c in checkpoints if c.step == step), None)
    )
    if chosen is None:
        steps = ", ".join(str(c.step) for c in checkpoints)
        raise RunError(f"run {run_id} has no complete checkpoint at step {step}; it has {steps}")
    mlflow_client = client(uri)
    rel = checkpoint_path(chosen.step)
    root = local_artifact_dir(mlflow_client, run_id)
    if root is not None:
        return root / rel
    final = cache_dir() / "checkpoints" / run_id / f"step-{chosen.step:07d}"
    if (final / COMPLETE).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        got = Path(mlflow_client.download_artifacts(run_id, rel, tmp))
        _check_against_marker(got, run_id, chosen.step)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(got, final)
    return final


def _check_against_marker(folder: Path, run_id: str, step: int) -> None:
    expected = json.loads((folder / COMPLETE).read_text(encoding="utf-8")).get("files", {})
    actual = _file_sizes(folder)
    if any(actual.get(name) != size for name, size in expected.items()):
        raise RunError(f"checkpoint {step} of run {run_id} downloaded incompletely; try again")


# --- weights, generations, registry ----------------------------------------------------------


def resolve_weights(custom_weights_path: str, *, uri: str | None = None) -> Path:
    """A local folder of weights for ``custom_weights_path``.

    Accepts a checkpoint folder, ``runs:/RUN_ID`` (its latest complete checkpoint; also
    ``runs:/RUN_ID/checkpoints/step-NNNNNNN``) or ``models:/name/version`` (a registered model).
    """
    text = str(custom_weights_path).strip()
    if text.startswith("runs:/"):
        parts = text[len("runs:/") :].strip("/").split("/")
        run_id = check_run_id(parts[0])
        step = None
        if len(parts) == 3 and parts[1] == CHECKPOINTS_DIR and parts[2].startswith("step-"):
            step = int(parts[2][len("step-") :])
        return _or_not_found(text, lambda: download_checkpoint(run_id, step, uri=uri))
    if text.startswith("models:/"):
        return _or_not_found(text, lambda: download_registered_model(text, uri=uri))
    path = Path(text).expanduser()
    weights = ("config.json", "adapter_config.json")
    if any((folder / f).exists() for folder in (path, path / "model") for f in weights):
        return path.resolve()
    raise RunError(
        f"custom_weights_path '{text}': not found. It must be a checkpoint folder holding "
        "config.json (or model/config.json), 'runs:/RUN_ID' or 'models:/name/version'. "
        "Fix: check the path or the URI."
    )


def _or_not_found(text: str, fetch: Any) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(fetch())
    except MlflowException as err:
        raise RunError(f"custom_weights_path '{text}': not found ({err.message})") from None


def download_registered_model(model_uri: str, *, uri: str | None = None) -> Path:
    """The Hugging Face folder (weights and tokenizer) of ``models:/name/version``, cached."""
    from mlflow.artifacts import download_artifacts

    name, version = _model_version(model_uri, uri)
    final = cache_dir() / "registry" / _slug(name, "_") / version
    if any((final / f).exists() for f in ("config.json", "adapter_config.json")):
        return final
    mlflow_client = client(uri)
    source = mlflow_client.get_model_version_download_uri(name, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        got = Path(
            download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=mlflow_client.tracking_uri
            )
        )
        model = _hf_folder(got)
        tokenizer = got / "components" / "tokenizer"
        if tokenizer.is_dir():
            for item in tokenizer.iterdir():
                if not (model / item.name).exists():
                    shutil.copy2(item, model / item.name)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(model, final)
    return final


def _hf_folder(got: Path) -> Path:
    """The loadable folder inside a downloaded mlflow transformers model: ``peft/`` (a LoRA
    adapter whose config names its base model) or ``model/`` (full weights)."""
    return next((got / d for d in ("peft", "model") if (got / d).is_dir()), got)


def _model_version(model_uri: str, uri: str | None) -> tuple[str, str]:
    body = model_uri[len("models:/") :].strip("/")
    mlflow_client = client(uri)
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return name, str(mlflow_client.get_model_version_by_alias(name, alias).version)
    name, _, version = body.rpartition("/")
    if not name or not version:
        raise RunError(
            f"'{model_uri}' is not models:/name/version. Fix: e.g. models:/main.default.m/1"
        )
    if version == "latest":
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise RunError(f"registered model '{name}' has no versions")
        version = str(max(int(v.version) for v in versions))
    mlflow_client.get_model_version(name, version)  # raises when missing
    return name, version


def log_generations(
    run_id: str, step: int, rows: list[dict[str, Any]], *, uri: str | None = None
) -> None:
    """Append eval-prompt generations (``prompt``, ``response``) at ``step`` to the run's table."""
    if not rows:
        return
    data = {
        "step": [int(step)] * len(rows),
        "prompt": [str(r.get("prompt", "")) for r in rows],
        "response": [str(r.get("response", "")) for r in rows],
    }
    client(uri).log_table(run_id, data=data, artifact_file=GENERATIONS_FILE)


def read_generations(run_id: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The eval-prompt generations table as rows ``{step, prompt, response}``."""
    text = artifact_text(run_id, GENERATIONS_FILE, uri=uri)
    return table_rows(json.loads(text)) if text else []


def log_scored_generations(
    run_id: str, step: int, rows: list[dict[str, str]], *, uri: str | None = None
) -> None:
    """Append the eval_metric's sample at ``step`` (``prompt``, ``reference``, ``prediction``)
    to the run's table ``eval_metric_generations.json``."""
    if rows:
        data: dict[str, list[Any]] = {"step": [int(step)] * len(rows)}
        data.update({k: [str(r.get(k, "")) for r in rows] for k in SCORED_COLUMNS})
        client(uri).log_table(run_id, data=data, artifact_file=SCORED_FILE)


def read_scored_generations(run_id: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The eval_metric's generations as rows ``{step, prompt, reference, prediction}``."""
    table = read_json(run_id, SCORED_FILE, uri=uri)
    return table_rows(table) if table else []


def table_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a table logged with ``log_table`` (``columns`` and ``data``) as dicts."""
    return [dict(zip(table["columns"], row, strict=False)) for row in table["data"]]


def read_config_text(run_id: str, *, uri: str | None = None) -> str | None:
    """The run's ``config.yaml`` artifact, or None when it is missing."""
    return artifact_text(run_id, CONFIG_FILE, uri=uri)


def log_json(run_id: str, data: dict[str, Any], name: str, *, uri: str | None = None) -> None:
    """Write ``data`` as the run's JSON artifact ``name`` (replacing an earlier one)."""
    client(uri).log_dict(run_id, data, name)


def read_json(run_id: str, name: str, *, uri: str | None = None) -> dict[str, Any] | None:
    """The run's JSON artifact ``name``, or None when it is missing."""
    text = artifact_text(run_id, name, uri=uri)
    return None if text is None else dict(json.loads(text))


def artifact_text(run_id: str, name: str, *, uri: str | None = None) -> str | None:
    """The text of the run's top-level artifact ``name``, or None when it is missing: read from
    the artifact folder when it is local, else downloaded."""
    mlflow_client = client(uri)
    root = local_artifact_dir(mlflow_client, run_id)
    if root is None:
        return _remote_text(mlflow_client, run_id, name)
    path = root / name
    return path.read_text(encoding="utf-8") if path.exists() else None


def _remote_text(mlflow_client: MlflowClient, run_id: str, name: str) -> str | None:
    if name not in {f.path for f in mlflow_client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(mlflow_client.download_artifacts(run_id, name, tmp)).read_text(encoding="utf-8")


def registered_model_name(register_to: str, run_name: str) -> str:
    """``catalog.schema`` -> ``catalog.schema.<run name>``; ``catalog.schema.name`` as given."""
    parts = register_to.split(".")
    if len(parts) == 3 and all(parts):
        return register_to
    if len(parts) == 2 and all(parts):
        return f"{register_to}.{_slug(run_name, '_') or 'model'}"
    raise RunError(
        f"register_to '{register_to}' is not catalog.schema or catalog.schema.name. "
        "Fix: e.g. register_to: main.default"
    )


def register_model(
    run_id: str, model_dir: Path, register_to: str, run_name: str, *, uri: str | None = None
) -> str:
    """Log the final model (a text-generation pipeline) under the run and register a new version.

    Returns ``models:/name/version`` and records it in tag ``ftmagic.registered_model``.
    """
    name = registered_model_name(register_to, run_name)
    mlflow_client = client(uri)
    pipe, base_path = _text_generation_pipeline(Path(model_dir))
    was_running = mlflow_client.get_run(run_id).info.status == "RUNNING"
    result: dict[str, Any] = {}
    # A fresh thread has no active mlflow run, whatever the caller's thread has open.
    worker = threading.Thread(
        target=_log_model_into,
        args=(result, pipe, base_path, run_id, name, mlflow_client.tracking_uri),
    )
    worker.start()
    worker.join()
    if "error" in result:
        raise RunError(
            f"could not register the model of run {run_id} as '{name}': {result['error']}"
        )
    if was_running:
        mlflow_client.update_run(run_id, status="RUNNING")  # start_run's exit marked it FINISHED
    reference = f"models:/{name}/{result['version']}"
    mlflow_client.set_tag(run_id, REGISTERED_TAG, reference)
    add_event(run_id, "REGISTERED", f"registered {reference}", uri=mlflow_client.tracking_uri)
    return reference


def tag_model_version(model_uri: str, tags: dict[str, Any], *, uri: str | None = None) -> None:
    """Set tags on the model version ``models:/name/version``."""
    name, version = _model_version(model_uri, uri)
    mlflow_client = client(uri)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))


def set_model_alias(model_uri: str, alias: str, *, uri: str | None = None) -> None:
    """Point ``alias`` (e.g. ``champion``) of the model at version ``models:/name/version``."""
    name, version = _model_version(model_uri, uri)
    client(uri).set_registered_model_alias(name, alias, version)


def run_model_versions(run_id: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The model versions registered from run ``run_id``: ``uri``, ``tags``, ``aliases``."""
    mlflow_client = client(uri)
    found = mlflow_client.search_model_versions(f"run_id = '{check_run_id(run_id)}'")
    versions = []
    for v in sorted(found, key=lambda v: (v.name, int(v.version))):
        full = mlflow_client.get_model_version(v.name, v.version)  # search omits the aliases
        uri_text = f"models:/{v.name}/{v.version}"
        versions.append({"uri": uri_text, "tags": dict(full.tags), "aliases": sorted(full.aliases)})
    return versions


def _text_generation_pipeline(model_dir: Path) -> tuple[Any, str | None]:
    """A text-generation pipeline of a saved model, or of a LoRA adapter on its base model; and
    the adapter's base model when it is a local folder (mlflow then stores a reference to it
    rather than the adapter-injected base weights)."""
    import transformers

    from ftmagic.models.loading import load_model

    adapter_config = model_dir / "adapter_config.json"
    base_path = None
    if (model_dir / "config.json").exists():
        model = load_model(str(model_dir))
    elif adapter_config.exists():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]
        model = PeftModel.from_pretrained(load_model(base), str(model_dir))
        base_path = base if Path(base).is_dir() else None
    else:
        raise RunError(
            f"{model_dir} holds no saved model (neither config.json nor adapter_config.json)"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    return transformers.pipeline("text-generation", model=model, tokenizer=tokenizer), base_path


SERVING_DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "do_sample": False}
"""Generation defaults of a registered model; a request's ``params`` override them. Greedy, like
``Run.generate``: transformers' text-generation pipeline would otherwise sample (a constant).
They are the signature's param defaults, which mlflow applies to every request; not also a
``model_config``, which mlflow would log as run params over the run's own ``max_new_tokens``."""


def _log_model_into(
    result: dict[str, Any], pipe: Any, base_path: str | None, run_id: str, name: str, uri: str
) -> None:
    import mlflow
    import torch
    import transformers
    from mlflow.models import infer_signature

    signature = infer_signature(["Hello"], ["Hello there"], params=SERVING_DEFAULTS)
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__}"]
    try:
        with _global_mlflow_uri(uri), mlflow.start_run(run_id=run_id):
            info = mlflow.transformers.log_model(
                pipe,
                name="model",
                registered_model_name=name,
                signature=signature,
                pip_requirements=requirements,
                base_model_path=base_path,
            )
        result["version"] = info.registered_model_version
    except Exception as err:  # reported to the caller's thread as a RunError
        result["error"] = f"{type(err).__name__}: {err}"


@contextlib.contextmanager
def _global_mlflow_uri(uri: str) -> Iterator[None]:
    """Point mlflow's global tracking and registry URIs at ``uri``; restore them (and the
    environment variables mlflow rewrites) afterwards."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    old_tracking, old_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_tracking)  # type: ignore[arg-type]
        mlflow.set_registry_uri(old_registry)  # type: ignore[arg-type]
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

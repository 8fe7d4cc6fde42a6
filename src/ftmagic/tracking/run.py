"""The read side of runs: ``Run`` and the functions that find runs in MLflow.

A ``Run`` is a cheap snapshot of one MLflow run (tags, params, latest metrics) that every view
(notebook cell, panel, JupyterLab sidebar, CLI) reads; ``refresh()`` re-reads it. Metrics,
checkpoints and generations are read live. A ``Run`` pickles without any loaded model.
"""

from __future__ import annotations

import difflib
import html
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.errors import RunError, shorten
from ftmagic.tracking import artifacts, state
from ftmagic.tracking.checkpoints import Checkpoint, download_checkpoint, list_checkpoints
from ftmagic.tracking.client import RUN_ID_PATTERN, check_run_id, client, local_path, tracking_uri
from ftmagic.tracking.registry import REGISTERED_TAG, download_registered_model
from ftmagic.tracking.state import TERMINAL, Event, RunStatus

if TYPE_CHECKING:
    from mlflow.entities import Run as MlflowRun

    from ftmagic.config import RunConfig

__all__ = ["Checkpoint", "Event", "Run", "RunStatus", "delete_run", "get_run", "list_runs"]

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_S = 120.0
"""A RUNNING run whose last heartbeat is older than this is dead (the trainer beats every ~10 s)."""

FTMAGIC_RUNS = "tags.`ftmagic.status` LIKE '%'"
TRAIN_STEP_METRICS = ("train/loss", "train/tokens", "train/lr")
HISTORY_PAGE = 25_000


class Run:
    """One ftmagic run as MLflow records it.

    Attributes read from the last snapshot (``refresh()`` takes a new one): ``name``, ``status``,
    ``status_reason``, ``events``, ``progress``, ``registered_model``. Read live: ``metrics()``,
    ``checkpoints``, ``generations()``.
    """

    def __init__(self, run_id: str, *, uri: str | None = None, experiment_path: str | None = None):
        self.run_id = check_run_id(run_id)
        self.tracking_uri = uri or tracking_uri()
        self._experiment_path = experiment_path
        self._config: RunConfig | None = None
        self._model: tuple[Any, Any, Any] | None = None  # (weights key, model, tokenizer)
        self._snapshot: dict[str, Any] = {}
        self._histories: dict[str, list[tuple[int, int, float]]] = {}

    @classmethod
    def from_mlflow(
        cls, mlflow_run: MlflowRun, *, uri: str, experiment_path: str | None = None
    ) -> Run:
        run = cls(mlflow_run.info.run_id, uri=uri, experiment_path=experiment_path)
        run._take_snapshot(mlflow_run)
        return run

    # --- snapshot ---------------------------------------------------------------------------
    def refresh(self) -> Run:
        """Re-read the run from MLflow."""
        from mlflow.exceptions import MlflowException

        try:
            mlflow_run = client(self.tracking_uri).get_run(self.run_id)
        except MlflowException:
            raise RunError(f"run {self.run_id} no longer exists in {self.tracking_uri}") from None
        self._take_snapshot(mlflow_run)
        return self

    def _take_snapshot(self, mlflow_run: MlflowRun) -> None:
        info, data = mlflow_run.info, mlflow_run.data
        latest = {m.key: (int(m.step), float(m.value)) for m in data.to_proto().metrics}
        self._snapshot = {
            "name": info.run_name,
            "experiment_id": info.experiment_id,
            "start_time": info.start_time,
            "end_time": info.end_time,
            "artifact_uri": info.artifact_uri,
            "lifecycle_stage": info.lifecycle_stage,
            "tags": dict(data.tags),
            "params": dict(data.params),
            "latest": latest,
        }

    @property
    def _data(self) -> dict[str, Any]:
        if not self._snapshot:
            self.refresh()
        return self._snapshot

    @property
    def _tags(self) -> dict[str, str]:
        tags: dict[str, str] = self._data["tags"]
        return tags

    # --- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._data["name"] or self.run_id)

    @property
    def experiment_path(self) -> str:
        if self._experiment_path is None:
            experiment = client(self.tracking_uri).get_experiment(self._data["experiment_id"])
            self._experiment_path = str(experiment.name)
        return self._experiment_path

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self._data["start_time"] / 1000, tz=timezone.utc)

    @property
    def config(self) -> RunConfig:
        """The run's configuration (from ``config.yaml``, else rebuilt from the params)."""
        from ftmagic.config import RunConfig

        if self._config is None:
            text = artifacts.read_config_text(self.run_id, uri=self.tracking_uri)
            if text is not None:
                self._config = RunConfig.from_yaml(text, source=f"run {self.name} config.yaml")
            else:
                params = {k: _param_value(v) for k, v in self._data["params"].items()}
                self._config = RunConfig.from_dict(params, source=f"run {self.name} params")
        return self._config

    # --- state ------------------------------------------------------------------------------
    @property
    def recorded_status(self) -> RunStatus:
        """The status tag as the trainer last wrote it."""
        return state.recorded_status(self._tags)

    @property
    def status(self) -> RunStatus:
        """PENDING, RUNNING, COMPLETED, FAILED or STOPPED; a RUNNING run without a heartbeat
        for ``HEARTBEAT_TIMEOUT_S`` is FAILED."""
        if self.recorded_status is RunStatus.RUNNING and not self.is_alive:
            return RunStatus.FAILED
        return self.recorded_status

    @property
    def status_reason(self) -> str | None:
        if self.recorded_status is RunStatus.RUNNING and not self.is_alive:
            return "heartbeat lost"
        return self._tags.get(state.REASON_TAG) or None

    @property
    def tag_problems(self) -> list[str]:
        """What is unreadable in the run's state tags, which then read as absent."""
        return state.tag_problems(self._tags)

    @property
    def heartbeat_age_s(self) -> float | None:
        """Seconds since the trainer's last heartbeat (or since it started running, before the
        first beat); None for a run that never ran."""
        beat = state.number_tag(self._tags, state.HEARTBEAT_TAG)
        if beat is not None:
            return max(0.0, time.time() - beat)
        started = [e.time for e in self.events if e.type == RunStatus.RUNNING]
        return None if not started else max(0.0, time.time() - started[-1].timestamp())

    @property
    def is_alive(self) -> bool:
        age = self.heartbeat_age_s
        running = self.recorded_status is RunStatus.RUNNING
        return running and age is not None and age < HEARTBEAT_TIMEOUT_S

    @property
    def is_done(self) -> bool:
        return self.status in TERMINAL

    @property
    def events(self) -> list[Event]:
        return state.parse_events(self._tags)

    def _first_event_time(self, event_type: str) -> datetime | None:
        return next((e.time for e in self.events if e.type == event_type), None)

    @property
    def registered_model(self) -> str | None:
        return self._tags.get(REGISTERED_TAG) or None

    @property
    def reproducibility(self) -> str | None:
        """For a run started by ``ftmagic.rerun``: whether its data, packages, seed and settings
        match the original's, or what changed; None for other runs."""
        from ftmagic.tracking.reproduce import summary

        return summary(self.run_id, uri=self.tracking_uri)

    @property
    def progress(self) -> dict[str, Any]:
        """``step``, ``total_steps``, ``tokens``, ``elapsed_s``, ``eta_s`` (None when unknown)."""
        latest: dict[str, tuple[int, float]] = self._data["latest"]
        steps = [latest[k][0] for k in TRAIN_STEP_METRICS if k in latest]
        step = max(steps) if steps else 0
        total = state.number_tag(self._tags, state.TOTAL_STEPS_TAG)
        total_steps = None if total is None else int(total)
        tokens = int(latest["train/tokens"][1]) if "train/tokens" in latest else None
        elapsed = self._elapsed_s()
        eta = None
        running = self.status is RunStatus.RUNNING
        if running and total_steps and step > 0 and elapsed is not None:
            eta = max(0.0, elapsed / step * (total_steps - step))
        return {
            "step": step,
            "total_steps": total_steps,
            "tokens": tokens,
            "elapsed_s": elapsed,
            "eta_s": eta,
        }

    def _elapsed_s(self) -> float | None:
        started = self._first_event_time(RunStatus.RUNNING)
        if started is None:
            return None
        end = self._data["end_time"] if self.recorded_status in TERMINAL else None
        if end:
            return max(0.0, end / 1000 - started.timestamp())
        beat = state.number_tag(self._tags, state.HEARTBEAT_TAG)
        stop = time.time() if self.is_alive or beat is None else beat
        return max(0.0, stop - started.timestamp())

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Run:
        """Block until the run is COMPLETED, FAILED or STOPPED; RunError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh()
            if self.is_done:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise RunError(
                    f"run {self.name} is still {self.status} after {timeout:g} s. "
                    "Fix: wait longer, or ftmagic.cancel(run) to stop it."
                )
            time.sleep(poll)

    # --- live reads -------------------------------------------------------------------------
    def metrics(self, names: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
        """Each metric's history as ``[(step, value), ...]`` by step; a step logged twice (a
        resumed run) keeps its latest value.

        Histories are read incrementally (only points added since the last call on this Run),
        so a live view can poll this twice a second on a long run.
        """
        mlflow_client = client(self.tracking_uri)
        if names is None:
            names = sorted(mlflow_client.get_run(self.run_id).data.metrics)
        out = {}
        for name in names:
            points = sorted(self._history(mlflow_client, name), key=lambda p: (p[1], p[0]))
            out[name] = sorted({step: value for _, step, value in points}.items())
        return out

    def _history(self, mlflow_client: Any, name: str) -> list[tuple[int, int, float]]:
        """``(timestamp, step, value)`` in the store's order, fetching only the new tail; the
        last cached point is fetched again to check that nothing shifted before it."""
        cached = self._histories.get(name, [])
        tail = _history_from(mlflow_client, self.run_id, name, max(0, len(cached) - 1))
        if cached and tail[:1] == cached[-1:]:
            history = cached + tail[1:]
        elif cached:
            history = _history_from(mlflow_client, self.run_id, name, 0)
        else:
            history = tail
        self._histories[name] = history
        return history

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return list_checkpoints(self.run_id, uri=self.tracking_uri)

    def generations(self) -> list[dict[str, Any]]:
        """The eval prompts' generations at each checkpoint: rows ``{step, prompt, response}``."""
        return artifacts.read_generations(self.run_id, uri=self.tracking_uri)

    # --- trying the model -------------------------------------------------------------------
    def generate(
        self,
        prompt_or_messages: str | list[dict[str, str]],
        *,
        max_new_tokens: int = 64,
        checkpoint: int | Checkpoint | None = None,
    ) -> str:
        """Generate with the run's model: the registered model (else the last checkpoint), or
        checkpoint ``checkpoint`` (a step). The model is loaded once and kept on this Run."""
        from ftmagic.models.generation import generate

        model, tokenizer = self._loaded_model(checkpoint)
        return str(generate(model, tokenizer, prompt_or_messages, max_new_tokens=max_new_tokens))

    def serve(self, *, port: int | None = None, timeout: float = 300.0) -> Any:
        """Serve the run's registered model with ``mlflow models serve`` on 127.0.0.1 and return
        its ``Endpoint`` (``.url``, ``.chat(...)``, ``.logs()``, ``.stop()``)."""
        from ftmagic.tracking.serving import serve

        self.refresh()
        if not self.registered_model:
            raise RunError(
                f"run {self.name} has no registered model to serve. Fix: set register_to, or "
                "register a checkpoint with ftmagic.promote(run, step, register_to=...)"
            )
        return serve(
            self.registered_model, port=port, tracking_uri=self.tracking_uri, timeout=timeout
        )

    def _loaded_model(self, checkpoint: int | Checkpoint | None) -> tuple[Any, Any]:
        step = checkpoint.step if isinstance(checkpoint, Checkpoint) else checkpoint
        key = ("step", step) if step is not None else ("final", self.registered_model)
        if self._model is None or self._model[0] != key:
            path = self._weights_dir(step)
            self._model = (key, *_load_model_and_tokenizer(path))
        return self._model[1], self._model[2]

    def _weights_dir(self, step: int | None) -> Path:
        if step is None and self.registered_model:
            return download_registered_model(self.registered_model, uri=self.tracking_uri)
        return download_checkpoint(self.run_id, step, uri=self.tracking_uri)

    # --- display ----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        state["_histories"] = {}
        return state

    def __repr__(self) -> str:
        p = self.progress
        total = f"/{p['total_steps']}" if p["total_steps"] else ""
        reason = f" ({shorten(self.status_reason, 60)})" if self.status_reason else ""
        return (
            f"Run(name={self.name!r}, status={self.status}{reason}, step={p['step']}{total}, "
            f"model={self._tags.get(state.MODEL_TAG, '')!r}, run_id={self.run_id!r})"
        )

    def _repr_html_(self) -> str:
        p = self.progress
        rows = [
            ("status", self.status + (f" — {self.status_reason}" if self.status_reason else "")),
            ("model", self._tags.get(state.MODEL_TAG, "")),
            ("step", f"{p['step']}" + (f" / {p['total_steps']}" if p["total_steps"] else "")),
            ("elapsed", _duration(p["elapsed_s"])),
            ("eta", _duration(p["eta_s"])),
            ("experiment", self.experiment_path),
            ("run id", self.run_id),
            ("registered model", self.registered_model or "—"),
        ]
        if self._tags.get("ftmagic.rerun_of"):
            rows.append(("reproducibility", self.reproducibility or "—"))
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return f"<div><b>ftmagic run {html.escape(self.name)}</b><table>{body}</table></div>"


def _history_from(
    mlflow_client: Any, run_id: str, name: str, offset: int
) -> list[tuple[int, int, float]]:
    """A metric's points from ``offset`` on, in the store's (timestamp, step, value) order."""
    from mlflow.utils.search_utils import SearchUtils

    # The one private mlflow attribute ftmagic reads: the public client only returns a whole
    # history, and the store's paged read is what lets a live view fetch just the new tail.
    tracking_store = mlflow_client._tracking_client.store
    token = SearchUtils.create_page_token(offset) if offset else None
    points: list[tuple[int, int, float]] = []
    while True:
        page = tracking_store.get_metric_history(
            run_id, name, max_results=HISTORY_PAGE, page_token=token
        )
        points.extend((int(m.timestamp), int(m.step), float(m.value)) for m in page)
        token = page.token
        if not token:
            return points


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _param_value(text: str) -> Any:
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _load_model_and_tokenizer(path: Path) -> tuple[Any, Any]:
    from ftmagic.models.generation import load_for_inference

    return load_for_inference(path)  # type: ignore[no-any-return]


# --- finding runs ----------------------------------------------------------------------------


def get_run(run_or_id_or_name: Run | str, *, uri: str | None = None) -> Run:
    """A run by MLflow run id or by name (searching every ftmagic experiment)."""
    if isinstance(run_or_id_or_name, Run):
        return Run(run_or_id_or_name.run_id, uri=run_or_id_or_name.tracking_uri).refresh()
    text = str(run_or_id_or_name).strip()
    uri = uri or tracking_uri()
    mlflow_client = client(uri)
    if RUN_ID_PATTERN.fullmatch(text):
        found = _by_id(mlflow_client, text)
        if found is not None:
            return Run.from_mlflow(found, uri=uri)
        raise RunError(f"no ftmagic run with id {text} in {uri}. Fix: see ftmagic.list()")
    if not text or any(c in text for c in "'\"\\`") or not text.isprintable():
        raise RunError(
            f"'{shorten(text, 60)}' is neither a run id nor a run name. "
            "Fix: pass a run id or name from ftmagic.list()"
        )
    experiments = _experiment_names(mlflow_client, None)
    if experiments:
        matches = mlflow_client.search_runs(
            list(experiments),
            filter_string=f"{FTMAGIC_RUNS} and attributes.run_name = '{text}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if matches:
            exp = experiments.get(matches[0].info.experiment_id)
            return Run.from_mlflow(matches[0], uri=uri, experiment_path=exp)
    names = [r.name for r in list_runs(limit=500, uri=uri)]
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see ftmagic.list()"
    raise RunError(f"no ftmagic run named '{text}' in {uri}; {hint}")


def _by_id(mlflow_client: Any, run_id: str) -> MlflowRun | None:
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client.get_run(run_id)
    except MlflowException:
        return None
    if found.info.lifecycle_stage != "active" or state.STATUS_TAG not in found.data.tags:
        return None
    return found  # type: ignore[no-any-return]


def _experiment_names(mlflow_client: Any, experiment_path: str | None) -> dict[str, str]:
    """Experiment id -> name: the one named ``experiment_path``, or every active one."""
    if experiment_path is not None:
        found = mlflow_client.get_experiment_by_name(experiment_path)
        ok = found is not None and found.lifecycle_stage == "active"
        return {found.experiment_id: found.name} if ok else {}
    experiments = mlflow_client.search_experiments(max_results=50000)
    return {e.experiment_id: e.name for e in experiments}


def list_runs(
    experiment_path: str | None = None, limit: int = 50, *, uri: str | None = None
) -> list[Run]:
    """ftmagic runs (those with an ``ftmagic.status`` tag), newest first."""
    uri = uri or tracking_uri()
    mlflow_client = client(uri)
    experiments = _experiment_names(mlflow_client, experiment_path)
    if not experiments:
        return []
    found = mlflow_client.search_runs(
        list(experiments),
        filter_string=FTMAGIC_RUNS,
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [
        Run.from_mlflow(r, uri=uri, experiment_path=experiments.get(r.info.experiment_id))
        for r in found
    ]


def delete_run(run: Run | str, *, uri: str | None = None) -> None:
    """Delete a run that is not running, and its artifacts."""
    run = get_run(run, uri=uri)
    if run.status in (RunStatus.RUNNING, RunStatus.PENDING) and run.is_alive:
        raise RunError(f"run {run.name} is still running. Fix: ftmagic.cancel(run) first")
    mlflow_client = client(run.tracking_uri)
    _delete_artifacts(run)
    mlflow_client.delete_run(run.run_id)


def _delete_artifacts(run: Run) -> None:
    import shutil

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    local = local_path(run._data["artifact_uri"])
    if local is not None:
        folder = local.parent if local.parent.name == run.run_id else local
        shutil.rmtree(folder, ignore_errors=True)
        return
    try:
        get_artifact_repository(run._data["artifact_uri"]).delete_artifacts()
    except Exception as err:  # some artifact stores cannot delete; the run is deleted anyway
        log.warning("run %s: artifacts not deleted (%s)", run.name, err)

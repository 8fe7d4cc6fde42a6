"""The Jupyter server extension behind JupyterLab's fine-tuning runs sidebar.

REST API under ``/ftmagic/api/`` (Jupyter's auth on every handler, Jupyter's XSRF check on POST):

- ``GET runs``: the store's runs, newest first, each with its progress, a downsampled
  ``train/loss`` series and ``error`` (what about the run could not be read, else null: one bad
  run never fails the list), plus the tracking URI and the MLflow UI URL (when one is known).
- ``GET runs/<id>``: one run for its detail view: events, curves (loss, eval loss, learning
  rate, tokens/s) and its checkpoints with their eval loss, metric and generations.
- ``POST runs/<id>/cancel``: ask a run to stop.
- ``GET fields``: the ``%%finetune`` config fields (name, help, the values of fixed-choice
  fields), read from ``RunConfig`` and the model catalog, for the editor's completion.

The handlers call the public ``ftmagic`` API and read the store the server sees:
``FtmagicExtension.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the
server's root folder. Every MLflow call runs in a worker thread, off the event loop; nothing
heavy is imported when the server starts. Run ids must be 32 hex characters: anything else, or an
unknown id, is a JSON 404, never a traceback or a path.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop
from traitlets import Int, Unicode
from traitlets.config import Configurable

log = logging.getLogger(__name__)

API_PATH = "ftmagic/api"
RUN_ID = re.compile(r"[0-9a-f]{32}")
LOSS_METRIC = "train/loss"
SETTINGS_KEY = "ftmagic"

T = TypeVar("T")


class FtmagicExtension(Configurable):
    """Settings of the sidebar's server side (``jupyter lab --FtmagicExtension.<name>=...``).

    Also holds what the handlers share: the worker threads for MLflow calls and a cache of what
    never changes about a run (its model, and the loss curve once the run has ended).
    """

    mlflow_ui_url = Unicode(
        "",
        config=True,
        help="URL of an MLflow UI for the sidebar's 'Open in MLflow' links. Empty: "
        "$FTMAGIC_MLFLOW_UI, else the tracking URI when it is an MLflow server (http...).",
    )
    tracking_uri = Unicode(
        "",
        config=True,
        help="MLflow tracking URI the sidebar reads. Empty: $MLFLOW_TRACKING_URI, else "
        "sqlite:///<root_dir>/mlflow.db.",
    )
    max_runs = Int(50, config=True, help="Most runs the sidebar lists.")
    loss_points = Int(80, config=True, help="Most train/loss points sent per run.")

    def __init__(self, root_dir: str = ".", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root_dir = root_dir
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ftmagic-api")
        self.static: dict[str, dict[str, Any]] = {}  # run id -> facts that no longer change

    def resolved_tracking_uri(self) -> str:
        env = os.environ.get("MLFLOW_TRACKING_URI", "")
        if self.tracking_uri or env:
            return self.tracking_uri or env
        return f"sqlite:///{Path(self.root_dir).resolve() / 'mlflow.db'}"

    def resolved_ui_url(self) -> str | None:
        url = self.mlflow_ui_url or os.environ.get("FTMAGIC_MLFLOW_UI", "")
        uri = self.resolved_tracking_uri()
        if not url and uri.startswith(("http://", "https://")):
            url = uri  # an MLflow tracking server serves its UI too
        return url.rstrip("/") or None


# --- pure helpers ------------------------------------------------------------------------------


def downsample(points: Sequence[tuple[int, float]], limit: int) -> list[list[float]]:
    """At most ``limit`` evenly spaced points, always keeping the first and the last.

    >>> downsample([(i, float(i)) for i in range(10)], 4)
    [[0, 0.0], [3, 3.0], [6, 6.0], [9, 9.0]]
    """
    if limit <= 0 or not points:
        return []
    if len(points) <= limit:
        picked = list(points)
    elif limit == 1:
        picked = [points[-1]]
    else:
        last = len(points) - 1
        indices = sorted({round(i * last / (limit - 1)) for i in range(limit)})
        picked = [points[i] for i in indices]
    return [[step, value] for step, value in picked]


def valid_run_id(run_id: str) -> str:
    """The id itself when it is an MLflow run id, else a 404 (it never reaches the store)."""
    if not RUN_ID.fullmatch(run_id):
        raise tornado.web.HTTPError(404, reason="Run not found")
    return run_id


# --- reading runs (blocking; called in worker threads) ----------------------------------------


def _run_model(run: Any) -> str:
    try:
        return str(run.config.model)
    except Exception as err:  # an unreadable config must not hide the run from the list
        log.warning("run %s: config not readable (%s)", run.run_id, err)
        return ""


def summarize(run: Any, ext: FtmagicExtension) -> dict[str, Any]:
    """What the sidebar shows for one run, with ``error`` saying what could not be read; a run
    that cannot be read at all is listed by its id and the error."""
    try:
        return {**_summary(run, ext), "error": "; ".join(run.tag_problems) or None}
    except Exception as err:  # one unreadable run must not hide the others
        log.warning("run %s: not readable (%s)", run.run_id, err)
        return _unreadable(run, err)


def _unreadable(run: Any, err: Exception) -> dict[str, Any]:
    progress = {"step": 0, "total_steps": None, "tokens": None, "elapsed_s": None, "eta_s": None}
    return {
        "id": run.run_id,
        "name": run.run_id,
        "model": "",
        "status": None,
        "status_reason": None,
        "progress": progress,
        "created": None,
        "loss": [],
        "error": f"run not readable: {type(err).__name__}: {err}",
    }


def _summary(run: Any, ext: FtmagicExtension) -> dict[str, Any]:
    """The model and a finished run's curve are cached."""
    static = ext.static.setdefault(run.run_id, {})
    if "model" not in static:
        static["model"] = _run_model(run)
    status = run.status
    if not run.is_done:
        static.pop("loss", None)  # a resumed run's curve grows again
    loss = static.get("loss")
    if loss is None:
        series = run.metrics([LOSS_METRIC]).get(LOSS_METRIC, [])
        loss = downsample(series, ext.loss_points)
        if run.is_done:  # an ended run's curve no longer changes
            static["loss"] = loss
    return {
        "id": run.run_id,
        "name": run.name,
        "model": static["model"],
        "status": status,
        "status_reason": run.status_reason,
        "progress": run.progress,
        "created": run.created.timestamp(),
        "loss": loss,
    }


def list_runs(ext: FtmagicExtension) -> dict[str, Any]:
    from ftmagic.tracking.run import list_runs as find_runs

    uri = ext.resolved_tracking_uri()
    runs = find_runs(limit=ext.max_runs, uri=uri)
    return {
        "runs": [summarize(run, ext) for run in runs],
        "tracking_uri": uri,
        "mlflow_ui_url": ext.resolved_ui_url(),
    }


def _get_run(run_id: str, ext: FtmagicExtension) -> Any:
    from ftmagic.errors import RunError
    from ftmagic.tracking.run import get_run

    try:
        return get_run(run_id, uri=ext.resolved_tracking_uri())
    except RunError:
        raise tornado.web.HTTPError(404, reason="Run not found") from None


DETAIL_CURVES = ("train/loss", "eval/loss", "train/lr", "train/tokens_per_s")
DETAIL_POINTS = 400


def run_detail(run_id: str, ext: FtmagicExtension) -> dict[str, Any]:
    """One run for its detail view: the summary, every event, the curves (each downsampled to
    ``DETAIL_POINTS``) and a row per checkpoint with its eval loss, metric and generations."""
    run = _get_run(run_id, ext)
    events = [
        {"type": e.type, "time": e.time.isoformat(), "message": e.message, "step": e.step}
        for e in run.events
    ]
    series = run.metrics(list(DETAIL_CURVES))
    curves = {name: downsample(series.get(name, []), DETAIL_POINTS) for name in DETAIL_CURVES}
    return {
        **summarize(run, ext),
        "events": events,
        "curves": curves,
        **checkpoint_rows(run),
    }


def checkpoint_rows(run: Any) -> dict[str, Any]:
    """The run's checkpoints as the gallery sees them, each with the eval prompts' generations
    (or the eval metric's scored ones)."""
    from ftmagic.checkpoint_gallery import gallery

    shown = gallery(run)
    plain: dict[int, list[dict[str, str]]] = {}
    for row in run.generations():
        plain.setdefault(int(row["step"]), []).append(
            {"prompt": str(row["prompt"]), "response": str(row["response"])}
        )
    rows = []
    for row in shown.rows:
        scored = [
            {"prompt": str(g["prompt"]), "response": str(g["prediction"])} for g in row.generations
        ]
        rows.append(
            {
                "step": row.step,
                "eval_loss": row.eval_loss,
                "metric": row.metric,
                "best": row.best,
                "models": row.models,
                "generations": scored or plain.get(row.step, []),
            }
        )
    return {"metric_name": shown.metric_name, "checkpoints": rows}


def cancel_run(run_id: str, ext: FtmagicExtension) -> dict[str, Any]:
    import ftmagic
    from ftmagic.tracking import state
    from ftmagic.tracking.client import tracking_uri

    run = _get_run(run_id, ext)
    if run.is_done:
        raise tornado.web.HTTPError(409, reason=f"Run already {run.status}")
    if run.tracking_uri == tracking_uri():
        run = ftmagic.cancel(run)
    else:
        # ftmagic.cancel talks to this process's default store; this server watches another
        # one, so set the cancel flag there (every backend's trainer polls it).
        state.request_cancel(run.run_id, uri=run.tracking_uri)
        run = run.refresh()
    return summarize(run, ext)


def config_fields() -> dict[str, Any]:
    """Every ``RunConfig`` field with its help and fixed values, in declaration order; the
    same lists the kernel's completer offers (``ftmagic.ui.completion``), so they cannot drift."""
    from ftmagic.config import RunConfig
    from ftmagic.ui.completion import field_values

    return {
        "fields": [
            {"name": name, "help": text, "values": field_values(name)}
            for name, text in RunConfig.help().items()
        ]
    }


# --- handlers ------------------------------------------------------------------------------


class _Handler(APIHandler):
    """Runs a blocking store call in a worker thread and answers JSON (errors too)."""

    @property
    def ext(self) -> FtmagicExtension:
        ext: FtmagicExtension = self.settings[SETTINGS_KEY]
        return ext

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        loop = IOLoop.current()
        return await loop.run_in_executor(self.ext.executor, func, *args)

    def answer(self, data: dict[str, Any]) -> None:
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A short JSON message; the traceback goes to the server log, never to the client."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError):
            message = exc.reason or self._reason
        else:
            message = "Internal error in the ftmagic extension; see the server log"
        self.finish(json.dumps({"message": message, "status": status_code}))


class RunsHandler(_Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.answer(await self.call(list_runs, self.ext))


class RunHandler(_Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        self.answer(await self.call(run_detail, valid_run_id(run_id), self.ext))


class CancelHandler(_Handler):
    @tornado.web.authenticated
    async def post(self, run_id: str) -> None:
        self.answer(await self.call(cancel_run, valid_run_id(run_id), self.ext))


class FieldsHandler(_Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.answer(await self.call(config_fields))


class NotFoundHandler(_Handler):
    """Any other path under the API: a JSON 404 (after the usual auth and XSRF checks)."""

    @tornado.web.authenticated
    def get(self) -> None:
        raise tornado.web.HTTPError(404, reason="Not found")

    post = put = patch = delete = get


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the handlers (called by Jupyter Server at start; imports nothing heavy)."""
    ext = FtmagicExtension(root_dir=serverapp.root_dir, config=serverapp.config)
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = ext
    base = url_path_join(web_app.settings["base_url"], API_PATH)
    run = r"(?P<run_id>[^/]+)"
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "runs"), RunsHandler),
            (url_path_join(base, "runs", run), RunHandler),
            (url_path_join(base, "runs", run, "cancel"), CancelHandler),
            (url_path_join(base, "fields"), FieldsHandler),
            (url_path_join(base, ".*"), NotFoundHandler),
        ],
    )
    serverapp.log.info("ftmagic: runs API at %s (store %s)", base, ext.resolved_tracking_uri())


def _unload_jupyter_server_extension(serverapp: Any) -> None:
    """Stop the worker threads when the server stops."""
    ext = serverapp.web_app.settings.get(SETTINGS_KEY)
    if isinstance(ext, FtmagicExtension):
        ext.executor.shutdown(wait=False, cancel_futures=True)

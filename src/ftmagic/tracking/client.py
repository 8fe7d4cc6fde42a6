"""Where run state lives: the tracking URI, the ``MlflowClient`` for it, experiments, a run's
artifact folder and the local cache. Every other tracking module reaches MLflow through here."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from ftmagic.errors import RunError, shorten

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


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
    location = (root / slug(name, "_")).as_uri() if root else None
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


def run_tags(run_id: str, *, uri: str | None = None) -> dict[str, str]:
    """The run's tags as they are now."""
    return dict(client(uri).get_run(run_id).data.tags)


def set_tag(run_id: str, key: str, value: object, *, uri: str | None = None) -> None:
    client(uri).set_tag(run_id, key, str(value))


def set_tags(run_id: str, tags: dict[str, object], *, uri: str | None = None) -> None:
    """Write several tags in one request."""
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def slug(text: str, sep: str) -> str:
    return re.sub(r"[^a-z0-9]+", sep, text.lower()).strip(sep)

"""The checkpoint commit protocol and the download cache.

A checkpoint is the artifact folder ``checkpoints/step-NNNNNNN/`` of its run. The trainer saves
into :func:`checkpoint_dir`, then :func:`commit_checkpoint` uploads it (when the artifact store is
not local) and writes the ``COMPLETE`` marker last, listing every file with its size. A folder
without the marker is never listed or used; a download is checked against the marker and renamed
into the cache only when whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.errors import RunError
from ftmagic.tracking.client import cache_dir, check_run_id, client, local_artifact_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: its step, artifact URI and what the trainer recorded with it."""

    step: int
    uri: str
    tokens: int | None = None
    eval_loss: float | None = None
    time: datetime | None = None


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

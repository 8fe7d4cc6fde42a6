"""A disk that fills up while a checkpoint is written: the run fails saying so and how much space a
checkpoint needs, leaves nothing half-written behind, and keeps its earlier checkpoints."""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import fixtures_train
from fixtures_train import fast_config
from ftmagic.train.trainer import StepReport, train

train_env = fixtures_train.train_env

# What torch.save raises when the disk fills mid-file, and what a plain write raises.
FAILURES = {
    "torch": RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 5186112 vs 5186000"
    ),
    "os": OSError(errno.ENOSPC, "No space left on device"),
}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_full_disk_fails_the_run_and_leaves_no_partial_checkpoint(
    train_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    from ftmagic.tracking import store

    config = fast_config(train_env, training_duration="4ba", checkpoint_interval="2ba")
    run_id = str(store.create_run(config, backend="inkernel"))
    artifacts = store.local_artifact_dir(store.client(), run_id)
    real_save = torch.save
    full = False

    def save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if not full:
            real_save(obj, path, *args, **kwargs)
            return
        Path(path).write_bytes(b"\0" * 4096)  # what fitted before the disk filled
        raise FAILURES[failure]

    def fill_disk(report: StepReport) -> None:
        nonlocal full
        full = full or report.step == 3

    monkeypatch.setattr(torch, "save", save)
    result = train(config, run_id, progress=fill_disk)

    assert result.status == "FAILED"
    reason = str(result.reason)
    match = re.match(
        r"no space left on device while writing checkpoint step 4 \(needs about ([0-9.,]+) MB\)",
        reason,
    )
    assert match, reason
    assert "earlier checkpoints are intact" in reason
    tags = store.client().get_run(run_id).data.tags
    assert (tags["ftmagic.status"], tags["ftmagic.status_reason"]) == ("FAILED", reason)
    assert [c.step for c in store.list_checkpoints(run_id)] == [2]
    assert list(artifacts.rglob("*.partial")) == []
    assert not (artifacts / "checkpoints" / "step-0000004").exists()
    earlier = store.download_checkpoint(run_id)
    needed = float(match.group(1).replace(",", "")) * 1e6
    assert 0.9 * folder_bytes(earlier) <= needed <= 1.5 * folder_bytes(earlier)
    monkeypatch.undo()
    resumed = train(config, run_id, resume=True)
    assert resumed.status == "COMPLETED", resumed.reason
    assert [c.step for c in store.list_checkpoints(run_id)] == [2, 4]

"""Reproducible runs: every run records its resolved config, data fingerprint, package versions and
seed; ``ftmagic.rerun`` repeats it with losses equal to 1e-4 on CPU, and says what changed."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import ftmagic
from fixtures_train import fast_config, losses_of, train_env  # noqa: F401 (fixture)
from ftmagic.tracking.reproduce import DATA_TAG, ENV_TAG, RERUN_OF_TAG, changes, read_record

pytestmark = pytest.mark.timeout(300)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_records_its_inputs_and_a_rerun_repeats_its_losses(
    train_env: dict[str, Any],  # noqa: F811
) -> None:
    data = train_env["root"] / "rerun-train.jsonl"
    data.write_text(train_env["train"].read_text(encoding="utf-8"), encoding="utf-8")
    config = fast_config(
        train_env, train_data_path=str(data), eval_data_path=str(train_env["eval"]),
        training_duration="3ba",
    )  # fmt: skip
    original = ftmagic.create(config).wait(timeout=240, poll=0.3)
    assert original.status == "COMPLETED", original.status_reason

    # What the run was trained with is recorded.
    record = read_record(original.run_id)
    assert record is not None
    assert record["config"] == config.to_dict() and record["seed"] == config.seed == 17
    assert record["data"] == {"train": sha256(data), "eval": sha256(train_env["eval"])}
    assert record["packages"]["torch"] == metadata.version("torch")
    assert record["packages"]["transformers"] == metadata.version("transformers")
    resolved = record["resolved"]
    assert (resolved["learning_rate"], resolved["warmup_steps"], resolved["total_steps"]) == (
        2e-3, 1, 3,
    )  # fmt: skip
    tags = original._tags
    assert tags[DATA_TAG] == record["data_fingerprint"]
    assert tags[ENV_TAG] == record["env_fingerprint"]
    assert original.reproducibility is None  # not a rerun

    again = ftmagic.rerun(original).wait(timeout=240, poll=0.3)
    assert again.status == "COMPLETED", again.status_reason
    assert again.run_id != original.run_id and again._tags[RERUN_OF_TAG] == original.run_id
    want, got = losses_of(original.run_id), losses_of(again.run_id)
    assert sorted(got) == sorted(want) == [1, 2, 3]
    assert all(abs(got[s] - want[s]) <= 1e-4 for s in want), (want, got)
    assert again.reproducibility == (
        f"rerun of {original.run_id}: same data, packages, seed and settings"
    )

    # The data changes: the rerun says so before it starts (an event) and in its summary.
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines[:-20]) + "\n", encoding="utf-8")
    changed = ftmagic.rerun(original).wait(timeout=240, poll=0.3)
    note = next(e.message for e in changed.events if e.type == "RERUN_OF")
    assert "train data changed" in note
    assert "train data changed" in str(changed.reproducibility)
    assert "reproducibility" in changed._repr_html_()


def test_changes_name_each_difference() -> None:
    base = {
        "data": {"train": "a" * 64, "eval": None},
        "packages": {"torch": "2.13.0", "python": "3.11.9"},
        "seed": 17,
        "resolved": {"warmup_steps": 1},
    }
    other = {
        "data": {"train": "b" * 64, "eval": None},
        "packages": {"torch": "2.14.0", "python": "3.11.9", "peft": "0.13.0"},
        "seed": 18,
        "resolved": {"warmup_steps": 2},
    }
    assert changes(base, base) == []
    assert changes(base, other) == [
        "train data changed (sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb)",
        "peft absent -> 0.13.0",
        "torch 2.13.0 -> 2.14.0",
        "seed 17 -> 18",
        "warmup_steps 1 -> 2",
    ]

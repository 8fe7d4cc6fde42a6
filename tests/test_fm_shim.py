"""``from ftmagic import foundation_model as fm``: scripts written for the retired hosted SDK run
unchanged apart from the import, on the built-in tiny model and the bundled NER data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fixtures_tracking import make_config
from fixtures_train import write_slice
from ftmagic import examples
from ftmagic import foundation_model as fm
from ftmagic.errors import ConfigError
from ftmagic.tracking import store

HOSTED_EVENTS = {"CREATED", "DATA_VALIDATED", "TRAIN_STARTED", "CHECKPOINT_SAVED", "COMPLETED"}

# The create() example of the hosted product's docs, with the tiny model and short durations.
HOSTED_DOCS_SCRIPT = """
from ftmagic import foundation_model as fm

run = fm.create(
    model='ftmagic/tiny-random-chat',
    train_data_path='dbfs:/Volumes/main/mydirectory/ift/train.jsonl',  # UC Volume with JSONL data
    register_to='main.mydirectory',  # UC catalog and schema to register the model to
    training_duration='1ba',
    learning_rate='5e-7',
)
"""

# The NER demo's training cell as hosted-SDK users wrote it (data_prep_cluster_id included).
NER_CELL = """
from ftmagic import foundation_model as fm

run = fm.create(
    data_prep_cluster_id="0123-456789-abcdefgh",
    model=MODEL,
    experiment_path="ner-tutorial",
    task_type="CHAT_COMPLETION",
    train_data_path=train_path,
    eval_data_path=eval_path,
    eval_prompts=eval_prompts,
    register_to="main.ner",
    training_duration=DURATION,
    learning_rate=LEARNING_RATE,
    tokens_per_batch=TOKENS_PER_BATCH,
)
print(fm.get_events(run))
"""


def finished(run: fm.TrainingRun) -> fm.TrainingRun:
    run.ftmagic_run.wait(timeout=300, poll=0.5)
    return fm.get(run)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_hosted_docs_create_example_runs_unchanged(
    mlflow_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "Volumes" / "main" / "mydirectory" / "ift"
    volume.mkdir(parents=True)
    write_slice(Path(examples.path("ner", "train")), volume / "train.jsonl", 200)
    monkeypatch.setenv(fm.VOLUMES_ROOT_ENV, str(tmp_path / "Volumes"))
    namespace: dict[str, object] = {}
    exec(HOSTED_DOCS_SCRIPT, namespace)
    run = namespace["run"]
    assert isinstance(run, fm.TrainingRun)
    assert run.train_data_path == str(volume / "train.jsonl")
    assert run.status in (fm.RunStatus.PENDING, fm.RunStatus.QUEUED, fm.RunStatus.RUNNING)

    run = finished(run)
    assert run.status == "COMPLETED" and run.status is fm.RunStatus.COMPLETED
    assert run.learning_rate == 5e-7 and run.training_duration == "1ba"
    assert run.register_to == "main.mydirectory"
    assert run.registered_model.startswith("models:/main.mydirectory.")
    assert run.completed_at is not None and run.started_at <= run.completed_at
    names = [e.type for e in fm.get_events(run)]
    assert set(names) >= HOSTED_EVENTS, names
    assert names[0] == "CREATED" and names[-1] == "COMPLETED"
    assert [c.step for c in fm.get_checkpoints(run)] == [1]
    assert [r.name for r in fm.list()] == [run.name]
    assert fm.get(run.name).run_id == run.run_id


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_ner_demo_cell_runs_through_the_shim(mlflow_store: str, tmp_path: Path) -> None:
    train_path = write_slice(Path(examples.path("ner", "train")), tmp_path / "train.jsonl", 200)
    namespace: dict[str, object] = {
        "MODEL": "ftmagic/tiny-random-chat",
        "DURATION": "2ba",
        "LEARNING_RATE": 3e-3,
        "TOKENS_PER_BATCH": 512,
        "train_path": str(train_path),
        "eval_path": write_slice(Path(examples.path("ner", "eval")), tmp_path / "e.jsonl", 16),
        "eval_prompts": [examples.load("ner", "test")[0]["messages"][1]["content"]],
    }
    with pytest.warns(fm.HostedOnlyArgument) as notes:
        exec(NER_CELL, namespace)
    assert len(notes) == 1
    assert "data_prep_cluster_id" in str(notes[0].message)
    assert "no data-preparation cluster" in str(notes[0].message)
    run = finished(namespace["run"])  # type: ignore[arg-type]
    assert run.status == "COMPLETED", run.details
    assert run.experiment_path == "ner-tutorial" and run.eval_data_path
    assert run.registered_model.startswith("models:/main.ner.")
    assert run.ftmagic_run.config.tokens_per_batch == 512  # an ftmagic field passed through
    assert run.generations()  # the eval prompt was answered at the checkpoint
    assert fm.get_checkpoints(run)[-1].eval_loss is not None


def test_dbfs_volume_paths_map_to_the_mount_or_say_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fm.VOLUMES_ROOT_ENV, str(tmp_path))
    got = fm.local_path("dbfs:/Volumes/main/s/v/train.jsonl", "train_data_path")
    assert got == str(tmp_path / "main/s/v/train.jsonl")
    assert fm.local_path("data/train.jsonl", "train_data_path") == "data/train.jsonl"
    monkeypatch.setenv(fm.VOLUMES_ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="no volume is mounted at") as err:
        fm.create(
            model="ftmagic/tiny-random-chat", train_data_path="dbfs:/Volumes/main/s/v/t.jsonl"
        )
    assert err.value.field == "train_data_path" and "FTMAGIC_VOLUMES_ROOT" in str(err.value)
    with pytest.raises(ConfigError, match="DBFS path") as err:
        fm.local_path("dbfs:/FileStore/train.jsonl", "eval_data_path")
    assert err.value.field == "eval_data_path"


def test_statuses_and_filters_follow_the_hosted_sdk(mlflow_store: str) -> None:
    first = store.create_run(make_config(experiment_path="fm"), backend="local")
    assert fm.get(first).status is fm.RunStatus.PENDING
    store.add_event(first, "SUBMITTED", "handed to the local backend")
    assert fm.get(first).status is fm.RunStatus.QUEUED
    assert [e.type for e in fm.get_events(first)] == ["CREATED", "QUEUED"]
    second = store.create_run(make_config(experiment_path="fm"), backend="local")
    store.set_status(second, "FAILED", "out of memory")
    failed = fm.get(second)
    assert failed.status.is_terminal() and failed.details == "out of memory"
    assert [r.run_id for r in fm.list()] == [second, first]
    assert [r.run_id for r in fm.list(limit=1)] == [second]
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert fm.list(after=later) == [] and len(fm.list(before=later.isoformat())) == 2
    assert [r.run_id for r in fm.list([first])] == [first]
    with pytest.raises(ConfigError, match="is not a date"):
        fm.list(before="yesterday")
    assert fm.delete([second]) == 1
    assert [r.run_id for r in fm.list()] == [first]


def test_foundation_model_imports_without_heavy_modules() -> None:
    code = textwrap.dedent(
        """
        import sys
        from ftmagic import foundation_model as fm
        assert callable(fm.create) and callable(fm.get_checkpoints)
        heavy = {m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'transformers'}
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

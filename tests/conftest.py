"""Fixtures shared by the whole suite.

Nothing a test does may write into the repository: the default MLflow store and the run cache
point at a session temp folder unless a test sets its own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="ftmagic-tests-"))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_SESSION_DIR / 'mlflow.db'}")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share two cores: a thread each keeps torch from oversubscribing them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test; returns its tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order work is handed out in: the notebooks first (NER, the longest, before the
    others), then the files with long module fixtures, then the rest, so short files fill the
    end and neither worker waits long for the other."""

    def rank(item: pytest.Item) -> tuple[int, int]:
        unit = work_unit(item.nodeid)
        if unit == item.nodeid:  # a notebook run
            return (0, LONGEST not in unit)
        return (1, HEAVY_FILES.index(unit)) if unit in HEAVY_FILES else (2, 0)

    items.sort(key=rank)  # stable: collection order within a rank


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For ``-n 2 --dist loadscope --no-loadscope-reorder``: each test file is one unit of work
    (its module fixtures, such as a Ray head or a JupyterLab server, start once), except each
    notebook run, a unit of its own, so the other worker works through the rest meanwhile.

    xdist's ``loadgroup`` did this through ``xdist_group`` marks, but since pytest 9.2 its
    change of the node ID no longer takes, and every test became a unit of its own."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrNotebookScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FileOrNotebookScheduling(config, log)


def work_unit(nodeid: str) -> str:
    """What runs in one worker together: a notebook run alone, any other test with its file."""
    return nodeid if nodeid.startswith(NOTEBOOK_RUNS) else nodeid.split("::")[0]


NOTEBOOK_RUNS = "tests/test_notebooks.py::test_notebook_runs_headless"
LONGEST = "02_ner_instruction_finetuning"
HEAVY_FILES = [
    "tests/test_ray_runner.py",
    "tests/test_lab_ui.py",
    "tests/test_local_runner.py",
    "tests/test_fsdp_resume.py",
    "tests/test_architectures.py",
    "tests/test_durable_outputs.py",
    "tests/test_registry_serving.py",
    "tests/test_counting.py",
]

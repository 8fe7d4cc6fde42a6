"""Fixtures shared by the whole suite.

Nothing a test does may write into the repository: the default MLflow store and the run cache
point at a session temp folder unless a test sets its own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
    """For ``-n 2 --dist loadgroup --no-loadscope-reorder``: each test file runs in one worker
    (its module fixtures, such as a Ray head or a JupyterLab server, start once), except the
    notebooks, the longest tests, which run one each and first (the NER one before the others),
    so the other worker works through the rest meanwhile."""
    notebooks = [i for i in items if i.nodeid.startswith(NOTEBOOK_RUNS)]
    notebooks.sort(key=lambda i: LONGEST not in i.nodeid)
    for item in items:
        group = item.nodeid if item in notebooks else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    items[:] = notebooks + [i for i in items if i not in notebooks]


NOTEBOOK_RUNS = "tests/test_notebooks.py::test_notebook_runs_headless"
LONGEST = "02_ner_instruction_finetuning"

"""Every tutorial notebook runs headless, top to bottom, without an error.

Each notebook is copied into a temporary folder (so its SQLite MLflow store, data copies and images
land there) and executed by nbclient on a real ipykernel from this virtualenv. The parameters cell
keeps its tiny-model defaults; a cell injected after it (like papermill's) only shortens the runs so
the whole set fits the suite's time budget. Each notebook's last cell asserts its headline numbers,
so a notebook that runs but learns nothing fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fixtures_ui import write_kernelspec

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# Shorter runs than the notebooks' defaults, same models and data.
OVERRIDES: dict[str, dict[str, object]] = {
    "01_quickstart.ipynb": {"DURATION": "20ba", "TRAIN_EXAMPLES": 600},
    # A third of the NER notebook's training, scored on 60 of the 250 test sentences; the
    # notebook's own check that test F1 on unseen drugs reaches MIN_F1 = 0.8 still runs (0.5 epochs
    # reached 0.915 on these 60 sentences; the default 1.5 epochs reach 0.94 on all 250).
    "02_ner_instruction_finetuning.ipynb": {
        "IMG_DIR": "img",
        "DURATION": "0.5ep",
        "TEST_EXAMPLES": 60,
    },
    "03_chat_completion.ipynb": {"DURATION": "16ba", "CHECKPOINT_EVERY": "8ba"},
    "04_continued_pretraining.ipynb": {"DURATION": "0.5ep"},
    "05_panel.ipynb": {"DURATION": "4ba"},
}
# Per-cell limits: generous, because a shared CI machine can be many times slower than an idle one.
TIMEOUTS = {"02_ner_instruction_finetuning.ipynb": 1800}


@pytest.fixture
def kernel_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``python3`` kernelspec that runs this interpreter (the venv's ipykernel), found first on
    ``JUPYTER_PATH``; no MLflow URI, so each notebook picks its own default store."""
    root = write_kernelspec(tmp_path_factory.mktemp("jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def with_overrides(nb: nbformat.NotebookNode, overrides: dict[str, object]) -> None:
    """Insert a cell that reassigns ``overrides`` right after the ``parameters`` cell."""
    index = next(
        i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    )
    params = nb.cells[index].source
    for name in overrides:
        assert f"\n{name} = " in f"\n{params}", f"{name} is not a parameter of this notebook"
    source = "\n".join(f"{name} = {value!r}" for name, value in overrides.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(OVERRIDES)


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_is_committed_clean(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.strip() == "%load_ext ftmagic"
    assert "parameters" in code[1].metadata.get("tags", [])
    assert 'MODEL = "ftmagic/tiny-' in code[1].source  # a built-in model by default
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_notebook_runs_headless(name: str, tmp_path: Path, kernel_env: None) -> None:
    shutil.copy(NOTEBOOKS / name, tmp_path / name)
    nb = nbformat.read(tmp_path / name, as_version=4)
    with_overrides(nb, OVERRIDES[name])
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=TIMEOUTS.get(name, 900),
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / f"executed-{name}")  # kept for a look when a test fails
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert errors == []
    assert (tmp_path / "mlflow.db").exists(), "the notebook's default store lands next to it"
    shown = "".join(
        json.dumps(o.get("data", {})) + o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "Traceback" not in shown

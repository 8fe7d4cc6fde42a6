"""A ``%%finetune --wait`` cell run by nbclient on a real kernel, saved and read back: the cell
keeps plain outputs (an HTML summary card and a PNG of the curves) instead of widget views, the
saved notebook converts to HTML with the image, and no third-party bar or warning is in it."""

from __future__ import annotations

import base64
from typing import Any

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from fixtures_ui import fast_fields, kernel_spec, noise_in, ui_env

__all__ = ["kernel_spec", "ui_env"]

PNG = b"\x89PNG\r\n\x1a\n"
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def saved(ui_env: dict[str, Any], kernel_spec: str) -> nbformat.NotebookNode:
    """The notebook executed, written to disk and read back; the store is a fresh SQLite file
    in its folder, so mlflow creates its tables in the kernel."""
    folder = ui_env["root"] / "durable"
    folder.mkdir()
    fields = fast_fields(
        ui_env,
        training_duration="2ba",
        checkpoint_interval="1ba",
        eval_data_path=str(ui_env["eval"]),
        eval_prompts=["Aspirin and ibuprofen."],
        register_to="main.durable",
    )
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            f"%env MLFLOW_TRACKING_URI=sqlite:///{folder / 'mlflow.db'}\n%load_ext ftmagic"
        ),
        nbformat.v4.new_code_cell("%%finetune --wait\n" + yaml.safe_dump(fields)),
    ]
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name=kernel_spec,
        resources={"metadata": {"path": str(folder)}},
    ).execute()
    nbformat.write(notebook, folder / "run.ipynb")
    return nbformat.read(folder / "run.ipynb", as_version=4)


def training_outputs(notebook: nbformat.NotebookNode) -> list[Any]:
    return list(notebook.cells[1].outputs)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_saved_cell_keeps_the_curves_and_a_summary_card(saved: nbformat.NotebookNode) -> None:
    outputs = training_outputs(saved)
    assert [o for o in outputs if WIDGET in o.get("data", {})] == []  # no widget-only output
    images = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1
    png = base64.b64decode(images[0])
    assert png.startswith(PNG) and len(png) > 5000
    cards = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(cards) == 1
    card = cards[0]
    assert "ftmagic-summary" in card and ">COMPLETED<" in card
    assert "steps</th>" in card and "2 of 2" in card
    assert "best eval loss" in card and "final eval loss" in card and "tokens/s" in card
    assert "checkpoints" in card and "2 (steps 1, 2)" in card
    assert "models:/main.durable." in card and "/1" in card
    assert "mlflow ui --backend-store-uri sqlite:///" in card
    assert "mlflow models serve -m models:/main.durable." in card
    assert "Cancel" not in card
    text = next(o.data["text/plain"] for o in outputs if "text/html" in o.get("data", {}))
    assert "COMPLETED" in text and "best eval loss" in text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_cell_shows_no_third_party_bars_or_warnings(saved: nbformat.NotebookNode) -> None:
    shown = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for o in training_outputs(saved) + list(saved.cells[0].outputs)
    )
    assert noise_in(shown) == []
    streams = [o.text for o in training_outputs(saved) if o.output_type == "stream"]
    assert len(streams) == 1 and streams[0].startswith("run ") and "COMPLETED" in streams[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_nbconvert_html_holds_the_image_and_the_card(saved: nbformat.NotebookNode) -> None:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(saved)
    image = next(o.data["image/png"] for o in training_outputs(saved) if "image/png" in o.data)
    assert f"data:image/png;base64,{image[:200]}" in body.replace("\n", "")
    assert "ftmagic-summary" in body and "COMPLETED" in body
    assert "Error displaying widget" not in body

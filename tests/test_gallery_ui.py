"""The checkpoint gallery in the notebook: the panel's Results tab (a Promote button per
checkpoint), ``%ft status`` and the summary card a finished run cell keeps, all read from one real
tiny run of three steps with a checkpoint at each, scored by a built-in metric."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ftmagic
from fixtures_train import fast_config, train_env  # noqa: F401 (fixture)
from fixtures_ui import TestingShell, ipshell  # noqa: F401 (fixture)
from ftmagic.checkpoint_gallery import STEP_TAG
from ftmagic.tracking import store
from ftmagic.ui import html as render
from ftmagic.ui.live import LiveView
from ftmagic.ui.tabs import ResultsTab


@pytest.fixture(scope="module")
def scored_run(train_env: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    config = fast_config(
        train_env,
        training_duration="3ba",
        checkpoint_interval="1ba",
        eval_data_path=str(train_env["eval"]),
        eval_metric="exact_match",
        eval_metric_samples=2,
        max_new_tokens=4,
        experiment_path="gallery-ui",
    )
    run = ftmagic.create(config).wait(timeout=300, poll=0.3)
    assert run.status == "COMPLETED", run.status_reason
    assert [c.step for c in run.checkpoints] == [1, 2, 3]
    yield run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_results_tab_lists_checkpoints_and_promotes_the_middle_one(scored_run: Any) -> None:
    tab = ResultsTab()
    tab.show(scored_run)
    box = tab.gallery
    best = ftmagic.gallery(scored_run).best_step
    assert best in (1, 2, 3)
    assert sorted(box.rows) == [1, 2, 3]
    assert [("★ best" in row.children[0].value) for row in box.rows.values()] == [
        step == best for step in (1, 2, 3)
    ]
    assert box.table.value.count("<tr") == 4 and "★ best" in box.table.value
    assert box.register_to.value == ""  # the run registers nothing itself

    # No model name: the row says how to give one, and registers nothing.
    middle = box.rows[2]
    middle.button.click()
    assert "no register_to" in middle.result.value and not middle.button.disabled
    assert store.run_model_versions(scored_run.run_id) == []

    box.register_to.value = "main.gallery_ui.tiny"
    middle.alias.value = " champion "
    middle.button.click()
    assert "models:/main.gallery_ui.tiny/1" in middle.result.value
    assert "champion" in middle.result.value
    [version] = store.run_model_versions(scored_run.run_id)
    assert version["uri"] == "models:/main.gallery_ui.tiny/1"
    assert version["tags"][STEP_TAG] == "2" and version["aliases"] == ["champion"]
    assert "models:/main.gallery_ui.tiny/1 @champion" in box.table.value


@pytest.mark.timeout(120)
def test_ft_status_shows_the_gallery(scored_run: Any, ipshell: TestingShell) -> None:  # noqa: F811
    ipshell.user_ns["scored"] = scored_run
    out = ipshell.run_cell("%ft status scored")
    ipshell.magics.last_view.join(timeout=60)
    assert f"<b>checkpoints of {scored_run.name}</b>" in out.html
    assert all(f"<td>{step}" in out.html for step in (1, 2, 3))
    assert "★ best" in out.html
    assert f"checkpoints of {scored_run.name}:" in out.text and "step 3: eval loss" in out.text


@pytest.mark.timeout(120)
def test_summary_card_holds_the_gallery(scored_run: Any) -> None:
    view = LiveView(scored_run, start=False)
    assert view.update() is True
    card, _curves = view.final_outputs()
    html_card, text = card["text/html"], card["text/plain"]
    assert "<b>checkpoints</b>" in html_card and "exact_match" in html_card
    for step in (1, 2, 3):
        assert f"<td {render.CELL}>{step}" in html_card
        assert f"step {step}: eval loss" in text
    assert html_card.count("★ best") == 1 and text.count("(best)") == 1
    view.close_all()


def test_long_generations_fold_in_the_card_and_short_ones_stay_open() -> None:
    def card(prediction: str) -> str:
        generation = {"prompt": "p", "prediction": prediction, "reference": "r"}
        row = {"step": 4, "eval_loss": 1.5, "metric": 0.25, "best": True, "models": []}
        gallery = {"metric_name": "f1", "rows": [{**row, "generations": [generation] * 3}]}
        return render.summary_card_html({"name": "n", "status": "COMPLETED", "gallery": gallery})

    short, long = card("[]"), card("x" * 200)
    assert "<details>" not in short and "<code>[]</code>" in short
    assert "<details><summary>3 generations</summary>" in long and "x" * 200 in long
    for html_card in (short, long):
        assert "4 ★ best" in html_card and "1.5000" in html_card and "0.2500" in html_card
        assert ">f1</th>" in html_card

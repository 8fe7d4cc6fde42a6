"""The panel, driven from code (``button.click()``, setting widget values): the generated form,
validation next to the fields, the token preview, a tiny run from the Train tab, Copy as cell."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import pytest

from fixtures_ui import TestingShell, fast_fields, ipshell, ui_env
from ftmagic.config import RunConfig
from ftmagic.errors import ConfigError
from ftmagic.ui.cell import parse_cell
from ftmagic.ui.live import status_name
from ftmagic.ui.panel import Panel
from polling import wait_until

__all__ = ["ipshell", "ui_env"]


@pytest.fixture
def panel() -> Any:
    made = Panel(debounce_s=0.5)
    yield made
    made.close()


def widget_of(panel: Panel, name: str) -> Any:
    return panel.form.rows[name].widget


def fill(panel: Panel, **values: Any) -> None:
    for name, value in values.items():
        panel.form.rows[name].set(value)


def test_form_widgets_follow_field_types_and_help(panel: Panel) -> None:
    kinds = {
        "task_type": widgets.Dropdown,
        "backend": widgets.Dropdown,
        "lr_schedule": widgets.Dropdown,
        "lora_rank": widgets.IntText,
        "lora_dropout": widgets.FloatText,
        "packing": widgets.Checkbox,
        "eval_prompts": widgets.Textarea,
        "learning_rate": widgets.Text,
        "training_duration": widgets.Text,
    }
    for name, kind in kinds.items():
        assert type(widget_of(panel, name)) is kind, name
    assert widget_of(panel, "task_type").options == (
        "CHAT_COMPLETION",
        "INSTRUCTION_FINETUNE",
        "CONTINUED_PRETRAIN",
    )
    for name, text in RunConfig.help().items():
        assert widget_of(panel, name).tooltip == text
    labels = dict((value, label) for label, value in widget_of(panel, "model").options)
    assert labels["ftmagic/tiny-random-chat"].startswith("ftmagic/tiny-random-chat · ")
    assert "128k ctx" in labels["meta-llama/Llama-3.2-1B-Instruct"]
    retired = [label for label in labels.values() if "retired, use" in label]
    assert any(label.startswith("meta-llama/Meta-Llama-3-8B") for label in retired), retired


@pytest.mark.timeout(30)
def test_form_rows_follow_the_json_schema() -> None:
    from ftmagic.ui.fields import FieldRow

    for name, prop in RunConfig.json_schema()["properties"].items():
        if name == "model":
            continue
        row = FieldRow(name, prop)
        assert row.widget.tooltip == prop["description"], name
        if "enum" in prop:
            assert type(row.widget) is widgets.Dropdown, name
            assert list(row.widget.options) == prop["enum"], name
    assert FieldRow("columns", RunConfig.json_schema()["properties"]["columns"]).kind == (
        "optional-text"
    )


def test_ftmagic_panel_starts_from_a_config(ui_env: dict[str, Any]) -> None:
    import ftmagic

    fields = fast_fields(ui_env, method="lora", eval_prompts=["a", "b"])
    made = ftmagic.panel(**fields)
    try:
        assert made.config == RunConfig.from_dict(fields)
        assert widget_of(made, "eval_prompts").value == "a\nb"
        assert made.form.lora_box.layout.display == ""
    finally:
        made.close()


def test_lora_options_appear_only_for_lora(panel: Panel) -> None:
    assert panel.form.lora_box.layout.display == "none"
    widget_of(panel, "method").value = "lora"
    assert panel.form.lora_box.layout.display == ""
    assert panel.config.method == "lora"


def test_filled_form_gives_the_config(panel: Panel, ui_env: dict[str, Any]) -> None:
    fields = fast_fields(ui_env, eval_prompts=["one", "two"], register_to="main.ner")
    fill(panel, **fields)
    widget_of(panel, "learning_rate").value = "1e-3"
    assert panel.config == RunConfig.from_dict({**fields, "learning_rate": 1e-3})


def test_errors_show_next_to_their_field(panel: Panel, ui_env: dict[str, Any]) -> None:
    fill(panel, **fast_fields(ui_env))
    widget_of(panel, "learning_rate").value = "fast"
    widget_of(panel, "context_length").value = "2k"
    assert panel.validate_now() is None
    assert "'learning_rate': must be a number" in panel.form.rows["learning_rate"].error.value
    assert "whole number" in panel.form.rows["context_length"].error.value
    with pytest.raises(ConfigError):
        _ = panel.config
    fill(panel, learning_rate=None, context_length=None, register_to="no dots here")
    panel.validate_now()
    assert panel.form.rows["learning_rate"].error.value == ""
    assert "is not a model name" in panel.form.rows["register_to"].error.value


def test_validation_runs_by_itself_after_a_change(panel: Panel, ui_env: dict[str, Any]) -> None:
    widget_of(panel, "training_duration").value = "3 weeks"
    error = panel.form.rows["training_duration"].error
    assert "is not a duration" in wait_until(lambda: error.value, 30, "the error message")


def test_data_errors_show_next_to_the_data_path(
    panel: Panel, ui_env: dict[str, Any], tmp_path: Any
) -> None:
    bad = tmp_path / "bad.jsonl"
    good = ui_env["train"].read_text().splitlines()[:3]
    bad.write_text("\n".join([*good, '{"messages": []}', "not json"]) + "\n")
    fill(panel, **fast_fields(ui_env, train_data_path=str(bad)))
    report = panel.validate_now()
    assert not report.ok and report.num_errors == 2
    message = panel.form.rows["train_data_path"].error.value
    assert {e.line for e in report.errors} == {4, 5}
    first = report.errors[0]
    assert f"{bad}:{first.line}" in message and "and 1 more" in message
    assert "Validation of" in panel.data_html.value


def test_preview_steps_through_examples(panel: Panel, ui_env: dict[str, Any]) -> None:
    fill(panel, **fast_fields(ui_env))
    assert panel.validate_now().ok
    preview = panel.preview
    assert preview.label.value == "example 1 of 20"
    first = preview.tokens.value
    assert "tokens trained" in preview.counts.value and "assistant" in preview.counts.value
    preview.next_button.click()
    assert preview.label.value == "example 2 of 20" and preview.tokens.value != first
    preview.prev_button.click()
    preview.prev_button.click()
    assert preview.label.value == "example 20 of 20"


def test_copy_as_cell_round_trips_through_the_magic(
    panel: Panel, ipshell: TestingShell, ui_env: dict[str, Any]
) -> None:
    fill(panel, **fast_fields(ui_env, method="lora", lora_rank=4, eval_prompts=["Hi {name}"]))
    text = panel.to_cell()
    assert text.startswith("%%finetune\n") and "lora_rank: 4" in text
    assert "seed:" not in text  # only non-default fields
    assert parse_cell(text.split("\n", 1)[1], {}) == panel.config
    panel.copy_button.click()
    assert ipshell.shell.rl_next_input == text  # no extension here: queued, and said so
    assert "The cell is queued" in panel.message.value and "lora_rank: 4" in panel.message.value
    out = ipshell.run_cell(text.replace("%%finetune", "%%finetune --dry-run -o copied", 1))
    assert out.error_in_exec is None and ipshell.user_ns["copied"].ok


def test_train_tab_runs_a_tiny_model_to_completion(panel: Panel, ui_env: dict[str, Any]) -> None:
    fields = fast_fields(ui_env, eval_prompts=["Aspirin and ibuprofen."], register_to="main.ui")
    fill(panel, **fields)
    panel.start_button.click()
    assert panel.run is not None and panel.tabs.selected_index == 2
    assert panel.train_box.children == (panel.live,)
    panel.run.wait()
    panel.live.join(timeout=60)
    assert status_name(panel.run.status) == "COMPLETED"
    assert panel.live.progress_bar.value == 4 and panel.cancel_button.disabled
    results = panel.results.generations.value
    assert "Aspirin and ibuprofen." in results and "step 2" in results and "step 4" in results
    served = panel.results.model.value
    assert panel.run.registered_model.startswith("models:/main.ui.")
    assert f"mlflow models serve -m {panel.run.registered_model} --host 127.0.0.1" in served


def test_a_model_error_shows_next_to_the_model_field(panel: Panel, ui_env: dict[str, Any]) -> None:
    fill(panel, **fast_fields(ui_env, model="nobody/not-a-cached-model"))
    report = panel.validate_now()
    assert report is not None and not report.ok
    assert "nobody/not-a-cached-model" in panel.form.rows["model"].error.value
    assert panel.form.rows["train_data_path"].error.value == ""


def test_implausible_values_are_warned_about_not_refused(
    panel: Panel, ui_env: dict[str, Any]
) -> None:
    fill(panel, **fast_fields(ui_env, training_duration="50ep"))
    widget_of(panel, "learning_rate").value = "50"
    panel.validate_now()
    lr_note = panel.form.rows["learning_rate"].error.value
    assert "⚠" in lr_note and "above 1" in lr_note
    assert "50 epochs is over 20" in panel.form.rows["training_duration"].error.value
    assert panel.config.learning_rate == 50  # allowed, only warned about
    widget_of(panel, "learning_rate").value = "1e-3"
    fill(panel, training_duration="2ep")
    panel.validate_now()
    assert panel.form.rows["learning_rate"].error.value == ""
    assert panel.form.rows["training_duration"].error.value == ""


def test_model_picker_lists_tiny_models_first_and_searches(panel: Panel) -> None:
    picker = widget_of(panel, "model")
    names = [name for _, name in picker.options]
    assert names[:7] == [
        "",
        "ftmagic/tiny-random-base",  # smallest first
        "ftmagic/tiny-random-chat",
        "ftmagic/tiny-random-chatml",
        "ftmagic/tiny-base",
        "ftmagic/tiny-chat",
        "ftmagic/tiny-chatml",
    ]
    assert names.index("HuggingFaceTB/SmolLM2-135M-Instruct") < names.index(
        "meta-llama/Llama-3.1-405B"
    )
    retired = [n for label, n in picker.options if "retired" in label]
    assert retired and names[-len(retired) :] == retired  # retired models last
    picker.value = "ftmagic/tiny-random-chat"
    panel.form.model_search.value = "smollm 135m"
    shown = [n for _, n in picker.options]
    assert shown == ["ftmagic/tiny-random-chat", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert picker.value == "ftmagic/tiny-random-chat"  # the choice survives the search
    panel.form.model_search.value = ""
    assert len(picker.options) == len(names)


def test_copy_as_cell_goes_through_the_extension_when_it_answers(panel: Panel) -> None:
    """The kernel side of the JupyterLab extension's cells comm (the extension's side runs in the
    browser test): after its hello, the cell text goes over the comm, not set_next_input."""

    class Channel:
        def __init__(self) -> None:
            self.sent: list[dict[str, Any]] = []

        def send(self, data: dict[str, Any]) -> None:
            self.sent.append(data)

        def close(self) -> None:
            pass

    channel = Channel()
    panel._cells_comm = channel
    panel.form.rows["train_data_path"].set("train.jsonl")
    panel.extension_message({"content": {"data": {"hello": True}}})
    text = panel.copy_as_cell()
    assert channel.sent == [{"action": "insert_cell", "text": text}]
    panel.extension_message({"content": {"data": {"inserted": True}}})
    assert "the %%finetune cell is below the panel" in panel.message.value

"""``%%finetune`` and ``%ft`` in a real IPython shell, against a real SQLite MLflow store and the
built-in tiny model."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from IPython.core.error import UsageError

from fixtures_ui import TestingShell, fast_fields, ipshell, ui_env
from ftmagic.config import RunConfig
from ftmagic.errors import ConfigError
from ftmagic.ui.cell import escape, parse_cell, substitute, to_cell

__all__ = ["ipshell", "ui_env"]


def cell_body(fields: dict[str, Any]) -> str:
    return yaml.safe_dump(fields, sort_keys=False)


@pytest.fixture(scope="module")
def finished_run(ui_env: dict[str, Any]) -> Any:
    """One tiny run started by the magic with --wait, shared by the %ft tests."""
    shell = TestingShell()
    shell.user_ns["ner_train"] = str(ui_env["train"])
    fields = fast_fields(
        ui_env, eval_prompts=["Aspirin and ibuprofen."], eval_data_path=str(ui_env["eval"])
    )
    fields["train_data_path"] = "{ner_train}"
    shell.run_cell("%config FinetuneMagics.experiment_path = 'from-config'")
    del fields["experiment_path"]
    out = shell.run_cell("%%finetune -o shared_run --wait\n" + cell_body(fields))
    shell.close()
    assert out.result is None
    assert "COMPLETED" in out.stdout
    return shell.user_ns["shared_run"]


# --- the cell body ----------------------------------------------------------------------------


def test_substitute_fills_names_and_leaves_yaml_braces() -> None:
    body = "train_data_path: data/{split}.jsonl\neval_prompts: {prompts}\nx: {a: 1}\ny: {{split}}"
    text = substitute(body, {"split": "train", "prompts": ["hi", "yo"]})
    assert (
        text
        == 'train_data_path: data/train.jsonl\neval_prompts: ["hi", "yo"]\nx: {a: 1}\ny: {split}'
    )
    assert yaml.safe_load(text)["x"] == {"a": 1}


def test_substitute_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        substitute("model: {my_model}", {})
    assert "my_model" in str(info.value)
    assert "{{my_model}}" in str(info.value)


def test_parse_cell_layers_defaults_body_and_flags() -> None:
    body = "model: ftmagic/tiny-random-chat\nbackend: local\nlearning_rate: {lr}\n"
    config = parse_cell(
        body, {"lr": 3e-4}, defaults={"backend": "ray", "seed": 5}, overrides={"seed": 9}
    )
    assert (config.backend, config.seed, config.learning_rate) == ("local", 9, 3e-4)
    config = parse_cell("model: m\n", {}, defaults={"backend": "ray"})
    assert config.backend == "ray"


def test_to_cell_round_trips_literal_braces() -> None:
    config = RunConfig(
        model="ftmagic/tiny-random-chat", eval_prompts=["Say {name} twice", "{a: 1}"]
    )
    text = to_cell(config)
    assert text.splitlines()[0] == "%%finetune"
    assert "{{name}}" in text and escape("{x}") == "{{x}}"
    assert parse_cell(text.split("\n", 1)[1], {}) == config


# --- %%finetune -------------------------------------------------------------------------------


def test_help_lists_every_config_field(ipshell: TestingShell) -> None:
    doc = ipshell.shell.find_cell_magic("finetune").__doc__
    assert "%%finetune [--dry-run] [--backend BACKEND] [-o OUT] [--wait]" in doc
    for name, text in RunConfig.help().items():
        assert f"  {name}: {text}" in doc
    out = ipshell.run_cell("%%finetune?\n")
    assert "training_duration: How long to train" in out.stdout


def test_bad_field_shows_short_message_not_traceback(ipshell: TestingShell) -> None:
    out = ipshell.run_cell(
        "%%finetune --dry-run\nmodel: ftmagic/tiny-random-chat\nlearning_rat: 0.1\n"
    )
    assert out.error_in_exec is None and out.result is None
    assert "Config error: config field 'learning_rat'" in out.text
    assert "did you mean 'learning_rate'?" in out.text
    assert "Traceback" not in out.text + out.stdout
    assert "<b>Config error</b>" in out.html


def test_bad_yaml_and_unknown_variable_name_the_place(ipshell: TestingShell) -> None:
    out = ipshell.run_cell("%%finetune\nmodel: [unclosed\n")
    assert out.error_in_exec is None
    assert "not valid YAML at line" in out.text
    out = ipshell.run_cell("%%finetune\nmodel: {no_such_variable}\n")
    assert "{no_such_variable} names no variable" in out.text


def test_dry_run_reports_and_previews_examples(
    ipshell: TestingShell, ui_env: dict[str, Any]
) -> None:
    ipshell.run_cell("%config FinetuneMagics.preview_examples = 1")
    body = cell_body(fast_fields(ui_env))
    out = ipshell.run_cell("%%finetune --dry-run -o report\n" + body)
    report = ipshell.user_ns["report"]
    assert report.ok and report.num_examples == 120
    assert f"Examples: {report.num_examples:,}" in out.text
    assert out.html.count("Validation of") == 1
    previews = [chunk for chunk in out.text.split("\n") if "trained" in chunk.lower()]
    assert previews, out.text


def test_dry_run_shows_data_errors_with_file_and_line(
    ipshell: TestingShell, ui_env: dict[str, Any], tmp_path: Any
) -> None:
    bad = tmp_path / "bad.jsonl"
    good = ui_env["train"].read_text().splitlines()[0]
    bad.write_text(
        good + '\n{"messages": [{"role": "assistant", "content": "hi"},'
        ' {"role": "user", "content": "x"}]}\n'
    )
    out = ipshell.run_cell(
        "%%finetune --dry-run\n" + cell_body(fast_fields(ui_env, train_data_path=str(bad)))
    )
    assert out.error_in_exec is None
    assert f"{bad}:2" in out.text


def test_run_with_out_wait_and_config_traitlet(finished_run: Any, ui_env: dict[str, Any]) -> None:
    assert (
        str(
            finished_run.status.value
            if hasattr(finished_run.status, "value")
            else finished_run.status
        )
        == "COMPLETED"
    )
    assert finished_run.config.train_data_path == str(ui_env["train"])  # {ner_train} filled in
    assert finished_run.config.experiment_path == "from-config"  # %config default applied
    assert finished_run.config.backend == "inkernel"


def test_backend_flag_overrides_config_default(ipshell: TestingShell) -> None:
    ipshell.run_cell("%config FinetuneMagics.backend = 'ray'")
    assert ipshell.magics.cell_config("model: m\n").backend == "ray"
    assert ipshell.magics.cell_config("model: m\n", backend="local").backend == "local"
    assert ipshell.magics.cell_config("model: m\nbackend: torchrun\n").backend == "torchrun"


# --- %ft --------------------------------------------------------------------------------------


def test_ft_runs_lists_the_run(ipshell: TestingShell, finished_run: Any) -> None:
    out = ipshell.run_cell("%ft runs --experiment from-config")
    table = out.result
    assert table.run_ids == [finished_run.run_id]
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["status"] == "COMPLETED" and row["model"] == "ftmagic/tiny-random-chat"
    assert row["steps"] == "4/4" and float(row["loss"]) > 0 and row["duration"] != "—"
    assert row["started"].startswith("20") and row["run_id"] == finished_run.run_id[:8]
    assert finished_run.name in repr(table) and "duration" in repr(table).splitlines()[0]
    assert f"title='{finished_run.run_id}'" in table._repr_html_()
    assert "white-space:nowrap" in table._repr_html_()


def test_ft_status_reattaches_a_live_view(ipshell: TestingShell, finished_run: Any) -> None:
    out = ipshell.run_cell(f"%ft status {finished_run.run_id}")
    view = ipshell.magics.last_view
    assert out.result is None and view.run.run_id == finished_run.run_id
    view.join(timeout=30)
    assert view.done and view.progress_bar.value == view.progress_bar.max == 4
    assert "COMPLETED" in view.progress_text.value and "ETA —" in view.progress_text.value
    assert bytes(view.plot.value).startswith(b"\x89PNG")
    assert "generations at step 4" in view.generations_html.value
    assert "Aspirin and ibuprofen." in view.generations_html.value
    assert "COMPLETED" in view.events_html.value
    assert [step for step, _ in finished_run.metrics(["eval/loss"])["eval/loss"]] == [2, 4]
    ipshell.user_ns["that_run"] = finished_run
    ipshell.run_cell("%ft status that_run")
    assert ipshell.magics.last_view.run.run_id == finished_run.run_id


def test_ft_chat_answers_from_the_fine_tuned_model(
    ipshell: TestingShell, finished_run: Any
) -> None:
    box = ipshell.run_cell(f"%ft chat {finished_run.run_id} --checkpoint 2").result
    assert box.checkpoint == 2 and box.picker.value == 2
    assert [value for _, value in box.picker.options] == [None, 4, 2]  # final, then each step
    states: list[tuple[bool, bool]] = []
    box.history.observe(
        lambda _change: states.append((box.send_button.disabled, "answering" in box.status.value)),
        names="value",
    )
    box.text.value = "Aspirin helps."
    box.text._handle_string_msg(None, {"event": "submit"}, [])  # Enter, as the browser sends it
    assert [m["role"] for m in box.messages] == ["user", "assistant"]
    assert isinstance(box.messages[1]["content"], str)
    assert "Aspirin helps." in box.history.value and box.text.value == ""
    assert states and all(states[i] == (True, True) for i in range(len(states)))  # busy meanwhile
    assert not box.send_button.disabled and box.status.value == ""
    model_input = box._model_input("Aspirin helps.")
    assert "".join(box.stream(model_input)) == finished_run.generate(
        model_input, checkpoint=2
    )  # streamed pieces make the same greedy answer
    box.picker.value = None
    assert box.checkpoint is None and box.send("Ibuprofen?") is not None


def test_cell_returns_at_once_and_ft_cancel_stops_the_run(
    ipshell: TestingShell, ui_env: dict[str, Any]
) -> None:
    body = cell_body(fast_fields(ui_env, training_duration="400ba", checkpoint_interval="400ba"))
    out = ipshell.run_cell("%%finetune -o background\n" + body)
    run = ipshell.user_ns["background"]
    assert out.result is None and "LiveView" in out.text
    assert not run.is_done  # the cell returned while the run trains in the background
    ipshell.run_cell("%ft status")
    assert ipshell.magics.last_view.run.run_id == run.run_id  # the last run
    out = ipshell.run_cell("%ft cancel background")
    assert f"asked run {run.name} ({run.run_id}) to stop" in out.stdout
    assert run.wait(timeout=120).status == "STOPPED"


def test_ft_models_panel_and_errors(ipshell: TestingShell) -> None:
    models = ipshell.run_cell("%ft models").result
    assert "ftmagic/tiny-random-chat" in [m.name for m in models]
    assert type(ipshell.run_cell("%ft panel").result).__name__ == "Panel"
    out = ipshell.run_cell("%ft cancel no-such-run")
    assert out.error_in_exec is None and "no-such-run" in out.text
    with pytest.raises(UsageError, match="unknown %ft command"):
        ipshell.run_cell("%ft bogus")


def test_notebook_trains_in_a_real_kernel(ui_env: dict[str, Any]) -> None:
    """The magic in a real kernel run by nbclient: the cell shows the live view (a widget view,
    replaced by plain outputs at the end: see test_durable_outputs) and, with --wait, the final
    status; the next cell reads the run stored with -o."""
    import nbformat
    from nbclient import NotebookClient

    body = cell_body(fast_fields(ui_env, training_duration="2ba", checkpoint_interval="2ba"))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext ftmagic"),
        nbformat.v4.new_code_cell("%%finetune -o nb_run --wait\n" + body),
        nbformat.v4.new_code_cell("print(nb_run.status, nb_run.progress['step'])"),
    ]
    NotebookClient(
        notebook,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(ui_env["root"])}},
    ).execute()
    train_outputs = notebook.cells[1].outputs
    widget = "application/vnd.jupyter.widget-view+json"
    assert [o for o in train_outputs if widget in o.get("data", {})] == []
    printed = "".join(o.get("text", "") for o in train_outputs if o.output_type == "stream")
    assert "COMPLETED" in printed
    assert notebook.cells[2].outputs[0].text.strip() == "COMPLETED 2"
    # the polling thread's trait updates reached the frontend as widget messages
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [
        m["state"]
        for m in state.values()
        if m["model_name"] == "IntProgressModel" and m["state"].get("description") == "progress"
    ]
    assert [(b["value"], b["max"]) for b in bars] == [(2, 2)]


def completions_at_end(ipshell: TestingShell, text: str) -> list[str]:
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        found = ipshell.shell.Completer.completions(text, len(text))
        return [c.text for c in found]


@pytest.mark.timeout(30)
def test_completion_values_come_from_the_json_schema() -> None:
    from ftmagic.config import TaskType
    from ftmagic.ui.completion import field_values

    assert field_values("task_type") == list(TaskType)
    assert field_values("chat_turns") == ["all", "last", "split"]
    assert field_values("data_parallel") == ["auto", "ddp", "fsdp2"]
    assert field_values("packing") == ["true", "false"]
    assert field_values("learning_rate") == field_values("no_such_field") == []


def test_config_fields_and_values_complete_in_finetune_cells(ipshell: TestingShell) -> None:
    assert completions_at_end(ipshell, "%%finetune\nmodel: ftmagic/tiny-random-chat\nlear") == [
        "learning_rate"
    ]
    assert "lora_rank" in completions_at_end(ipshell, "%%finetune --dry-run\nlora_r")
    backends = completions_at_end(ipshell, "%%finetune\nbackend: lo")
    assert backends == ["local"]
    models = completions_at_end(ipshell, "%%finetune\nmodel: ftmagic/tiny-c")
    assert models[:2] == ["ftmagic/tiny-chat", "ftmagic/tiny-chatml"]
    assert completions_at_end(ipshell, "%%finetune\npacking: t") == ["true"]
    assert "learning_rate" not in completions_at_end(ipshell, "lear")  # not outside the magic

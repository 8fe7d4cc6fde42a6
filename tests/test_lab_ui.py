"""The JupyterLab extension in a real browser: Debian's Chromium, driven by Playwright, against a
real ``jupyter lab`` whose kernels train the built-in tiny model into a temp SQLite MLflow store.

One pass through what a user does: open a fine-tuning notebook from the launcher, see the
``%%finetune`` body highlighted as YAML (also while typing a new cell), dry-run it, train a short
run and watch it in the runs sidebar go RUNNING then COMPLETED, start a longer run and cancel it
from the sidebar (it ends STOPPED), insert a reattach cell and open the panel. Screenshots go to
``build/lab-ui/`` (``docs/img/`` holds copies of ``sidebar.png`` and ``highlight.png``).

Then, in a notebook of their own on the same server and browser: field names complete as a
``%%finetune`` cell is typed, the panel shows a model error next to the model field and "Copy as
cell" inserts the cell right below the panel, a short run is listed in the sidebar with its whole
name and latest loss, and the chat box answers Enter with a streamed answer (``docs/img/`` holds
copies of ``completion.png``, ``sidebar-stats.png`` and ``chat.png``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lab_ui_helpers
from lab_ui_helpers import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    JS_WATCH_STATUSES,
    Clock,
    Lab,
    cell_sources,
    jupyter_lab,
    require_chromium,
    run_command,
    sidebar_runs,
    statuses_seen,
    wait_kernel_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MLFLOW_UI = "http://127.0.0.1:5999"
FAST = (
    "tokens_per_batch: 512\nmicro_batch_tokens: 512\nvalidate_inputs: false\n"
    "max_new_tokens: 4\nwarmup_steps: 1\nlearning_rate: 0.002\nexperiment_path: lab-ui\n"
)
SHORT_RUN = (
    '%%finetune\nmodel: ftmagic/tiny-random-chat\ntrain_data_path: "{train}"\n'
    f"training_duration: 200ba\ncheckpoint_interval: 200ba\n{FAST}"
)
LONG_RUN = (
    '%%finetune\nmodel: ftmagic/tiny-random-chat\ntrain_data_path: "{train}"\n'
    f"training_duration: 3000ba\ncheckpoint_interval: 3000ba\n{FAST}"
)
KEYS = ["model", "train_data_path", "training_duration", "checkpoint_interval"]
SECOND = 1000  # Playwright waits are in milliseconds


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from ftmagic.tracking import store

    require_chromium()
    root = tmp_path_factory.mktemp("lab-ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store.client(uri).search_experiments()  # create the schema once, before two processes race
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "FTMAGIC_CHECKPOINT_DIR": str(root / "checkpoints"),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",  # a model that is not on disk fails at once, not after retries
    }
    env.pop("FTMAGIC_MLFLOW_UI", None)
    with jupyter_lab(root, env, f"--FtmagicExtension.mlflow_ui_url={MLFLOW_UI}") as server:
        yield server


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(require_chromium()), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1440, "height": 900}, device_scale_factor=2
            )
            tab = context.new_page()
            tab.set_default_timeout(60 * SECOND)
            tab.goto(f"{lab.url}/lab?token={lab.token}")
            tab.wait_for_selector(".jp-LauncherCard", timeout=120 * SECOND)
            yield tab
        finally:
            browser.close()


def jupyter_says(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "jupyter", *args], capture_output=True, text=True)
    return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # drop colours


def test_extensions_are_installed_and_enabled() -> None:
    """`pip install -e .` ships the built labextension and the server extension's config."""
    labextensions = jupyter_says("labextension", "list")
    assert re.search(r"ftmagic v0\.1\.0 enabled\s+OK", labextensions), labextensions
    server = jupyter_says("server", "extension", "list")
    assert "ftmagic enabled" in server, server
    assert "ftmagic 0.1.0 OK" in server, server


def test_missing_chromium_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(lab_ui_helpers, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="make browser"):
        lab_ui_helpers.require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make browser"):
        lab_ui_helpers.require_chromium()


def shoot(target: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    target.screenshot(path=str(path))
    return path


def last_cell(page: Any) -> Any:
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").last


def type_new_cell(page: Any, text: str) -> Any:
    """Add a code cell at the end, type ``text`` into it key by key; returns the cell."""
    last_cell(page).click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.type(text)
    return last_cell(page)


def run_cell(page: Any, cell: Any, timeout: float = 180) -> None:
    cell.click()
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(300)
    wait_kernel_idle(page, timeout)


def yaml_keys(cell: Any) -> list[str]:
    return [t.strip() for t in cell.locator(".cm-content .tok-propertyName").all_text_contents()]


def language(cell: Any) -> str | None:
    value = cell.locator(".cm-content").get_attribute("data-language")
    return str(value) if value is not None else None


def new_run_id(page: Any, known: set[str], timeout: float = 120) -> str:
    page.wait_for_function(
        "n => document.querySelectorAll('li.jp-ftmagic-run').length > n",
        arg=len(known),
        timeout=timeout * SECOND,
    )
    (run_id,) = set(sidebar_runs(page)) - known
    return run_id


def wait_status(page: Any, run_id: str, status: str, timeout: float) -> None:
    page.wait_for_selector(
        f'li.jp-ftmagic-run[data-run-id="{run_id}"][data-status="{status}"]',
        timeout=timeout * SECOND,
    )


def test_lab_extension_end_to_end(lab: Lab, page: Any) -> None:
    from ftmagic.tracking import store
    from ftmagic.tracking.run import get_run

    uri = f"sqlite:///{lab.root / 'mlflow.db'}"
    clock = Clock()

    # 1. The launcher's "Fine-tuning notebook" makes a notebook that loads ftmagic, finds the
    #    bundled NER data and dry-runs a %%finetune cell, highlighted as YAML.
    page.locator(".jp-LauncherCard", has_text="Fine-tuning notebook").click()
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell >> nth=2")
    sources = cell_sources(page)
    assert sources[0] == "%load_ext ftmagic"
    assert 'examples.path("ner", "train")' in sources[1]
    assert sources[2].startswith("%%finetune --dry-run\n")
    cells = page.locator(".jp-NotebookPanel .jp-Cell")
    template = cells.nth(2)
    assert language(template) == "ftmagic-finetune"
    assert {"model", "train_data_path", "training_duration"} <= set(yaml_keys(template))
    assert template.locator(".cm-content .tok-keyword", has_text="%%finetune").count() == 1
    assert language(cells.nth(1)) != "ftmagic-finetune"
    assert cells.nth(1).locator(".tok-propertyName").count() == 0
    clock.lap("new notebook")

    # 2. Typing a %%finetune cell switches YAML highlighting on as the magic line is typed.
    cell = type_new_cell(page, SHORT_RUN)
    assert language(cell) == "ftmagic-finetune"
    assert yaml_keys(cell)[:4] == KEYS
    assert cell.locator(".tok-number", has_text="512").count() == 2
    page.keyboard.press("Escape")
    shoot(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"), "highlight.png")
    clock.lap("typing")

    wait_kernel_idle(page)
    for index in range(3):
        run_cell(page, cells.nth(index))
    report = template.locator(".jp-OutputArea-output .ftmagic-validation")
    report.wait_for(timeout=120 * SECOND)
    assert ": OK" in report.inner_text()
    clock.lap("kernel and dry run")

    # 3. Train it; the sidebar shows it RUNNING, then COMPLETED with its curve and progress. The
    # run is long enough (8 s when idle) for the sidebar's 2 s polls to see it live.
    page.locator('.jp-SideBar .lm-TabBar-tab[data-id="ftmagic-runs"]').click()
    page.wait_for_selector("#ftmagic-runs .jp-ftmagic-empty")
    page.evaluate(JS_WATCH_STATUSES)
    run_cell(page, cell)
    first = new_run_id(page, set())
    wait_status(page, first, "COMPLETED", timeout=600)
    seen = statuses_seen(page)[first]
    assert "RUNNING" in seen, seen
    assert seen.index("RUNNING") < seen.index("COMPLETED"), seen
    shown = sidebar_runs(page)[first]
    assert shown["model"] == "ftmagic/tiny-random-chat"
    assert shown["progress"] == "200/200"
    assert shown["spark"].count("L") == 79  # 200 loss points, sent downsampled to 80
    assert shown["mlflow"] == f"{MLFLOW_UI}/#/runs/{first}"
    assert not shown["cancel"]
    assert get_run(first, uri=uri).status == "COMPLETED"
    clock.lap("short run")

    # 4. A longer run is cancelled from the sidebar and ends STOPPED.
    run_cell(page, type_new_cell(page, LONG_RUN))
    second = new_run_id(page, {first})
    wait_status(page, second, "RUNNING", timeout=180)
    page.locator(f'li[data-run-id="{second}"] button.jp-ftmagic-cancel').click()
    wait_status(page, second, "STOPPED", timeout=240)
    assert store.cancel_requested(second, uri=uri)
    stopped = get_run(second, uri=uri)
    assert stopped.status == "STOPPED"
    assert stopped.progress["step"] < 3000
    assert list(sidebar_runs(page)) == [second, first]  # newest first
    shoot(page.locator("#ftmagic-runs .jp-ftmagic-runs-body"), "sidebar.png")
    shoot(page, "lab.png")
    clock.lap("cancelled run")

    # 5. "Insert reattach cell" adds `%ft status <id>`; "Open the fine-tuning panel" runs one.
    page.locator(f'li[data-run-id="{first}"] button.jp-ftmagic-reattach').click()
    assert f"%ft status {first}" in cell_sources(page)
    run_command(page, "ftmagic:open-panel")
    page.wait_for_timeout(300)
    wait_kernel_idle(page)
    assert cell_sources(page)[-1] == "%ft panel"
    last_cell(page).locator(".jp-OutputArea-output .jupyter-widgets").first.wait_for()
    clock.lap("reattach and panel")
    print(clock)


# --- field completion, the panel, the sidebar's stats and chat (one notebook, one kernel) ------

# The bundled chat data: answers of several words, which the chat streams word by word.
TINY_RUN = (
    '%%finetune\nmodel: ftmagic/tiny-random-chat\ntrain_data_path: "{chat_train}"\n'
    f"training_duration: 60ba\ncheckpoint_interval: 30ba\n"
    'eval_prompts: ["Add 3 butter, please."]\n'
    f"{FAST}"
)
PANEL_CELL = (
    "from ftmagic.config import RunConfig\nfrom ftmagic.ui.panel import Panel\n"
    'panel = Panel(RunConfig(model="meta-llama/Llama-3.2-1B", train_data_path=train))\npanel'
)
# Every text the chat's history shows for the model's answer, in order (one entry per change).
JS_WATCH_ANSWER = """output => {
  window.ftmagicAnswers = [];
  window.ftmagicSendDisabled = false;
  const record = () => {
    const send = [...output.querySelectorAll('button')].find(b => b.textContent.trim() === 'Send');
    if (send && send.disabled) { window.ftmagicSendDisabled = true; }
    const history = [...output.querySelectorAll('.widget-html-content')]
      .find(e => e.textContent.includes('you:'));
    if (!history) { return; }
    const text = history.innerText;
    const at = text.lastIndexOf('model:');
    if (at < 0) { return; }
    const answer = text.slice(at + 'model:'.length).trim();
    const seen = window.ftmagicAnswers;
    if (seen[seen.length - 1] !== answer) { seen.push(answer); }
  };
  new MutationObserver(record).observe(output, {subtree: true, childList: true,
    characterData: true});
}"""


def append_cell(page: Any, text: str) -> Any:
    """Add a code cell at the end through the notebook's commands (a click on the last cell
    could land in its widgets), type ``text`` into it key by key; returns the cell."""
    page.evaluate(
        """() => { const nb = window.jupyterapp.shell.currentWidget.content;
        nb.mode = 'command'; nb.activeCellIndex = nb.widgets.length - 1; }"""
    )
    run_command(page, "notebook:insert-cell-below")
    run_command(page, "notebook:enter-edit-mode")
    page.keyboard.type(text)
    return last_cell(page)


@pytest.fixture(scope="module")
def notebook(page: Any) -> Any:
    """A new fine-tuning notebook with ftmagic loaded and ``train`` set (its first two cells)."""
    run_command(page, "ftmagic:new-notebook")
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell >> nth=2")
    wait_kernel_idle(page)
    cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
    for index in range(2):
        run_cell(page, cells.nth(index))
    return cells


@pytest.mark.timeout(300)
def test_field_names_complete_in_a_finetune_cell(lab: Lab, page: Any, notebook: Any) -> None:
    append_cell(page, "%%finetune\nmodel: ftmagic/tiny-random-chat\nlear")
    popup = page.locator(".cm-tooltip-autocomplete")
    popup.wait_for(timeout=30 * SECOND)
    assert popup.locator("li").all_text_contents() == ["learning_rate"]
    shoot(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"), "completion.png")
    page.keyboard.press("Enter")
    page.keyboard.type("0.001")
    assert (
        cell_sources(page)[-1]
        == "%%finetune\nmodel: ftmagic/tiny-random-chat\nlearning_rate: 0.001"
    )
    # Fixed values complete after the colon: the task types.
    page.keyboard.type("\ntask_type: CH")
    popup.wait_for(timeout=30 * SECOND)
    assert popup.locator("li").all_text_contents() == ["CHAT_COMPLETION"]
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")


@pytest.mark.timeout(300)
def test_panel_model_error_and_copy_as_cell(lab: Lab, page: Any, notebook: Any) -> None:
    append_cell(page, PANEL_CELL)
    page.keyboard.press("Escape")
    append_cell(page, "# after the panel")
    page.keyboard.press("Escape")
    before = cell_sources(page)
    panel_index = before.index(PANEL_CELL)
    cell = notebook.nth(panel_index)
    run_cell(page, cell)
    output = cell.locator(".jp-OutputArea-output")
    output.get_by_role("button", name="Validate").click()
    # The model's row holds its picker, the search box and the error, side by side.
    model_row = output.locator(
        ".widget-hbox", has=page.locator("input[placeholder='search models']")
    )
    error = model_row.locator(".widget-html-content", has_text="tokenizer cannot be loaded")
    error.wait_for(timeout=60 * SECOND)
    assert "meta-llama/Llama-3.2-1B" in error.inner_text()
    shoot(cell, "panel-model-error.png")

    output.get_by_role("button", name="Copy as cell").click()
    page.wait_for_function(
        "n => window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells.length > n",
        arg=len(before),
        timeout=30 * SECOND,
    )
    after = cell_sources(page)
    assert after[: panel_index + 1] == before[: panel_index + 1]
    assert after[panel_index + 1].startswith("%%finetune\nmodel: meta-llama/Llama-3.2-1B\n")
    assert after[panel_index + 2 :] == before[panel_index + 1 :]
    output.get_by_text("the %%finetune cell is below the panel").wait_for(timeout=30 * SECOND)


@pytest.mark.timeout(600)
def test_sidebar_stats_and_streamed_chat(lab: Lab, page: Any, notebook: Any) -> None:
    from ftmagic.tracking.run import list_runs

    uri = f"sqlite:///{lab.root / 'mlflow.db'}"
    known = set(sidebar_runs(page))
    run_command(page, "ftmagic:show-runs")  # opens it, or keeps it open (a tab click toggles)
    run_cell(page, append_cell(page, 'chat_train = examples.path("chat", "train")'))
    run_cell(page, append_cell(page, TINY_RUN))
    run_id = new_run_id(page, known)
    wait_status(page, run_id, "COMPLETED", timeout=300)
    run = next(r for r in list_runs(uri=uri) if r.run_id == run_id)
    last_loss = run.metrics(["train/loss"])["train/loss"][-1][1]
    item = page.locator(f'li.jp-ftmagic-run[data-run-id="{run_id}"]')
    name = item.locator(".jp-ftmagic-run-name")
    assert name.text_content() == run.name
    assert name.evaluate("e => e.scrollWidth <= e.clientWidth")  # not cut off
    assert item.locator(".jp-ftmagic-run-stats").text_content().startswith(f"loss {last_loss:.4f}")
    shoot(page.locator("#ftmagic-runs .jp-ftmagic-runs-body"), "sidebar-stats.png")

    chat = append_cell(page, "%ft chat")
    run_cell(page, chat)
    output = chat.locator(".jp-OutputArea-output")
    box = output.locator("input[placeholder^='Say something']")
    try:
        box.wait_for(timeout=60 * SECOND)
    except Exception as err:
        raise AssertionError(f"no chat box; the cell shows: {chat.inner_text()}") from err
    output.element_handle().evaluate(JS_WATCH_ANSWER)
    box.fill("Add 3 butter, please.")  # as in the training data
    box.press("Enter")
    output.get_by_text("answering").wait_for(timeout=30 * SECOND)  # the spinner while it streams
    output.get_by_text("answering").wait_for(state="detached", timeout=120 * SECOND)
    answers = [a for a in page.evaluate("() => window.ftmagicAnswers") if a]
    # At least two partial answers before the final one.
    assert len(answers) >= 3, f"{answers}; the chat shows: {output.inner_text()}"
    final = answers[-1]
    assert all(final.startswith(a) for a in answers), answers
    assert page.evaluate("() => window.ftmagicSendDisabled")  # disabled while it answered
    assert output.get_by_role("button", name="Send").is_enabled()
    assert box.input_value() == ""
    shoot(chat, "chat.png")

    # Clicking the run's name opens its detail view: curves, checkpoints, generations, events.
    name.click()
    detail = page.locator(f'.jp-ftmagic-detail[data-run-id="{run_id}"]')
    detail.wait_for(timeout=30 * SECOND)
    assert detail.locator("h2").text_content() == run.name
    assert detail.get_attribute("data-status") == "COMPLETED"
    losses = run.metrics(["train/loss"])["train/loss"]
    curve = detail.locator('figure[data-chart="Loss"] path.jp-ftmagic-curve-0')
    assert curve.get_attribute("d").count(" L ") == len(losses) - 1
    rows = detail.locator(".jp-ftmagic-checkpoints tbody tr")
    assert [r.get_attribute("data-step") for r in rows.all()] == ["30", "60"]
    generation = rows.nth(1).locator(".jp-ftmagic-generation")
    assert generation.locator(".jp-ftmagic-prompt").text_content() == "Add 3 butter, please."
    expected = next(g["response"] for g in run.generations() if g["step"] == 60)
    assert generation.locator(".jp-ftmagic-response").text_content() == expected
    events = detail.locator(".jp-ftmagic-events tbody tr")
    types = [e.get_attribute("data-event") for e in events.all()]
    assert types[0] == "CREATED" and "COMPLETED" in types, types
    shoot(detail, "run-detail.png")

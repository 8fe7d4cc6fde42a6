"""Registration in the real SQLite model registry, loading a registered model back, and serving it
with ``mlflow models serve`` over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fixtures_tracking import (
    VENV_BIN,
    free_port,
    make_config,
    mlflow_server,
    server_env,
    stop,
    wait_http,
)
from ftmagic.models.generation import generate
from ftmagic.tracking import store
from ftmagic.tracking.run import get_run

pytestmark = pytest.mark.slow
PROMPT = "Who are you?"


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny chat model, saved as a trainer saves its final model."""
    from ftmagic.models.loading import load_model, load_tokenizer

    out = tmp_path_factory.mktemp("final-model")
    load_model("ftmagic/tiny-random-chat").save_pretrained(out)
    load_tokenizer("ftmagic/tiny-random-chat").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def registered(uri: str, model_dir: Path) -> dict[str, str]:
    """Three runs registered: two under one explicit name, one named after its run."""
    import mlflow

    global_uri = mlflow.get_tracking_uri()
    refs = {}
    for key, register_to in (
        ("a", "main.default.tiny_ner"),
        ("b", "main.default.tiny_ner"),
        ("c", "main.default"),
    ):
        config = make_config(register_to=register_to, experiment_path="registry")
        run_id = store.create_run(config, backend="inkernel", uri=uri)
        store.set_status(run_id, "RUNNING", uri=uri)
        name = get_run(run_id, uri=uri).name
        refs[key] = run_id
        refs[f"{key}_name"] = name
        refs[f"{key}_ref"] = store.register_model(run_id, model_dir, register_to, name, uri=uri)
    # mlflow's global state is as it was: the user's own mlflow calls are unaffected
    assert mlflow.get_tracking_uri() == global_uri
    assert mlflow.active_run() is None
    return refs


def test_each_run_adds_a_version_and_names_follow_register_to(
    uri: str, registered: dict[str, str]
) -> None:
    assert registered["a_ref"] == "models:/main.default.tiny_ner/1"
    assert registered["b_ref"] == "models:/main.default.tiny_ner/2"
    derived = "main.default." + registered["c_name"].replace("-", "_")
    assert registered["c_ref"] == f"models:/{derived}/1"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'main.default.tiny_ner'")
    assert sorted((int(v.version), v.run_id) for v in versions) == [
        (1, registered["a"]),
        (2, registered["b"]),
    ]
    run = get_run(registered["b"], uri=uri)
    assert run.registered_model == "models:/main.default.tiny_ner/2"
    assert run.recorded_status == "RUNNING"  # logging the model did not end the run
    assert client.get_run(registered["b"]).info.status == "RUNNING"
    assert [e.message for e in run.events if e.type == "REGISTERED"] == [
        "registered models:/main.default.tiny_ner/2"
    ]


def test_registered_model_loads_back_with_the_same_weights(
    uri: str,
    registered: dict[str, str],
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from ftmagic.models.generation import generate, load_for_inference
    from ftmagic.models.loading import load_model

    monkeypatch.setenv("FTMAGIC_CACHE", str(tmp_path / "cache"))
    folder = store.resolve_weights("models:/main.default.tiny_ner/2", uri=uri)
    assert folder.is_relative_to(tmp_path / "cache")
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    loaded, original = load_model(str(folder)), load_model(str(model_dir))
    for (name, got), (_, want) in zip(
        loaded.state_dict().items(), original.state_dict().items(), strict=True
    ):
        assert torch.equal(got, want), name
    # Run.generate uses the registered model and answers like the original model
    model, tokenizer = load_for_inference(model_dir)
    expected = generate(model, tokenizer, PROMPT, max_new_tokens=8)
    run = get_run(registered["b"], uri=uri)
    assert run.generate(PROMPT, max_new_tokens=8) == expected
    assert isinstance(expected, str) and expected


@pytest.mark.timeout(300)
def test_registers_into_a_tracking_server_with_only_its_client(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlflow's global tracking URI points elsewhere (the suite's SQLite store); the model goes to
    the server named by ``uri``, artifacts proxied over HTTP, and the run stays RUNNING."""
    import mlflow

    monkeypatch.setenv("FTMAGIC_CACHE", str(tmp_path / "cache"))
    with mlflow_server(
        tmp_path / "server.db", tmp_path / "art", free_port(), tmp_path / "log", proxied=True
    ) as http:
        run_id = store.create_run(make_config(experiment_path="remote"), backend="ray", uri=http)
        store.set_status(run_id, "RUNNING", uri=http)
        ref = store.register_model(run_id, model_dir, "main.remote.tiny", "tiny", uri=http)
        assert ref == "models:/main.remote.tiny/1"
        client = MlflowClient(tracking_uri=http, registry_uri=http)
        version = client.get_model_version("main.remote.tiny", "1")
        assert version.run_id == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        folder = store.resolve_weights(ref, uri=http)
        assert (folder / "model.safetensors").read_bytes() == (
            model_dir / "model.safetensors"
        ).read_bytes()
    assert mlflow.get_tracking_uri() != http
    assert mlflow.active_run() is None


def test_generate_from_a_checkpoint(uri: str, model_dir: Path) -> None:
    import shutil

    from ftmagic.models.generation import generate, load_for_inference

    run_id = store.create_run(make_config(experiment_path="registry"), backend="inkernel", uri=uri)
    folder = store.checkpoint_dir(run_id, 7, uri=uri)
    shutil.copytree(model_dir, folder / "model")
    store.commit_checkpoint(run_id, folder, 7, {"tokens": 70}, uri=uri)
    run = get_run(run_id, uri=uri)
    model, tokenizer = load_for_inference(model_dir)
    expected = generate(model, tokenizer, [{"role": "user", "content": PROMPT}], max_new_tokens=6)
    messages = [{"role": "user", "content": PROMPT}]
    assert run.generate(messages, max_new_tokens=6) == expected
    assert run.generate(messages, max_new_tokens=6, checkpoint=run.checkpoints[0]) == expected


def test_lora_adapter_registers_with_a_reference_to_its_base(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from ftmagic.models.generation import generate, load_for_inference
    from ftmagic.models.loading import load_model, load_tokenizer

    torch.manual_seed(0)
    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load_model("ftmagic/tiny-random-chat"), lora).save_pretrained(adapter)
    load_tokenizer("ftmagic/tiny-random-chat").save_pretrained(adapter)
    expected = generate(*load_for_inference(adapter), PROMPT, max_new_tokens=6)
    base_dir = model_path_of_tiny()
    base_only = generate(*load_for_inference(base_dir), PROMPT, max_new_tokens=6)

    monkeypatch.setenv("FTMAGIC_CACHE", str(tmp_path / "cache"))
    config = make_config(method="lora", merge_lora=False, experiment_path="registry")
    run_id = store.create_run(config, backend="inkernel", uri=uri)
    ref = store.register_model(run_id, adapter, "main.default.tiny_lora", "lora", uri=uri)
    assert ref == "models:/main.default.tiny_lora/1"
    folder = store.resolve_weights(ref, uri=uri)
    assert (folder / "adapter_config.json").exists()
    assert not (folder / "model.safetensors").exists()  # only the adapter is stored
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == base_dir
    assert generate(*load_for_inference(folder), PROMPT, max_new_tokens=6) == expected
    assert expected != base_only  # the adapter changes the answer, so the check has teeth


def model_path_of_tiny() -> str:
    from ftmagic.catalog import model_path

    return model_path("ftmagic/tiny-random-chat")


def test_served_model_answers_over_http(
    uri: str, registered: dict[str, str], model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {**server_env(), "MLFLOW_TRACKING_URI": uri}
    command = [
        str(VENV_BIN / "mlflow"), "models", "serve", "-m", "models:/main.default.tiny_ner/1",
        "--host", "127.0.0.1", "-p", str(port), "--env-manager", "local",
    ]  # fmt: skip
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server, timeout=120)
        body = json.dumps({"inputs": [PROMPT], "params": {"max_new_tokens": 8}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        stop(server)
    predictions = answer["predictions"]
    assert len(predictions) == 1
    assert isinstance(predictions[0], str) and predictions[0].strip()
    # The server decodes greedily, as Run.generate does: the same answer as the local model.
    local = generate(str(model_dir), None, PROMPT, max_new_tokens=8, chat=False)
    assert local.strip() and local in predictions[0]

"""The model catalog: listings, retirements, unlisted models and close-match errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ftmagic.catalog import (
    ModelList,
    RetiredModelWarning,
    get_models,
    model_path,
    resolve_model,
)
from ftmagic.errors import ModelError
from ftmagic.models.loading import load_model, load_tokenizer


def by_name() -> dict[str, object]:
    return {e.name: e for e in get_models()}


def test_context_lengths_of_hosted_families() -> None:
    models = {e.name: e for e in get_models()}
    assert models["meta-llama/Llama-3.1-8B-Instruct"].context_length == 131072
    assert models["meta-llama/Llama-3.1-405B"].context_length == 131072
    assert models["meta-llama/Llama-3.2-1B-Instruct"].context_length == 131072
    assert models["meta-llama/Llama-3.3-70B-Instruct"].context_length == 131072
    assert models["databricks/dbrx-instruct"].context_length == 32768
    assert models["mistralai/Mixtral-8x7B-Instruct-v0.1"].context_length == 32768
    assert models["meta-llama/Meta-Llama-3-8B-Instruct"].context_length == 8192
    assert models["meta-llama/Llama-2-13b-chat-hf"].context_length == 4096
    assert models["codellama/CodeLlama-34b-Python-hf"].context_length == 16384
    assert models["Qwen/Qwen2.5-0.5B-Instruct"].context_length == 32768
    assert models["HuggingFaceTB/SmolLM2-135M-Instruct"].template_family == "chatml"
    assert models["ftmagic/tiny-chat"].kind == "tiny"


def test_retired_models_name_replacements() -> None:
    retired = [e for e in get_models() if e.retired]
    assert len(retired) == 4 + 6 + 9
    assert all(e.retired_on == "2024-12-13" and e.replacement for e in retired)
    names = {e.name for e in get_models()}
    assert all(e.replacement in names for e in retired)
    current = get_models(include_retired=False)
    assert not any(e.retired for e in current)
    assert len(current) == len(get_models()) - len(retired)


def test_resolve_retired_warns_with_replacement() -> None:
    with pytest.warns(RetiredModelWarning, match=r"Llama-3\.1-8B-Instruct"):
        entry = resolve_model("meta-llama/Meta-Llama-3-8B-Instruct")
    assert entry.retired and entry.context_length == 8192


def test_resolve_current_and_hosted_alias_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry = resolve_model("meta-llama/Meta-Llama-3.1-70B-Instruct")
        assert entry.name == "meta-llama/Llama-3.1-70B-Instruct"
        assert resolve_model("tiny-chat").name == "ftmagic/tiny-chat"


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(ModelError) as info:
        resolve_model("meta-llama/Llama-3.1-8B-Instrct")
    message = str(info.value)
    assert "'meta-llama/Llama-3.1-8B-Instruct'" in message
    assert "get_models()" in message
    with pytest.raises(ModelError, match="ftmagic/tiny-chat"):
        resolve_model("ftmagic/tiny-caht")
    with pytest.raises(ModelError, match="no model given"):
        resolve_model("")


def test_local_folder_is_unlisted_with_its_context_length(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4321}))
    entry = resolve_model(str(tmp_path))
    assert entry.kind == "unlisted"
    assert entry.context_length == 4321
    assert "unlisted" in entry.note
    assert model_path(str(tmp_path)) == str(tmp_path)


def test_broken_local_config_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config\.json cannot be read"):
        resolve_model(str(tmp_path))


def test_hf_cache_model_resolves_offline(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--acme--chatty-1b" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(
        json.dumps({"model_type": "llama", "max_position_embeddings": 16384})
    )
    refs = tmp_path / "hub" / "models--acme--chatty-1b" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    code = (
        "from ftmagic.catalog import resolve_model\n"
        "e = resolve_model('acme/chatty-1b')\n"
        "print(e.kind, e.context_length)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["unlisted", "16384"]


def test_model_list_table_and_pandas() -> None:
    models = get_models()
    assert isinstance(models, ModelList)
    text = str(models)
    assert text.splitlines()[0].split() == list(ModelList.COLUMNS)
    assert "retired 2024-12-13, use meta-llama/Llama-3.1-8B" in text
    html = models._repr_html_()
    assert html.count("<tr>") == len(models) + 1
    frame = models.to_pandas()
    assert len(frame) == len(models)
    assert frame.set_index("name").loc["ftmagic/tiny-chat", "context_length"] == 2048


def test_load_tokenizer_is_cached_and_model_loads() -> None:
    first = load_tokenizer("ftmagic/tiny-chat")
    assert load_tokenizer("ftmagic/tiny-chat") is first
    model = load_model("ftmagic/tiny-chat")
    assert model.config.vocab_size == len(first)
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_model("/nonexistent/folder")

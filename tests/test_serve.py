"""Serving in one call: ``run.serve()`` starts ``mlflow models serve`` on 127.0.0.1, answers a
chat, and ``stop()`` leaves no process of its group behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_tracking import make_config
from ftmagic.errors import RunError
from ftmagic.tracking import store
from ftmagic.tracking.run import get_run

MESSAGES = [{"role": "user", "content": "Who are you?"}]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    from ftmagic.catalog import load_model, load_tokenizer

    out = tmp_path / "model"
    load_model("ftmagic/tiny-chat").save_pretrained(out)
    load_tokenizer("ftmagic/tiny-chat").save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_serve_round_trip_leaves_no_process(mlflow_store: str, tiny_model_dir: Path) -> None:
    from ftmagic.train.generation import generate

    config = make_config(register_to="main.default.served", experiment_path="serve")
    run_id = store.create_run(config, backend="inkernel")
    store.register_model(run_id, tiny_model_dir, "main.default.served", "served")
    run = get_run(run_id)
    expected = generate(str(tiny_model_dir), None, MESSAGES, max_new_tokens=8)

    with run.serve() as endpoint:
        assert endpoint.url.startswith("http://127.0.0.1:")
        assert endpoint.model_uri == "models:/main.default.served/1"
        pgid = endpoint.pid
        assert pgid in group_members(pgid)
        answer = endpoint.chat(MESSAGES, max_new_tokens=8)
        assert "127.0.0.1" in endpoint.logs()  # the server logs where it listens
    assert answer.strip() == expected.strip() and expected.strip()
    assert not endpoint.running
    assert group_members(pgid) == []
    endpoint.stop()  # a second stop is harmless


def test_run_without_registered_model_says_how_to_get_one(mlflow_store: str) -> None:
    run_id = store.create_run(make_config(experiment_path="serve"), backend="inkernel")
    with pytest.raises(RunError, match=r"no registered model to serve.*promote"):
        get_run(run_id).serve()


@pytest.mark.timeout(120)
def test_a_server_that_cannot_start_reports_its_log(mlflow_store: str) -> None:
    import ftmagic

    with pytest.raises(RunError, match="exited with code") as err:
        ftmagic.serve("models:/main.default.missing/1", timeout=90)
    assert "main.default.missing" in str(err.value)

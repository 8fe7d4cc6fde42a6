"""FSDP2 resume is exact across process counts: two real gloo processes shard the tiny model with
``fully_shard``; a run killed (SIGKILL) after its first checkpoint resumes on two processes, a
stopped one on one process, and one process's checkpoint resumes on two. Every resumed loss
equals the uninterrupted two-process run's to 1e-4, which needs each parameter's own Adam moments
back, not rank 0's shards."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

import fixtures_train
from fixtures_train import fast_config
from ftmagic.config import RunConfig

train_env = fixtures_train.train_env

WORLD = 2
STEPS = 4
LAUNCH_TIMEOUT_S = 240

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _config(env: dict[str, Any]) -> RunConfig:
    return fast_config(
        env,
        training_duration=f"{STEPS}ba",
        checkpoint_interval="2ba",
        data_parallel="fsdp2",
        experiment_path="fsdp-resume",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _new_run(config: RunConfig) -> str:
    from ftmagic.tracking import store

    return str(store.create_run(config, backend="torchrun"))


def _run_job(config: RunConfig, job: dict[str, Any], out: Path, rank: int) -> None:
    """One ``train`` call of a worker: ``full``, ``stop`` (after step 2), ``kill`` (SIGKILL of
    rank 0 during step 3, after checkpoint 2 is committed) or ``resume``."""
    from ftmagic.train.trainer import StepReport, train

    losses: dict[int, float] = {}
    stop = threading.Event()

    def hook(report: StepReport) -> None:
        losses[report.step] = report.loss
        if job["action"] == "stop" and report.step == 2:
            stop.set()
        if job["action"] == "kill" and report.step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    result = train(
        config, job["run_id"], stop_event=stop, resume=job["action"] == "resume", progress=hook
    )
    if rank == 0:
        record = {"status": result.status, "reason": result.reason, "losses": losses}
        (out / f"{job['name']}.json").write_text(json.dumps(record))


def _worker(rank: int, port: int, env: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.chdir(env["root"])
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MLFLOW_TRACKING_URI=env["uri"],
    )
    # One process group for all the jobs (train reuses a group it did not make).
    dist.init_process_group("gloo")
    config = _config(env)
    for job in jobs:
        _run_job(config, job, Path(env["out"]), rank)
    dist.destroy_process_group()


def _launch(env: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
    """Run ``jobs`` in two processes; when rank 0 kills itself the peer is ended too."""
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=_worker, args=(r, port, env, jobs)) for r in range(WORLD)]
    for proc in procs:
        proc.start()
    procs[0].join(LAUNCH_TIMEOUT_S)
    killed = any(job["action"] == "kill" for job in jobs)
    procs[1].join(5 if killed else LAUNCH_TIMEOUT_S)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    expected_rank0 = -signal.SIGKILL if killed else 0
    assert procs[0].exitcode == expected_rank0, procs[0].exitcode
    if not killed:
        assert procs[1].exitcode == 0, procs[1].exitcode


def _result(env: dict[str, Any], name: str) -> dict[str, Any]:
    record = json.loads((Path(env["out"]) / f"{name}.json").read_text())
    record["losses"] = {int(k): v for k, v in record["losses"].items()}
    return record


def _one_process(config: RunConfig, run_id: str, action: str) -> dict[int, float]:
    from ftmagic.train.trainer import StepReport, train

    losses: dict[int, float] = {}
    stop = threading.Event()

    def hook(report: StepReport) -> None:
        losses[report.step] = report.loss
        if action == "stop" and report.step == 2:
            stop.set()

    result = train(config, run_id, stop_event=stop, resume=action == "resume", progress=hook)
    assert result.status == ("STOPPED" if action == "stop" else "COMPLETED"), result.reason
    return losses


@pytest.fixture(scope="module")
def runs(train_env: dict[str, Any]) -> dict[str, Any]:
    """The uninterrupted two-process run and the three interrupted-then-resumed ones."""
    from ftmagic.tracking import store

    env = {**train_env, "out": str(train_env["root"] / "fsdp-out")}
    Path(env["out"]).mkdir()
    config = _config(train_env)
    ids = {name: _new_run(config) for name in ("ref", "stopped2", "killed2", "one")}
    _launch(
        env,
        [
            {"name": "ref", "run_id": ids["ref"], "action": "full"},
            {"name": "stopped2", "run_id": ids["stopped2"], "action": "stop"},
            {"name": "killed2", "run_id": ids["killed2"], "action": "kill"},
        ],
    )
    checkpoint = store.download_checkpoint(ids["stopped2"], 2)
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    # Two processes on, one process resumes; one process first, two processes resume.
    resumed_on_one = _one_process(config, ids["stopped2"], "resume")
    first_on_one = _one_process(config, ids["one"], "stop")
    _launch(
        env,
        [
            {"name": "killed2-resumed", "run_id": ids["killed2"], "action": "resume"},
            {"name": "one-resumed", "run_id": ids["one"], "action": "resume"},
        ],
    )
    return {
        "ids": ids,
        "env": env,
        "optimizer_state": optimizer_state,
        "resumed_on_one": resumed_on_one,
        "first_on_one": first_on_one,
    }


def _reference(runs: dict[str, Any]) -> dict[int, float]:
    ref = _result(runs["env"], "ref")
    assert ref["status"] == "COMPLETED", ref["reason"]
    assert sorted(ref["losses"]) == [1, 2, 3, 4]
    return dict(ref["losses"])


def _assert_close(resumed: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(resumed) == [3, 4]
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], abs=1e-4), step


def test_checkpoint_holds_every_parameters_whole_moments(runs: dict[str, Any]) -> None:
    from ftmagic.models.loading import load_model

    model = load_model("ftmagic/tiny-random-chat")
    shapes = {name: p.shape for name, p in model.named_parameters()}
    state = runs["optimizer_state"]["state"]
    assert set(state) == set(shapes)  # keyed by name, every parameter of both ranks
    for name, moments in state.items():
        assert moments["exp_avg"].shape == shapes[name], name
        assert moments["exp_avg_sq"].shape == shapes[name], name
        assert float(moments["step"]) == 2.0
    assert any(float(m["exp_avg_sq"].abs().sum()) > 0 for m in state.values())


def test_killed_two_process_run_resumes_on_two_processes(runs: dict[str, Any]) -> None:
    from ftmagic.tracking import store

    expected = _reference(runs)
    killed = runs["ids"]["killed2"]
    assert not (Path(runs["env"]["out"]) / "killed2.json").exists()  # rank 0 really died
    resumed = _result(runs["env"], "killed2-resumed")
    assert resumed["status"] == "COMPLETED", resumed["reason"]
    _assert_close(resumed["losses"], expected)
    assert [c.step for c in store.list_checkpoints(killed)] == [2, 4]


def test_two_process_run_resumes_on_one_process(runs: dict[str, Any]) -> None:
    expected = _reference(runs)
    stopped = _result(runs["env"], "stopped2")
    assert stopped["status"] == "STOPPED" and sorted(stopped["losses"]) == [1, 2]
    _assert_close(runs["resumed_on_one"], expected)


def test_one_process_run_resumes_on_two_processes(runs: dict[str, Any]) -> None:
    expected = _reference(runs)
    first = runs["first_on_one"]
    for step in (1, 2):
        assert first[step] == pytest.approx(expected[step], abs=1e-4)
    resumed = _result(runs["env"], "one-resumed")
    assert resumed["status"] == "COMPLETED", resumed["reason"]
    _assert_close(resumed["losses"], expected)

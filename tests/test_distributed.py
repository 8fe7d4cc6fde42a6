"""ftmagic.train.distributed across two real gloo processes (the torchrun environment path)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from ftmagic.train import distributed as dist_api
from ftmagic.train.distributed import DistContext

WORLD = 2
LR = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tiny_llama(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four rows with different numbers of trained tokens, so ranks see unequal token counts."""
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 97, (4, 12), generator=gen)
    labels = input_ids.clone()
    for row, untrained in enumerate((0, 3, 7, 9)):
        labels[row, :untrained] = -100
    return input_ids, labels


def _loss_sum(
    model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    logits = model(input_ids=input_ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def _trained_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())


def _one_sgd_step(model: torch.nn.Module, ctx: DistContext) -> None:
    input_ids, labels = _global_batch()
    rows = dist_api.shard(list(range(len(input_ids))), ctx)
    local_ids, local_labels = input_ids[rows], labels[rows]
    local_tokens = torch.tensor([float(_trained_tokens(local_labels))])
    global_tokens = dist_api.all_reduce_sum(local_tokens, ctx).item()
    # DDP averages gradients over ranks; scaling by world_size makes it a global token mean.
    loss = _loss_sum(model, local_ids, local_labels) * ctx.world_size / global_tokens
    loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= LR * param.grad


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    ctx = dist_api.setup(None)
    results: dict[str, Any] = {"rank": ctx.rank, "world": ctx.world_size, "main": ctx.is_main}
    results["sum"] = dist_api.all_reduce_sum(torch.tensor([rank + 1.0, 10.0]), ctx).tolist()
    results["any"] = dist_api.any_rank(rank == 1, ctx)
    results["none"] = dist_api.any_rank(False, ctx)
    results["broadcast"] = dist_api.broadcast_object({"step": 7} if rank == 0 else None, ctx)

    model = dist_api.wrap_model(_tiny_llama(), ctx, None)
    results["wrapped"] = type(model).__name__
    _one_sgd_step(model, ctx)
    state = dist_api.full_state_dict(model, ctx)
    results["state_is_none"] = state is None

    # Round trip: rank 0's state is broadcast into a differently initialised wrapped model.
    fresh = dist_api.wrap_model(_tiny_llama(seed=99), ctx, None)
    dist_api.load_full_state_dict(fresh, state, ctx)
    again = dist_api.full_state_dict(fresh, ctx)
    local = dist_api.unwrap(fresh).state_dict()
    if ctx.is_main:
        assert state is not None and again is not None
        torch.save({"state": state, "again": again}, Path(out) / "state.pt")
    local_after = {k: v.detach().clone() for k, v in local.items()}
    torch.save(local_after, Path(out) / f"local-{rank}.pt")
    dist_api.barrier(ctx)
    torch.save(results, Path(out) / f"results-{rank}.pt")
    dist_api.teardown(ctx)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def _ctx(rank: int, world: int) -> DistContext:
    return DistContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))


def test_shard_covers_every_item_once_and_is_balanced() -> None:
    items = [f"example-{i}" for i in range(11)]
    shares = [dist_api.shard(items, _ctx(rank, 3)) for rank in range(3)]
    assert shares[0] == ["example-0", "example-3", "example-6", "example-9"]
    assert shares[2] == ["example-2", "example-5", "example-8"]
    assert sorted(item for share in shares for item in share) == sorted(items)
    assert {len(s) for s in shares} == {3, 4}
    assert dist_api.shard(items, _ctx(0, 1)) == items
    assert shares == [dist_api.shard(items, _ctx(rank, 3)) for rank in range(3)]


def test_single_process_setup_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    ctx = dist_api.setup(None)
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.owns_group) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu")
    model = _tiny_llama()
    assert dist_api.wrap_model(model, ctx, None) is model
    assert dist_api.all_reduce_sum(torch.tensor([2.0]), ctx).tolist() == [2.0]


def test_collectives_across_two_gloo_processes(two_process_run: Path) -> None:
    results = [torch.load(two_process_run / f"results-{r}.pt") for r in range(WORLD)]
    assert [(r["rank"], r["world"], r["main"]) for r in results] == [(0, 2, True), (1, 2, False)]
    assert all(r["sum"] == [3.0, 20.0] for r in results)
    assert all(r["any"] is True and r["none"] is False for r in results)
    assert all(r["broadcast"] == {"step": 7} for r in results)
    assert all(r["wrapped"] == "DistributedDataParallel" for r in results)
    assert [r["state_is_none"] for r in results] == [False, True]


def test_ddp_step_equals_one_process_step_on_the_same_global_batch(two_process_run: Path) -> None:
    reference = _tiny_llama()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    _one_sgd_step(reference, _ctx(0, 1))
    expected = reference.state_dict()

    saved = torch.load(two_process_run / "state.pt")["state"]
    assert set(saved) == set(expected)  # no "module." prefix: loads into a plain model
    moved = max((expected[k] - before[k]).abs().max().item() for k in expected)
    assert moved > 1e-3  # the step really changed the weights
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, atol=1e-5, rtol=0)


def test_full_state_dict_round_trip_reaches_every_rank(two_process_run: Path) -> None:
    saved = torch.load(two_process_run / "state.pt")
    state, again = saved["state"], saved["again"]
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert all(v.device.type == "cpu" for v in state.values())
    # Rank 1 passed None and still holds rank 0's weights (broadcast), not its own seed-99 init.
    local1 = torch.load(two_process_run / "local-1.pt")
    assert all(torch.equal(local1[k], state[k]) for k in state)
    plain = _tiny_llama(seed=5)
    plain.load_state_dict(state)
    assert torch.equal(plain.state_dict()["lm_head.weight"], state["lm_head.weight"])


# --- benchmarks/gpu_check.py: the parts that need no GPU ----------------------------------------


def _gpu_check() -> Any:
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tied", [True, False])
def test_gpu_check_counts_parameters_like_transformers(tied: bool) -> None:
    from transformers import LlamaForCausalLM

    gpu_check = _gpu_check()
    shape = gpu_check.ModelShape(tied=tied)
    with torch.device("meta"):
        model = LlamaForCausalLM(gpu_check.llama_config(shape))
    assert gpu_check.parameter_count(shape) == model.num_parameters()
    if tied:
        assert gpu_check.parameter_count(shape) == 1_235_814_400  # Llama-3.2-1B


def test_gpu_check_mfu_and_peaks() -> None:
    gpu_check = _gpu_check()
    assert gpu_check.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_bf16_tflops("Some Future GPU") is None
    shape = gpu_check.ModelShape()
    # 6 * (all params, the tied head included) + 12 * 16 layers * 2048 * 4096 tokens
    expected = 6 * 1_235_814_400 + 12 * 16 * 2048 * 4096
    assert gpu_check.flops_per_token(shape, 4096) == expected
    assert gpu_check.mfu(10_000.0, expected, 989.0) == pytest.approx(10_000 * expected / 989e12)
    assert gpu_check.mfu(10_000.0, expected, None) is None
    result = gpu_check.BenchResult("ftmagic (FSDP2)", 12_345.6, 0.5, 30.25, 0.4321, 11.5)
    table = gpu_check.format_report([result], "NVIDIA H200", shape, 32768)
    assert "| ftmagic (FSDP2) | 12,346 | 0.500 | 43.2% | 30.2 | 11.500 |" in table
    assert "1,236M params" in table and "32,768 tokens per step" in table


def test_gpu_check_explains_a_machine_without_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu_check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--steps", "1"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--skip-trl" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_check_cpu_smoke_runs_every_variant() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"),
            "--cpu-smoke",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ftmagic")]
    assert len(rows) == 4
    for row in rows[:3]:
        loss = float(row.strip("| ").split(" | ")[-1])
        assert 5.0 < loss < 8.0  # about ln(1000) for a random model: it really trained a step
    assert "| ftmagic QLoRA, varlen, chunked loss | skipped: QLoRA needs CUDA |" in rows[3]
    packing = dict(
        line.split() for line in done.stdout.splitlines() if line.startswith(("  sdpa", "  eager"))
    )
    assert set(packing) == {"sdpa", "eager"}
    assert all(float(diff) < 1e-4 for diff in packing.values()), packing

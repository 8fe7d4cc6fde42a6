"""GPU check: bf16 training throughput of a ~1B Llama on one GPU, ftmagic's step against TRL's.

    python benchmarks/gpu_check.py                 # all, about 5-7 minutes on an H100/H200
    python benchmarks/gpu_check.py --skip-trl      # ftmagic's steps only
    python benchmarks/gpu_check.py --json out.json # also write the numbers as JSON
    python benchmarks/gpu_check.py --cpu-smoke     # every code path on a tiny model, on the CPU

ftmagic's step runs in these variants, on rows packed with documents of ``--doc-len`` tokens
(``position_ids`` restart at each):

- full fine-tuning with FSDP2, SDPA with the row-by-row block-diagonal mask, full logits;
- full fine-tuning with FSDP2, the variable-length kernel ``attn_implementation: auto`` picks
  (flash-attention when installed, else flex_attention), chunked loss;
- LoRA (rank 16, all linear layers) with FSDP2, variable-length kernel, chunked loss;
- QLoRA (4-bit base through bitsandbytes, one GPU), when bitsandbytes is installed.

``--cpu-smoke`` runs the same variants on a tiny shape in fp32 over a one-process gloo group (no
TRL, no MFU), so a test proves the script works on machines without a GPU.

The model is Llama-3.2-1B-shaped (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192,
vocabulary 128256, tied embeddings), randomly initialised, so nothing is downloaded. Both sides
train the same global batch of random tokens (``--rows`` rows of ``--seq-len`` tokens per step)
with AdamW, after ``--warmup`` uncounted steps:

- ``ftmagic``: the trainer's building blocks: a one-process NCCL group, the model sharded by
  ``ftmagic.train.distributed.apply_fsdp2`` (FSDP2 ``fully_shard`` per decoder layer, bf16 params,
  fp32 gradient reduction), the trainer's ``loss_sum`` and ``build_optimizer``, gradient clipping.
- ``TRL``: ``trl.SFTTrainer`` with ``bf16=True`` on the same (pre-tokenised) rows.

Reported for each: tokens/s, model FLOPs utilisation (MFU) against the GPU's dense bf16 peak
(``PEAK_BF16_TFLOPS``), peak GPU memory and the last loss. FLOPs per token follow the PaLM
appendix: ``6 * N + 12 * layers * hidden * seq_len`` with N the parameters that take part in
matrix multiplies (all but the input embedding lookup; a tied output head counts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. Longer
# names first: the first key found in the device name wins.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "GH200": 989.0,
    "H200": 989.0,
    "H100": 989.0,  # SXM
    "H800": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A6000": 155.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "MI300X": 1307.0,
}


@dataclass(frozen=True)
class ModelShape:
    """The Llama shape to benchmark (defaults: Llama-3.2-1B)."""

    hidden: int = 2048
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    mlp: int = 8192
    vocab: int = 128256
    tied: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class Variant:
    """One way of running ftmagic's step."""

    name: str
    method: str = "full"  # full, lora or qlora
    varlen: bool = False  # the variable-length kernel instead of SDPA with a mask
    chunk: int = 0  # loss_chunk_tokens (0: full logits)


VARIANTS = (
    Variant("ftmagic full, FSDP2, SDPA, full logits"),
    Variant("ftmagic full, FSDP2, varlen, chunked loss", varlen=True, chunk=1024),
    Variant("ftmagic LoRA, FSDP2, varlen, chunked loss", method="lora", varlen=True, chunk=1024),
    Variant("ftmagic QLoRA, varlen, chunked loss", method="qlora", varlen=True, chunk=1024),
)
SMOKE_SHAPE = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vocab=1000)


@dataclass
class BenchResult:
    name: str
    tokens_per_s: float
    step_time_s: float
    peak_memory_gib: float
    mfu: float | None
    last_loss: float
    skipped: str = ""


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA device name, or None when unknown.

    >>> peak_bf16_tflops("NVIDIA H100 80GB HBM3")
    989.0
    >>> peak_bf16_tflops("NVIDIA H100 PCIe")
    756.0
    """
    lowered = device_name.lower()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.lower() in lowered:
            return value
    return None


def parameter_count(shape: ModelShape) -> int:
    """Parameters of a Llama of this shape (the same count ``model.num_parameters()`` gives)."""
    kv = shape.kv_heads * shape.head_dim
    attention = 2 * shape.hidden * shape.hidden + 2 * shape.hidden * kv
    mlp = 3 * shape.hidden * shape.mlp
    per_layer = attention + mlp + 2 * shape.hidden  # two RMSNorm weights
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    return shape.layers * per_layer + embeddings + shape.hidden  # final norm


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs per token: ``6 N + 12 L d T`` (PaLM), N without the embedding lookup."""
    matmul_params = parameter_count(shape) - shape.vocab * shape.hidden * (0 if shape.tied else 1)
    return 6.0 * matmul_params + 12.0 * shape.layers * shape.hidden * seq_len


def mfu(tokens_per_s: float, flops_token: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None when the peak is unknown)."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_token / (peak_tflops * 1e12)


def llama_config(shape: ModelShape) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.mlp,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    )


def random_rows(rows: int, seq_len: int, vocab: int, seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (rows, seq_len), generator=generator)


def format_report(
    results: list[BenchResult], device: str, shape: ModelShape, tokens_per_step: int
) -> str:
    """A Markdown table of the results, with the setting in a header line."""
    millions = parameter_count(shape) / 1e6
    lines = [
        f"GPU check on {device}: Llama {millions:,.0f}M params, bf16, "
        f"{tokens_per_step:,} tokens per step",
        "",
        "| trainer | tokens/s | step (s) | MFU | peak memory (GiB) | last loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.name} | skipped: {r.skipped} | | | | |")
            continue
        shown_mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        lines.append(
            f"| {r.name} | {r.tokens_per_s:,.0f} | {r.step_time_s:.3f} | {shown_mfu} "
            f"| {r.peak_memory_gib:.1f} | {r.last_loss:.3f} |"
        )
    return "\n".join(lines)


# --- ftmagic's step ------------------------------------------------------------------------------


def packing_check(
    device: Any, names: tuple[str, ...] = ("sdpa", "flex_attention", "flash_attention_2")
) -> dict[str, float | str]:
    """For each attention implementation: the largest difference between the logits of two
    documents packed in one row (``position_ids`` restarting) and of each run alone, in fp32 on
    a small Llama. Packing is right at float noise: about 1e-6 in fp32, about 1e-2 for
    flash-attention, which runs in bf16 only. Leaking across documents differs by about 1."""
    import torch
    from transformers import LlamaForCausalLM

    from ftmagic.train import attention

    torch.manual_seed(0)
    config = llama_config(ModelShape(hidden=256, layers=2, heads=4, kv_heads=2, mlp=512, vocab=512))
    gen = torch.Generator().manual_seed(2)
    first = torch.randint(0, 512, (1, 37), generator=gen).to(device)
    second = torch.randint(0, 512, (1, 21), generator=gen).to(device)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(37), torch.arange(21)]).unsqueeze(0).to(device)
    found: dict[str, float | str] = {}
    for name in names:
        if name == "flash_attention_2" and not attention.flash_attention_installed():
            found[name] = "not installed"
            continue
        # flash-attention runs in half precision only; the others are checked in fp32.
        dtype = torch.bfloat16 if name == "flash_attention_2" else torch.float32
        model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
        attention.apply(model, name)
        with torch.no_grad():
            together = model(input_ids=packed, position_ids=positions, use_cache=False).logits
            alone = torch.cat(
                [model(input_ids=x, use_cache=False).logits for x in (first, second)], dim=1
            )
        found[name] = float((together - alone).abs().max())
    return found


def format_packing(found: dict[str, float | str]) -> str:
    lines = ["", "Packed rows against each document alone (largest logit difference):"]
    for name, value in found.items():
        lines.append(f"  {name:<18} {value if isinstance(value, str) else f'{value:.2e}'}")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def one_process_group(cuda: bool = True) -> Any:
    """A world-size-1 process group (NCCL, or gloo on the CPU), so FSDP2 runs as it would on many
    devices."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if cuda:
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    else:
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def packed_positions(rows: int, seq_len: int, doc_len: int) -> Any:
    """``position_ids`` of rows packed with documents of ``doc_len`` tokens."""
    import torch

    return (torch.arange(seq_len) % doc_len).repeat(rows, 1)


def build_model(variant: Variant, shape: ModelShape, device: Any, bf16: bool) -> Any:
    """The variant's model on ``device``: random init, LoRA or a 4-bit base, its attention."""
    import torch
    from transformers import LlamaForCausalLM

    from ftmagic.config import RunConfig
    from ftmagic.train import attention
    from ftmagic.train.builders import apply_lora
    from ftmagic.train.distributed import apply_fsdp2

    name = attention.resolve(
        "auto" if variant.varlen else "sdpa", device_type=device.type, packing=True
    )
    if variant.method == "qlora":
        model = _random_4bit(shape)
    else:
        with torch.device(device):
            model = LlamaForCausalLM(llama_config(shape))
    attention.apply(model, name)
    model.config.use_cache = False
    if variant.method != "full":
        model = apply_lora(model, RunConfig(model="gpu-check", method="lora"))
    if variant.method != "qlora":
        model = apply_fsdp2(model, bf16=bf16)
    model.train()
    return model


def _random_4bit(shape: ModelShape) -> Any:
    """A randomly initialised model saved in bf16 and loaded back with 4-bit linear weights."""
    import torch
    from transformers import LlamaForCausalLM

    from ftmagic.train.qlora import load_4bit

    folder = tempfile.mkdtemp(prefix="gpu-check-4bit-")
    LlamaForCausalLM(llama_config(shape)).to(torch.bfloat16).save_pretrained(folder)
    return load_4bit(folder, gradient_checkpointing=False)


def bench_ftmagic(
    args: argparse.Namespace, shape: ModelShape, variant: Variant, device: Any
) -> BenchResult:
    import torch

    from ftmagic.config import RunConfig
    from ftmagic.train.builders import build_optimizer
    from ftmagic.train.loss import loss_sum

    cuda = device.type == "cuda"
    skipped = _skip_reason(variant, cuda)
    if skipped:
        return BenchResult(variant.name, 0.0, 0.0, 0.0, None, float("nan"), skipped=skipped)
    torch.manual_seed(args.seed)
    with one_process_group(cuda) if variant.method != "qlora" else contextlib.nullcontext():
        model = build_model(variant, shape, device, bf16=cuda)
        settings = RunConfig(model="gpu-check", train_data_path="random", learning_rate=1e-5)
        optimizer = build_optimizer(model, settings, device)
        rows = random_rows(args.rows, args.seq_len, shape.vocab, args.seed).to(device)
        positions = packed_positions(args.rows, args.seq_len, args.doc_len).to(device)
        micro = [slice(i, i + args.micro_rows) for i in range(0, args.rows, args.micro_rows)]
        tokens = args.rows * (args.seq_len - 1)
        params = [p for p in model.parameters() if p.requires_grad]

        def step() -> float:
            total = torch.zeros((), device=device)
            for part in micro:
                batch = {
                    "input_ids": rows[part],
                    "labels": rows[part],
                    "position_ids": positions[part],
                }
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    summed = loss_sum(model, batch, variant.chunk)
                (summed / tokens).backward()
                total += summed.detach()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(total.item()) / tokens

        return _timed(variant.name, step, args, shape)


def _skip_reason(variant: Variant, cuda: bool) -> str:
    from ftmagic.train.qlora import bitsandbytes_installed

    if variant.method != "qlora":
        return ""
    if not cuda:
        return "QLoRA needs CUDA"
    return "" if bitsandbytes_installed() else "bitsandbytes is not installed"


def _timed(name: str, step: Any, args: argparse.Namespace, shape: ModelShape) -> BenchResult:
    import torch

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loss = 0.0
    for _ in range(args.warmup):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return _result(name, elapsed, loss, args, shape)


def _result(
    name: str, elapsed: float, loss: float, args: argparse.Namespace, shape: ModelShape
) -> BenchResult:
    import torch

    tokens_per_s = args.steps * args.rows * args.seq_len / elapsed
    if args.cpu_smoke:
        import resource

        peak, memory = None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else:
        peak = peak_bf16_tflops(torch.cuda.get_device_name(0))
        memory = torch.cuda.max_memory_allocated()
    return BenchResult(
        name=name,
        tokens_per_s=tokens_per_s,
        step_time_s=elapsed / args.steps,
        peak_memory_gib=memory / 2**30,
        mfu=mfu(tokens_per_s, flops_per_token(shape, args.seq_len), peak),
        last_loss=loss,
    )


# --- TRL's SFTTrainer ----------------------------------------------------------------------------


def bench_trl(args: argparse.Namespace, shape: ModelShape) -> BenchResult:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ftmagic.tiny import ensure_tiny_model

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(llama_config(shape))
    tokenizer = _tokenizer(ensure_tiny_model("ftmagic/tiny-random-chat"))
    rows = random_rows(args.rows * (args.warmup + args.steps), args.seq_len, shape.vocab, args.seed)
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    clock = _StepClock(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            bf16=True,
            max_length=args.seq_len,
            packing=False,
            per_device_train_batch_size=args.micro_rows,
            gradient_accumulation_steps=max(1, args.rows // args.micro_rows),
            max_steps=args.warmup + args.steps,
            learning_rate=1e-5,
            lr_scheduler_type="constant",
            optim="adamw_torch_fused",
            max_grad_norm=1.0,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            dataloader_num_workers=0,
            dataset_kwargs={"skip_prepare_dataset": True},
        )
        callback: TrainerCallback = clock.as_callback()
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[callback],
        )
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return _result(
        "TRL SFTTrainer", clock.elapsed(), losses[-1] if losses else float("nan"), args, shape
    )


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _StepClock:
    """Times the optimizer steps after ``warmup`` (the Trainer calls back after each)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None

    def elapsed(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("TRL ran fewer steps than the warm-up")
        return self.end - self.start

    def as_callback(self) -> Any:
        import torch
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                torch.cuda.synchronize()
                if state.global_step == clock.warmup:
                    clock.start = time.perf_counter()
                elif state.global_step > clock.warmup:
                    clock.end = time.perf_counter()

        return Callback()


# --- entry point ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--steps", type=int, default=10, help="counted steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted steps first (default 3)")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per row (default 4096)")
    parser.add_argument("--rows", type=int, default=8, help="rows per optimizer step (default 8)")
    parser.add_argument("--micro-rows", type=int, default=2, help="rows per forward (default 2)")
    parser.add_argument(
        "--doc-len", type=int, default=512, help="tokens per packed document (default 512)"
    )
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (default 16)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--skip-trl", action="store_true", help="measure ftmagic's step only")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run every variant on a tiny model on the CPU (proves the script, measures nothing)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.seq_len, args.rows, args.micro_rows, args.doc_len = 64, 2, 1, 16
        args.steps, args.warmup, args.skip_trl = 1, 1, True
    if args.rows % args.micro_rows:
        parser.error("--rows must be a multiple of --micro-rows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.cpu_smoke:
        torch.set_num_threads(1)
        cpu = [bench_ftmagic(args, SMOKE_SHAPE, v, torch.device("cpu")) for v in VARIANTS]
        print(format_report(cpu, "CPU (smoke run)", SMOKE_SHAPE, args.rows * args.seq_len))
        # flex_attention compiles for many minutes on CPUs: the smoke run checks SDPA's packing.
        print(format_packing(packing_check(torch.device("cpu"), ("sdpa", "eager"))))
        return 0
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). This check "
            "needs one NVIDIA GPU with bf16 support; run it on the GPU machine.",
            file=sys.stderr,
        )
        return 2
    shape = ModelShape(layers=args.layers)
    device = torch.cuda.get_device_name(0)
    results = []
    for variant in VARIANTS:
        results.append(bench_ftmagic(args, shape, variant, torch.device("cuda")))
        torch.cuda.empty_cache()
    if not args.skip_trl:
        results.append(bench_trl(args, shape))
    print(format_report(results, device, shape, args.rows * args.seq_len))
    packing = packing_check(torch.device("cuda"))
    print(format_packing(packing))
    if args.json:
        payload = {
            "device": device,
            "shape": asdict(shape),
            "results": [asdict(r) for r in results],
            "packed_vs_alone": packing,
        }
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

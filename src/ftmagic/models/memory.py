"""Will it fit? Peak training memory per device, estimated from the model's shape and the run's
settings, before any weights load.

The peak of a training step is the model's state (weights, gradients, AdamW's two moments) plus
what the forward pass keeps for the backward pass (activations) plus the loss's logits:

- **weights**: every parameter at the model's dtype (QLoRA: the decoder's linear weights in 4 bits
  with their block scales). FSDP2 keeps ``1/N`` of them per device, plus the unsharded copies of
  the layers being computed (two decoder layers, prefetching) and of the root module (embeddings,
  final norm, output layer), which stays unsharded from forward to backward.
- **gradients** and **optimizer states**: the trainable parameters at their dtype, once and twice
  (AdamW's first and second moments), ``1/N`` under FSDP2. With one micro-batch per step, most
  gradients appear while activations are freed, so only the output layer's gradient counts toward
  the peak; with gradient accumulation they all do.
- **activations**: what a Llama-style decoder layer saves per token (the residual stream at its two
  norms, the attention inputs and output, the MLP's gate, up and product), in the compute dtype;
  LoRA adds the dropped-out inputs of its adapters. With activation checkpointing each layer keeps
  only its input, and one layer's activations are rebuilt at a time.
- **logits**: the full-vocabulary logits of every position of the micro-batch with their softmax
  and gradient; with the chunked loss (``loss_chunk_tokens``) only one chunk's, computed twice.

The per-token factors are counted from the tensors the layers save; ``benchmarks/memory_bench.py
estimate`` checks the total against the measured peak memory of real CPU training steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftmagic.config import RunConfig

GIB = 2**30
QLORA_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # 4-bit weights plus an fp32 scale per 64-weight block
# Bytes per logit at the loss: the logits (compute dtype), their fp32 copy, the log-softmax and its
# gradient, as measured for F.cross_entropy (benchmarks/memory_bench.py logits).
PLAIN_LOGIT_FP32_COPIES = 3
CHUNK_LOGIT_FP32_COPIES = 4  # forward and recomputed chunk, log-softmax, gradient
# Memory neither counted here nor the trainer's: allocator slack, kernels' workspaces.
OVERHEAD_FRACTION = 0.05


@dataclass(frozen=True)
class ModelShape:
    """What sizes a decoder-only transformer's memory (Llama, Mistral, Qwen, Gemma shapes)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    dtype_bytes: int = 4

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        """The shape of a Hugging Face model config (``AutoConfig``)."""
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", "float32"))
        return cls(
            hidden=hidden,
            layers=int(config.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=head_dim,
            intermediate=int(config.intermediate_size),
            vocab=int(config.vocab_size),
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            dtype_bytes=2 if ("16" in dtype) else 4,
        )

    def linear_shapes(self) -> list[tuple[int, int]]:
        """``(in, out)`` of each linear layer of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def layer_linear_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes())

    @property
    def layer_parameters(self) -> int:
        return self.layer_linear_parameters + 2 * self.hidden  # two RMSNorm weights

    @property
    def root_parameters(self) -> int:
        """Embeddings, the output layer (unless tied) and the final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.root_parameters

    def lora_parameters(self, rank: int) -> int:
        """Adapter parameters for ``all-linear`` at rank ``rank``: ``r * (in + out)`` each."""
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes())

    def activation_values_per_token(self, *, lora: bool, lora_rank: int = 16) -> float:
        """Values one decoder layer saves for backward per token (see the module docstring);
        counted with ``torch.autograd.graph.saved_tensors_hooks`` on a Llama layer."""
        h, i, q = self.hidden, self.intermediate, self.heads * self.head_dim
        norms = 2 * (2 * h) + h  # each RMSNorm: its input and the normalised value
        # q, and k and v repeated to q's heads (grouped-query attention), the attention output
        # and its copy into o_proj, the softmax statistics, the rotary cos and sin.
        attention = 5 * q + self.heads + 2 * self.head_dim
        mlp = 4 * i  # gate, SiLU(gate), up, and their product
        adapters = 0.0
        if lora:  # each adapter's dropped-out input with its mask, and its rank-r middle
            inputs = 3 * h + q + 2 * h + i
            adapters = 1.25 * inputs + len(self.linear_shapes()) * lora_rank
        return norms + attention + mlp + adapters


@dataclass(frozen=True)
class MemorySetup:
    """The run's choices that size its memory."""

    method: str = "full"  # full, lora or qlora
    lora_rank: int = 16
    devices: int = 1
    sharded: bool = False  # FSDP2 over ``devices``; otherwise each device holds everything
    micro_batch_tokens: int = 2048  # tokens of one forward pass
    row_tokens: int = 2048  # tokens of one row (the attention span of a packed row)
    varlen_attention: bool = False  # a variable-length kernel: no row-by-row attention mask
    micro_batches_per_step: int = 1
    compute_bytes: int = 4  # 2 under bf16/fp16 autocast
    gradient_checkpointing: bool = False
    loss_chunk_tokens: int = 0


@dataclass
class MemoryEstimate:
    """Estimated peak bytes per device, by part, and whether it fits ``device_bytes``."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int
    logits: int
    overhead: int
    setup: MemorySetup
    device: str = "this machine"
    device_bytes: int | None = None
    suggestions: list[str] = field(default_factory=list)

    @property
    def activations_used(self) -> int:
        checkpointed = self.setup.gradient_checkpointing
        return self.activations_checkpointed if checkpointed else self.activations

    @property
    def peak(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations_used
            + self.logits
            + self.overhead
        )

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.peak <= self.device_bytes

    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations_used,
            "logits": self.logits,
            "overhead": self.overhead,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.parts(),
            "activations_without_checkpointing": self.activations,
            "activations_with_checkpointing": self.activations_checkpointed,
            "peak": self.peak,
            "devices": self.setup.devices,
            "sharded": self.setup.sharded,
            "method": self.setup.method,
            "device": self.device,
            "device_bytes": self.device_bytes,
            "fits": self.fits,
            "suggestions": list(self.suggestions),
        }

    def summary(self) -> str:
        """One line: the peak per device, its parts, and the verdict."""
        where = (
            f"per device, FSDP2 over {self.setup.devices}"
            if self.setup.sharded
            else ("per device" if self.setup.devices > 1 else "")
        )
        parts = ", ".join(f"{name} {gib(value)}" for name, value in self.parts().items() if value)
        other = "without" if self.setup.gradient_checkpointing else "with"
        alternative = (
            self.activations if self.setup.gradient_checkpointing else self.activations_checkpointed
        )
        text = (
            f"Estimated peak memory{' ' + where if where else ''}: {gib(self.peak)} ({parts}; "
            f"activations {other} activation checkpointing: {gib(alternative)})"
        )
        if self.device_bytes is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            text += f"; {verdict} {self.device} ({gib(self.device_bytes)})"
        return text

    def lines(self) -> list[str]:
        return [self.summary(), *(f"To fit: {s}" for s in self.suggestions)]


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value < 10 * GIB else f"{value / GIB:.1f} GiB"


def estimate(
    shape: ModelShape,
    setup: MemorySetup,
    *,
    device: str = "this machine",
    device_bytes: int | None = None,
) -> MemoryEstimate:
    """Peak memory per device of training ``shape`` under ``setup``, with advice when it does
    not fit ``device_bytes``."""
    result = _estimate(shape, setup, device, device_bytes)
    if result.fits is False:
        result.suggestions = suggestions(shape, setup, device_bytes or 0)
    return result


def _estimate(
    shape: ModelShape, setup: MemorySetup, device: str, device_bytes: int | None
) -> MemoryEstimate:
    shards = setup.devices if setup.sharded else 1
    weights = _weight_bytes(shape, setup.method)
    trainable = (
        shape.parameters if setup.method == "full" else shape.lora_parameters(setup.lora_rank)
    )
    state_bytes = 4 if setup.method != "full" else shape.dtype_bytes  # adapters train in fp32
    weights_on_device = math.ceil(weights / shards)
    if shards > 1:
        unsharded = 2 * shape.layer_parameters + shape.root_parameters
        weights_on_device += unsharded * setup.compute_bytes
    gradients = math.ceil(trainable * state_bytes / shards)
    if setup.micro_batches_per_step == 1 and setup.method == "full":
        # Gradients appear as activations are freed: only the output layer's is there at the peak.
        gradients = math.ceil(shape.vocab * shape.hidden * state_bytes / shards)
    optimizer = math.ceil(2 * trainable * state_bytes / shards)
    tokens = setup.micro_batch_tokens
    per_layer = shape.activation_values_per_token(
        lora=setup.method != "full", lora_rank=setup.lora_rank
    )
    layer = math.ceil(tokens * per_layer * setup.compute_bytes) + _mask_bytes(setup)
    stream = tokens * shape.hidden * setup.compute_bytes  # one layer's input
    activations = shape.layers * layer + 2 * stream
    checkpointed = shape.layers * stream + layer + 2 * stream
    logits = _logit_bytes(shape, setup)
    state = weights_on_device + gradients + optimizer
    overhead = math.ceil(OVERHEAD_FRACTION * (state + max(activations, checkpointed) + logits))
    return MemoryEstimate(
        weights=weights_on_device,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        activations_checkpointed=checkpointed,
        logits=logits,
        overhead=overhead,
        setup=setup,
        device=device,
        device_bytes=device_bytes,
    )


def _mask_bytes(setup: MemorySetup) -> int:
    """SDPA's row-by-row attention mask for packed or padded rows, kept by every layer."""
    if setup.varlen_attention:
        return 0
    rows = max(1, setup.micro_batch_tokens // max(1, setup.row_tokens))
    return rows * setup.row_tokens**2 * setup.compute_bytes


def _weight_bytes(shape: ModelShape, method: str) -> int:
    if method != "qlora":
        return shape.parameters * shape.dtype_bytes
    linear = shape.layers * shape.layer_linear_parameters
    rest = shape.parameters - linear
    return math.ceil(linear * QLORA_BYTES_PER_WEIGHT + rest * shape.dtype_bytes)


def _logit_bytes(shape: ModelShape, setup: MemorySetup) -> int:
    if setup.loss_chunk_tokens:
        positions = min(setup.loss_chunk_tokens, setup.micro_batch_tokens)
        return positions * shape.vocab * 4 * CHUNK_LOGIT_FP32_COPIES
    per_logit = setup.compute_bytes + 4 * PLAIN_LOGIT_FP32_COPIES
    if setup.compute_bytes == 4:
        per_logit = 4 * PLAIN_LOGIT_FP32_COPIES  # the fp32 copy is the logits themselves
    return setup.micro_batch_tokens * shape.vocab * per_logit


def suggestions(shape: ModelShape, setup: MemorySetup, device_bytes: int) -> list[str]:
    """Changes to ``setup``, one at a time and then together, that make the run fit."""
    candidates: list[tuple[str, MemorySetup]] = []
    if not setup.gradient_checkpointing:
        candidates.append(
            ("gradient_checkpointing: true", replace(setup, gradient_checkpointing=True))
        )
    if not setup.loss_chunk_tokens:
        candidates.append(("loss_chunk_tokens: 1024", replace(setup, loss_chunk_tokens=1024)))
    tokens = setup.micro_batch_tokens // 2
    while tokens >= 256:
        candidates.append(
            (f"micro_batch_tokens: {tokens}", replace(setup, micro_batch_tokens=tokens))
        )
        tokens //= 2
    if setup.method == "full":
        candidates.append(("method: lora", replace(setup, method="lora")))
    if setup.method != "qlora":
        candidates.append(("method: qlora (needs a CUDA GPU)", replace(setup, method="qlora")))
    for devices in (2, 4, 8):
        if devices > setup.devices:
            more = replace(setup, devices=devices, sharded=True)
            candidates.append((f"{devices} GPUs with data_parallel: fsdp2", more))
    found = [text for text, changed in candidates if _fits(shape, changed, device_bytes)]
    if found:
        return found[:4]
    together = replace(
        setup,
        gradient_checkpointing=True,
        loss_chunk_tokens=setup.loss_chunk_tokens or 1024,
        micro_batch_tokens=min(setup.micro_batch_tokens, 1024),
        method="qlora" if setup.method != "full" else "lora",
    )
    if _fits(shape, together, device_bytes):
        return [
            "gradient_checkpointing: true, loss_chunk_tokens: 1024, micro_batch_tokens: 1024 "
            f"and method: {together.method} together"
        ]
    return ["a device with more memory, or a smaller model"]


def _fits(shape: ModelShape, setup: MemorySetup, device_bytes: int) -> bool:
    return _estimate(shape, setup, "", device_bytes).peak <= device_bytes


# --- from a run config ------------------------------------------------------------------------


def setup_for(config: RunConfig, row_tokens: int, *, cuda: bool) -> MemorySetup:
    """The memory-relevant settings of ``config``; ``row_tokens`` is the plan's row width."""
    devices = config.num_processes if config.backend in ("torchrun", "ray") else 1
    sharded = devices > 1 and (
        config.data_parallel == "fsdp2" or (config.data_parallel == "auto" and cuda)
    )
    bf16 = config.precision in ("bf16", "fp16") or (config.precision == "auto" and cuda)
    return MemorySetup(
        method="qlora" if config.load_in_4bit else config.method,
        lora_rank=config.lora_rank,
        devices=devices,
        sharded=sharded,
        micro_batch_tokens=max(config.micro_batch_tokens, row_tokens),
        row_tokens=row_tokens,
        varlen_attention=varlen_attention(config, cuda=cuda),
        micro_batches_per_step=config.micro_batches_per_step(),
        compute_bytes=2 if bf16 else 4,
        gradient_checkpointing=config.gradient_checkpointing,
        loss_chunk_tokens=config.loss_chunk_tokens,
    )


def varlen_attention(config: RunConfig, *, cuda: bool) -> bool:
    """Whether packed rows run a variable-length kernel (no per-row attention mask)."""
    choice = config.attn_implementation
    if choice == "auto":
        return cuda and config.packing
    return choice in ("flash_attention_2", "flex_attention") and config.packing


def device_memory() -> tuple[str, int | None]:
    """The training device's name and memory: the first GPU's, else this machine's RAM."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.name, int(props.total_memory)
    import psutil

    return "this machine's memory", int(psutil.virtual_memory().total)


def estimate_for_run(config: RunConfig, row_tokens: int) -> MemoryEstimate:
    """The estimate for ``config`` on this machine's training device (model config only: no
    weights load)."""
    import torch
    from transformers import AutoConfig

    from ftmagic.catalog import model_path

    hf_config = AutoConfig.from_pretrained(model_path(config.model), trust_remote_code=False)
    shape = ModelShape.from_hf_config(hf_config)
    name, total = device_memory()
    setup = setup_for(config, row_tokens, cuda=torch.cuda.is_available())
    return estimate(shape, setup, device=name, device_bytes=total)

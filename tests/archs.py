"""Tiny random-init models of the popular architectures, each with its model's published chat
template and special tokens, for the architecture matrix and the reasoning/tool mask tests.

A model is built from the real transformers configuration class of its architecture at a tiny size
(2 layers, width 64, the built-in tiny tokenizer's 2k vocabulary plus the family's special tokens)
and saved with ``save_pretrained``, so ftmagic loads, trains, registers and serves it as it would
the real model. The templates are the files in ``tests/fixtures/templates`` (see their README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

LLAMA3 = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
)
CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>")
QWEN3 = (*CHATML, "<think>", "</think>", "<tool_response>", "</tool_response>")
GEMMA = ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>")
COMMAND_R = (
    "<BOS_TOKEN>",
    "<PAD>",
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
    "<|START_THINKING|>",
    "<|END_THINKING|>",
    "<|START_ACTION|>",
    "<|END_ACTION|>",
    "<|START_TOOL_RESULT|>",
    "<|END_TOOL_RESULT|>",
)
DEEPSEEK = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
)


@dataclass(frozen=True)
class Family:
    """A model family: its template file, special tokens, and the architecture to build."""

    name: str
    template: str
    specials: tuple[str, ...]
    eos: str
    pad: str
    bos: str | None = None
    config_class: str = "LlamaConfig"
    config: dict[str, Any] = field(default_factory=dict)
    # The generation config's stop tokens as the real model ships them (None: the tokenizer's
    # eos only, which for Gemma 2 is <eos>, not the <end_of_turn> that closes a turn).
    stop: tuple[str, ...] | None = None
    lora_targets: tuple[str, ...] = ("all-linear",)


HEAD16 = {"head_dim": 16}
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llama3",
            "llama3.2.jinja",
            LLAMA3,
            "<|eot_id|>",
            "<|end_of_text|>",
            bos="<|begin_of_text|>",
            stop=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        ),
        Family(
            "qwen2.5",
            "qwen2.5.jinja",
            CHATML,
            "<|im_end|>",
            "<|endoftext|>",
            config_class="Qwen2Config",
            stop=("<|im_end|>", "<|endoftext|>"),
        ),
        Family(
            "qwen3",
            "qwen3.jinja",
            QWEN3,
            "<|im_end|>",
            "<|endoftext|>",
            config_class="Qwen3Config",
            config=HEAD16,
            stop=("<|im_end|>", "<|endoftext|>"),
        ),
        Family(
            "gemma2",
            "gemma2.jinja",
            GEMMA,
            "<eos>",
            "<pad>",
            bos="<bos>",
            config_class="Gemma2Config",
            config={**HEAD16, "query_pre_attn_scalar": 16, "sliding_window": 24},
        ),
        Family(
            "gemma3",
            "gemma3.jinja",
            GEMMA,
            "<eos>",
            "<pad>",
            bos="<bos>",
            config_class="Gemma3TextConfig",
            config={**HEAD16, "query_pre_attn_scalar": 16, "sliding_window": 24},
            stop=("<eos>", "<end_of_turn>"),
        ),
        Family(
            "phi4",
            "phi4.jinja",
            (*CHATML[:3], "<|im_sep|>"),
            "<|im_end|>",
            "<|endoftext|>",
            config_class="Phi3Config",
            stop=("<|im_end|>", "<|endoftext|>"),
            lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        ),
        Family(
            "mistral",
            "mistral.jinja",
            ("<s>", "</s>", "<unk>"),
            "</s>",
            "<unk>",
            bos="<s>",
            config_class="MistralConfig",
            config={"sliding_window": 24},
        ),
        Family(
            "granite",
            "granite3.jinja",
            ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
            "<|end_of_text|>",
            "<|end_of_text|>",
            bos="<|end_of_text|>",
            config_class="GraniteConfig",
        ),
        Family(
            "olmo2",
            "olmo2.jinja",
            ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"),
            "<|endoftext|>",
            "<|pad|>",
            bos="<|endoftext|>",
            config_class="Olmo2Config",
        ),
        Family(
            "smollm3",
            "smollm3.jinja",
            ("<|im_start|>", "<|im_end|>", "<|end_of_text|>", "<think>", "</think>"),
            "<|im_end|>",
            "<|end_of_text|>",
            config_class="SmolLM3Config",
            config={"no_rope_layer_interval": 2},
        ),
        Family(
            "qwen3-moe",
            "qwen3.jinja",
            QWEN3,
            "<|im_end|>",
            "<|endoftext|>",
            config_class="Qwen3MoeConfig",
            config={
                **HEAD16,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 32,
                "norm_topk_prob": True,
            },
            stop=("<|im_end|>", "<|endoftext|>"),
            # all-linear reaches the fused expert weights, which peft wraps as parameters that
            # take no LoRA dropout (and the router is not a linear layer): attention only.
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        ),
    )
}
"""The architecture matrix (a constant)."""

# Families used only for their templates (mask tests), with the published tokens.
TEMPLATE_ONLY: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen3-thinking", "qwen3-thinking.jinja", QWEN3, "<|im_end|>", "<|endoftext|>"),
        Family(
            "r1-distill",
            "deepseek-r1-distill.jinja",
            DEEPSEEK,
            "<｜end▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            bos="<｜begin▁of▁sentence｜>",
        ),
        Family(
            "command-r7b",
            "command-r7b.jinja",
            COMMAND_R,
            "<|END_OF_TURN_TOKEN|>",
            "<PAD>",
            bos="<BOS_TOKEN>",
        ),
    )
}


def family(name: str) -> Family:
    return FAMILIES.get(name) or TEMPLATE_ONLY[name]


def template(name: str) -> str:
    return (TEMPLATES / family(name).template).read_text(encoding="utf-8")


def tokenizer_for(name: str) -> Any:
    """The built-in tiny tokenizer with the family's special tokens, eos and chat template."""
    from transformers import AutoTokenizer

    from ftmagic.catalog import model_path

    spec = family(name)
    tokenizer = AutoTokenizer.from_pretrained(model_path("ftmagic/tiny-random-chat"))
    special: dict[str, Any] = {
        "additional_special_tokens": list(spec.specials),
        "eos_token": spec.eos,
        "pad_token": spec.pad,
    }
    if spec.bos:
        special["bos_token"] = spec.bos
    tokenizer.add_special_tokens(special)
    tokenizer.chat_template = template(name)
    _encode_like_the_family(tokenizer, spec)
    return tokenizer


def _encode_like_the_family(tokenizer: Any, spec: Family) -> None:
    """Plain encoding adds the family's BOS when its template starts with one (Llama, Gemma,
    Mistral, OLMo 2, DeepSeek, Command R), and nothing otherwise (Qwen, Phi-4, SmolLM3, Granite),
    as the real tokenizers do; the serving pipeline encodes prompts that way."""
    from tokenizers import processors

    backend = tokenizer.backend_tokenizer
    if spec.bos and "bos_token" in template(spec.name):
        bos_id = tokenizer.convert_tokens_to_ids(spec.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, bos_id)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)


def build_model(name: str, tokenizer: Any, *, width: int = 64, seed: int = 0) -> Any:
    """A seeded random-init model of ``name``'s architecture at a tiny size."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    spec = FAMILIES[name]
    config_class = getattr(transformers, spec.config_class)
    ids = tokenizer.convert_tokens_to_ids
    stop = [ids(t) for t in spec.stop] if spec.stop else [tokenizer.eos_token_id]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop[0] if len(stop) == 1 else stop,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **spec.config,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def save_family_model(name: str, folder: Path) -> Path:
    """Write ``name``'s tiny model and tokenizer into ``folder`` (save_pretrained, safetensors)."""
    tokenizer = tokenizer_for(name)
    build_model(name, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

"""Built-in tiny models: real Llama-architecture checkpoints small enough to train on a laptop CPU.

No machine that runs ftmagic's tests or demos can download weights, yet every code path (tokenizer,
chat template, ``AutoModelForCausalLM``, LoRA, MLflow logging) should run exactly as it does for a
real model. So each tiny model is a random-init ``LlamaForCausalLM`` plus a byte-level BPE tokenizer
trained on the bundled corpus and the bundled training data, with a real chat template, saved with
``save_pretrained``. It is built on first use into ``$FTMAGIC_CACHE/models/<name>-v2``,
byte-for-byte the same on every build.

Two choices let a model this small learn, within minutes on a CPU, to copy words it has never seen
(what the NER tutorial asks of it):

- The tokenizer keeps every space as a token of its own, so a word is the same tokens wherever it
  stands (after a space in a sentence, after a quote in a JSON answer). Byte-level BPE otherwise
  splits ``" word"`` and ``"word"`` differently; a pretrained model knows both spell one word, a
  random-init one would have to learn that for every token before it could copy.
- Input and output embeddings are tied (as in Llama 3.2 1B), so one learned map copies any token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

VERSION = "v2"
PREFIX = "ftmagic/"

# Meta-Llama-3-8B-Instruct's template, as published in its tokenizer_config.json.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Plain ChatML, the format of Qwen and SmolLM2 (without their default system prompts).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """What makes one tiny model: its template and special tokens, and its size."""

    name: str
    template_family: str
    chat_template: str | None
    special_tokens: tuple[str, ...]
    bos_token: str
    eos_token: str
    pad_token: str
    add_bos: bool
    extra_eos: tuple[str, ...] = ()
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    context_length: int = 2048
    tie_embeddings: bool = True
    seed: int = 1234
    pretrained: bool = False  # weights ship in resources/tiny_models (else random-init)


LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _family_specs(prefix: str, **size: Any) -> tuple[TinySpec, ...]:
    """The three template families (Llama 3 chat, ChatML chat, base) at one size."""
    return (
        TinySpec(
            name=f"{PREFIX}{prefix}chat",
            template_family="llama3",
            chat_template=LLAMA3_TEMPLATE,
            special_tokens=LLAMA3_SPECIALS,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|end_of_text|>",
            add_bos=True,
            extra_eos=("<|end_of_text|>",),
            **size,
        ),
        TinySpec(
            name=f"{PREFIX}{prefix}chatml",
            template_family="chatml",
            chat_template=CHATML_TEMPLATE,
            special_tokens=CHATML_SPECIALS,
            bos_token="<|endoftext|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            add_bos=False,
            extra_eos=("<|endoftext|>",),
            **size,
        ),
        TinySpec(
            name=f"{PREFIX}{prefix}base",
            template_family="none",
            chat_template=None,
            special_tokens=LLAMA3_SPECIALS,
            bos_token="<|begin_of_text|>",
            eos_token="<|end_of_text|>",
            pad_token="<|end_of_text|>",
            add_bos=True,
            **size,
        ),
    )


PRETRAINED_SIZE: dict[str, Any] = {
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_layers": 4,
    "num_heads": 6,
    "num_kv_heads": 2,
    "pretrained": True,
}
PRETRAINED: dict[str, TinySpec] = {s.name: s for s in _family_specs("tiny-", **PRETRAINED_SIZE)}
"""The pretrained tiny models, shipped in the package (``scripts/pretrain_tiny.py`` makes them)."""
RANDOM_INIT: dict[str, TinySpec] = {s.name: s for s in _family_specs("tiny-random-")}
"""Random-init tiny models, built on first use: fresh and fast, for tests."""
TINY_MODELS: dict[str, TinySpec] = {**PRETRAINED, **RANDOM_INIT}
"""The built-in tiny models (a constant: never mutated)."""


def param_count(spec: TinySpec) -> int:
    """Parameters of the tiny model (grouped-query attention)."""
    head_dim = spec.hidden_size // spec.num_heads
    attention = 2 * spec.hidden_size * spec.hidden_size
    attention += 2 * spec.hidden_size * spec.num_kv_heads * head_dim
    mlp = 3 * spec.hidden_size * spec.intermediate_size
    per_layer = attention + mlp + 2 * spec.hidden_size
    embeddings = (1 if spec.tie_embeddings else 2) * spec.vocab_size * spec.hidden_size
    return embeddings + spec.num_layers * per_layer + spec.hidden_size


def is_tiny(name: str) -> bool:
    return name in TINY_MODELS


def cache_dir() -> Path:
    """``$FTMAGIC_CACHE`` or ``~/.cache/ftmagic``."""
    return Path(os.environ.get("FTMAGIC_CACHE") or Path.home() / ".cache" / "ftmagic")


def tiny_model_dir(name: str) -> Path:
    return cache_dir() / "models" / f"{name.removeprefix(PREFIX)}-{VERSION}"


def shipped_model_dir(name: str) -> Path:
    """The package folder of pretrained tiny model ``name``."""
    from ftmagic.errors import ModelError

    folder = Path(str(resources.files("ftmagic.resources"))) / "tiny_models"
    folder /= name.removeprefix(PREFIX)
    if not (folder / "config.json").exists():
        raise ModelError(
            f"model '{name}': its weights are missing from the package ({folder}). Fix: "
            "reinstall ftmagic, or rebuild them with python scripts/pretrain_tiny.py"
        )
    return folder


def ensure_tiny_model(name: str) -> Path:
    """The folder of tiny model ``name``, building it first if it is not in the cache yet.

    The build happens in a temporary folder that is renamed into place, so concurrent first uses
    (several test processes) never see a half-written model.
    """
    spec = TINY_MODELS[name]
    if spec.pretrained:
        return shipped_model_dir(name)
    final = tiny_model_dir(name)
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        build_tiny_model(spec, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tiny_model(spec: TinySpec, out: Path) -> None:
    """Write tokenizer and random-init weights for ``spec`` into the folder ``out``."""
    tokenizer = build_tokenizer(spec)
    tokenizer.save_pretrained(str(out))
    model = build_model(spec, tokenizer)
    model.save_pretrained(str(out))


TRAINING_TEXTS = ("ner", "chat")
"""Bundled datasets whose train split's messages the tokenizer also learns from (never eval or
test)."""


def corpus_text() -> str:
    """The tokenizer's training text: the bundled corpus, then the messages of the bundled
    training splits, so that domain words (drug-name syllables, shop items) get tokens of their
    own, as they would in a real model's vocabulary."""
    from ftmagic import examples

    parts = [resources.files("ftmagic.resources").joinpath("tiny_corpus.txt").read_text("utf-8")]
    for dataset in TRAINING_TEXTS:
        for record in examples.load(dataset, "train"):
            parts.extend(m["content"] for m in record["messages"])
    return "\n\n".join(parts)


def build_tokenizer(spec: TinySpec) -> Any:
    """A byte-level BPE tokenizer trained on the bundled corpus, wrapped for transformers."""
    return wrap_tokenizer(train_bpe(corpus_text().split("\n\n"), spec), spec)


def train_bpe(texts: list[str], spec: TinySpec) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` of ``spec.vocab_size`` tokens, from ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="isolated"),  # a word is the same tokens anywhere
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap_tokenizer(tok: Any, spec: TinySpec) -> Any:
    """``tok`` as a transformers tokenizer with ``spec``'s special tokens and chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if spec.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos_token} $A",
            pair=f"{spec.bos_token} $A {spec.bos_token} $B",
            special_tokens=[(spec.bos_token, tok.token_to_id(spec.bos_token))],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        model_max_length=spec.context_length,
        clean_up_tokenization_spaces=False,
    )
    if spec.chat_template is not None:
        wrapped.chat_template = spec.chat_template
    return wrapped


SHARED_SPECIALS = (*LLAMA3_SPECIALS, *CHATML_SPECIALS)
"""The pretrained models share one vocabulary, so one pretraining serves all three templates."""


def train_shared_tokenizer(texts: list[str], out: Path) -> None:
    """Train the pretrained models' tokenizer on ``texts``; save it as ``out``, a tokenizer.json."""
    spec = next(iter(PRETRAINED.values()))
    tok = train_bpe(texts, dataclasses.replace(spec, special_tokens=SHARED_SPECIALS))
    tok.save(str(out))


def write_tokenizer_files(spec: TinySpec, tokenizer_json: Path, folder: Path) -> Any:
    """Save the shared tokenizer wrapped for ``spec`` into model ``folder``, and point the folder's
    config and generation config at ``spec``'s special tokens. Returns the tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = wrap_tokenizer(Tokenizer.from_file(str(tokenizer_json)), spec)
    tokenizer.save_pretrained(str(folder))
    eos = [tokenizer.convert_tokens_to_ids(t) for t in (spec.eos_token, *spec.extra_eos)]
    ids = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}
    for file, eos_value in (
        ("config.json", eos[0] if len(eos) == 1 else eos),
        ("generation_config.json", eos),
    ):
        path = folder / file
        if path.exists():
            data = json.loads(path.read_text("utf-8"))
            data.update(ids, eos_token_id=eos_value)
            path.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    return tokenizer


def build_pretrained_init(tokenizer_json: Path, out: Path) -> None:
    """The random-init starting point of pretraining: tiny-base's size and tokenizer."""
    spec = PRETRAINED[f"{PREFIX}tiny-base"]
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer_files(spec, tokenizer_json, out)
    build_model(spec, tokenizer).save_pretrained(str(out))


def build_model(spec: TinySpec, tokenizer: Any) -> Any:
    """A seeded random-init ``LlamaForCausalLM``; the caller's RNG state is left untouched."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in (spec.eos_token, *spec.extra_eos)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec.tie_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    with contextlib.suppress(AttributeError):
        model.config.name_or_path = spec.name
    return model

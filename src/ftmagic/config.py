"""One typed run configuration, the same in YAML, keyword arguments, the CLI and the panel.

The field names and defaults of the hosted product come first; the fields we need because we train
the model ourselves follow. Each field's help text lives in its metadata and is reused by the CLI's
``--help``, the magic's help and the panel's tooltips.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ftmagic.errors import ConfigError

TASK_TYPES = ("CHAT_COMPLETION", "INSTRUCTION_FINETUNE", "CONTINUED_PRETRAIN")
METHODS = ("full", "lora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "linear", "constant")
BACKENDS = ("inkernel", "local", "torchrun", "ray")
CHAT_TURNS = ("all", "last", "split")
DATA_PARALLEL = ("auto", "ddp", "fsdp2")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flex_attention", "flash_attention_2")
DURATION_UNITS = {"ep": "epochs", "tok": "tokens", "ba": "batches (optimizer steps)"}
MAX_TOTAL_TOKENS = 10_000_000_000
DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_response", "text")
RECORD_FIELDS = ("messages", "prompt", "response", "completion", "text", "system")


def _field(default: Any, help: str, *, group: str = "run", **kw: Any) -> Any:
    meta = {"help": help, "group": group}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class Duration:
    """A training length: ``3ep`` (epochs), ``1_000_000tok`` (tokens) or ``200ba`` (batches)."""

    value: float
    unit: Literal["ep", "tok", "ba"]

    @classmethod
    def parse(cls, text: str | int | float, *, field_name: str = "training_duration") -> Duration:
        """Parse ``3ep``, ``0.5ep``, ``1_000_000tok`` or ``200ba``.

        >>> Duration.parse("1_000_000tok")
        Duration(value=1000000.0, unit='tok')
        """
        match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*(ep|tok|ba)\s*", str(text))
        if not match:
            raise ConfigError(
                field_name,
                "is not a duration",
                value=text,
                allowed="a number followed by ep, tok or ba, e.g. 3ep, 1_000_000tok, 200ba",
            )
        value = float(match.group(1).replace("_", ""))
        unit = match.group(2)
        if value <= 0:
            raise ConfigError(field_name, "must be positive", value=text)
        if unit in ("tok", "ba") and value != int(value):
            raise ConfigError(field_name, f"{unit} durations are whole numbers", value=text)
        return cls(value, unit)  # type: ignore[arg-type]

    def __str__(self) -> str:
        number = int(self.value) if self.value == int(self.value) else self.value
        return f"{number}{self.unit}"


@dataclass(frozen=True)
class DatasetStats:
    """What the trainer needs to know about the data to size a run."""

    num_examples: int
    num_tokens: int
    num_trained_tokens: int


@dataclass
class RunConfig:
    """A fine-tuning run: what to train, on which data, for how long and where."""

    # --- fields of the hosted product, with its names and defaults ---
    model: str = _field(
        "", "Model to fine-tune: a catalog name, a Hugging Face id or a local folder."
    )
    train_data_path: str = _field(
        "",
        "Training data: a JSONL/Parquet/CSV file or fsspec URL, a Delta table folder, a "
        "datasets.save_to_disk folder, or (continued pretraining) a folder of .txt files.",
        group="data",
    )
    register_to: str | None = _field(
        None,
        "Register the final model in MLflow: 'catalog.schema' names it after the run, "
        "'catalog.schema.name' sets the name.",
    )
    task_type: str = _field(
        "CHAT_COMPLETION",
        "CHAT_COMPLETION ({'messages': [...]}), INSTRUCTION_FINETUNE ({'prompt', 'response'}) or "
        "CONTINUED_PRETRAIN (a folder of .txt files).",
        group="data",
    )
    eval_data_path: str | None = _field(
        None, "Eval data in the same format as the training data.", group="data"
    )
    eval_prompts: list[Any] = _field(
        [],
        "Prompts to generate from at every checkpoint, to watch the model learn: strings, or "
        "message lists like [{role: user, content: ...}]. When every training example has the "
        "same system prompt, string prompts get it too.",
        group="data",
    )
    data_format: str = _field(
        "auto",
        "Shape of the data records: auto (detect), messages, sharegpt (conversations of "
        "from/value), alpaca (instruction/input/output), prompt_response or text.",
        group="data",
    )
    columns: dict[str, str] | None = _field(
        None,
        "Rename source fields to the ones ftmagic reads, e.g. {prompt: question, response: "
        "answer} or {messages: dialog}.",
        group="data",
    )
    prompt_template: str | None = _field(
        None,
        "INSTRUCTION_FINETUNE: how the prompt is written before the response, with {prompt} "
        "where it goes, e.g. '{prompt}\\n\\n### Answer:\\n'. Empty: the prompt as it is.",
        group="data",
    )
    custom_weights_path: str | None = _field(
        None,
        "Start from these weights instead of the base model's: a checkpoint folder of an earlier "
        "run, 'runs:/RUN_ID' (its last checkpoint) or 'models:/name/version'.",
    )
    training_duration: str = _field(
        "1ep", "How long to train: 3ep (epochs), 1_000_000tok (tokens) or 200ba (optimizer steps)."
    )
    learning_rate: float | None = _field(
        None, "Peak learning rate. Empty: 2e-4 for LoRA, 1e-5 for full fine-tuning.", group="optim"
    )
    context_length: int | None = _field(
        None,
        "Longest sequence in tokens; longer examples are truncated. Empty: the model's own.",
        group="data",
    )
    experiment_path: str | None = _field(
        None, "MLflow experiment that holds the run. Empty: 'ftmagic'."
    )
    validate_inputs: bool = _field(True, "Validate the data before training starts.", group="data")
    chat_turns: str = _field(
        "all",
        "Chat data: all (train every assistant turn as the template renders the conversation; "
        "the last keeps its reasoning), last (only the last assistant turn) or split (one "
        "example per assistant turn, so every turn's reasoning is trained).",
        group="data",
    )
    fold_system_prompt: bool = _field(
        False,
        "Chat data: merge the system message into the first user message (for templates that "
        "reject system messages, like Gemma 2).",
        group="data",
    )

    # --- fields we need because we train the model ourselves ---
    method: str = _field("full", "full (every weight) or lora (low-rank adapters).", group="method")
    lora_rank: int = _field(16, "LoRA rank r.", group="method")
    lora_alpha: int = _field(32, "LoRA scaling alpha.", group="method")
    lora_dropout: float = _field(0.05, "Dropout on the LoRA branch.", group="method")
    lora_target_modules: list[str] = _field(
        ["all-linear"],
        "Modules that get adapters: 'all-linear' or names like q_proj.",
        group="method",
    )
    merge_lora: bool = _field(
        True,
        "At the end, merge LoRA into the base weights and register a plain model "
        "(false: register the adapter with its base).",
        group="method",
    )
    load_in_4bit: bool = _field(
        False,
        "QLoRA: hold the base model's linear weights in 4 bits (NF4, bitsandbytes) and train the "
        "LoRA adapters on them. Needs method lora and a CUDA GPU (pip install 'ftmagic[gpu]').",
        group="method",
    )
    seed: int = _field(17, "Random seed for init, data order and dropout.", group="optim")
    tokens_per_batch: int = _field(
        4096, "Real (non-pad) tokens per optimizer step, about.", group="optim"
    )
    micro_batch_tokens: int = _field(
        2048,
        "Tokens per forward pass; steps are split into micro-batches (gradient accumulation).",
        group="optim",
    )
    precision: str = _field(
        "auto", "auto (bf16 on GPUs that support it, else fp32), bf16, fp16 or fp32.", group="optim"
    )
    gradient_checkpointing: bool = _field(
        False, "Recompute activations in backward: less memory, slower.", group="optim"
    )
    loss_chunk_tokens: int = _field(
        1024,
        "Tokens whose full-vocabulary logits exist at once when computing the loss (0: all of a "
        "micro-batch at once). Smaller saves memory on large vocabularies; the loss is the same.",
        group="optim",
    )
    attn_implementation: str = _field(
        "auto",
        "auto (a variable-length kernel for packed rows on GPUs: flash_attention_2 when installed, "
        "else flex_attention; sdpa on CPUs), sdpa, flex_attention or flash_attention_2.",
        group="optim",
    )
    packing: bool = _field(
        True,
        "Pack examples into rows without padding; each example only attends to itself.",
        group="optim",
    )
    pack_length: int | None = _field(
        None,
        "Row length for packing. Empty: the shortest length from the longest example up "
        "that packs with under 1.5% padding (keeps attention cheap without a varlen kernel).",
        group="optim",
    )
    warmup_steps: int | None = _field(
        None, "Linear warmup steps. Empty: 5% of the steps.", group="optim"
    )
    lr_schedule: str = _field(
        "cosine", "Decay after warmup: cosine, linear or constant.", group="optim"
    )
    weight_decay: float = _field(0.0, "AdamW weight decay.", group="optim")
    max_grad_norm: float = _field(
        1.0, "Clip the gradient norm to this (0: no clipping).", group="optim"
    )
    checkpoint_interval: str = _field(
        "1ep",
        "Checkpoint (with eval loss and eval-prompt generations) every 1ep, 500_000tok or 50ba; "
        "a final checkpoint is always written.",
        group="optim",
    )
    max_new_tokens: int = _field(64, "Tokens to generate for each eval prompt.", group="data")
    eval_metric: str | None = _field(
        None,
        "Score every checkpoint on greedy generations for a sample of eval_data_path: "
        "exact_match, json_list_f1, or (inkernel backend) a Python function "
        "f(predictions, references) -> float, higher is better. Logged as eval/<name>.",
        group="data",
    )
    eval_metric_samples: int = _field(
        16, "Eval examples (a seeded sample of eval_data_path) eval_metric scores.", group="data"
    )
    backend: str = _field(
        "inkernel",
        "Where to train: inkernel (a thread of this kernel), local (a separate process that "
        "survives the kernel), torchrun (several processes) or ray (a Ray cluster).",
        group="backend",
    )
    num_processes: int = _field(
        1, "Processes (torchrun) or workers (ray) to train with.", group="backend"
    )
    data_parallel: str = _field(
        "auto",
        "How several processes share the model: auto (fsdp2 on GPUs, ddp on CPUs), ddp (a full "
        "copy per process) or fsdp2 (weights, gradients and optimizer state sharded).",
        group="backend",
    )
    ray_address: str | None = _field(
        None,
        "Ray cluster address (ray://... or http://...:8265). Empty: RAY_ADDRESS.",
        group="backend",
    )
    verbose: bool = _field(
        False,
        "Show third-party progress bars, warnings and logs (transformers, mlflow) in the notebook "
        "or terminal. Off: they go to Python logging only; ftmagic's own messages always show.",
        group="backend",
    )

    def __post_init__(self) -> None:
        self._check()

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's help text, in declaration order."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> RunConfig:
        """Build a config from a mapping, rejecting unknown keys with a "did you mean"."""
        if not isinstance(data, dict):
            raise ConfigError("<config>", "must be a mapping of field: value", value=data)
        names = cls.field_names()
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else "see RunConfig.help() for fields"
                where = f" (in {source})" if source else ""
                raise ConfigError(str(key), f"is not a config field{where}", suggestion=hint)
        return cls(**data)

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> RunConfig:
        """Parse YAML text (safe loader only)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err)
            raise ConfigError("<yaml>", f"is not valid YAML{where}: {problem}") from None
        return cls.from_dict(data or {}, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError("<file>", f"cannot read {path}: {err.strerror}") from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def coerce(
        cls, config: RunConfig | dict[str, Any] | str | Path | None = None, **kwargs: Any
    ) -> RunConfig:
        """Accept a config, a dict, a YAML file path, or keyword arguments (which override)."""
        if config is None:
            base: dict[str, Any] = {}
        elif isinstance(config, RunConfig):
            base = config.to_dict()
        elif isinstance(config, dict):
            base = dict(config)
        else:
            base = cls.from_file(config).to_dict()
        base.update(kwargs)
        return cls.from_dict(base)

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    # --- output -----------------------------------------------------------------------------
    def to_dict(self, *, only_changed: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if only_changed:
            defaults = RunConfig.__new__(RunConfig)
            for f in dataclasses.fields(self):
                default = (
                    f.default_factory()
                    if f.default_factory is not dataclasses.MISSING
                    else f.default
                )
                setattr(defaults, f.name, default)
            data = {
                k: v
                for k, v in data.items()
                if v != getattr(defaults, k) or k in ("model", "train_data_path")
            }
        return data

    def to_yaml(self, *, only_changed: bool = False) -> str:
        return yaml.safe_dump(
            self.to_dict(only_changed=only_changed), sort_keys=False, allow_unicode=True
        )

    # --- derived values ---------------------------------------------------------------------
    @property
    def duration(self) -> Duration:
        return Duration.parse(self.training_duration)

    @property
    def checkpoint_every(self) -> Duration:
        return Duration.parse(self.checkpoint_interval, field_name="checkpoint_interval")

    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.method == "lora" else 1e-5

    def micro_batches_per_step(self) -> int:
        """Forward passes per optimizer step (gradient-accumulation steps)."""
        return max(1, math.ceil(self.tokens_per_batch / self.micro_batch_tokens))

    def steps_per_epoch(self, stats: DatasetStats) -> int:
        return max(1, math.ceil(stats.num_tokens / self.tokens_per_batch))

    def total_steps(self, stats: DatasetStats) -> int:
        """Optimizer steps for ``training_duration`` on data with these stats (an estimate for
        ``ep`` and ``tok`` durations: packing decides the exact count)."""
        duration = self.duration
        if duration.unit == "ba":
            return int(duration.value)
        if duration.unit == "tok":
            return max(1, math.ceil(duration.value / self.tokens_per_batch))
        return max(1, math.ceil(duration.value * self.steps_per_epoch(stats)))

    def total_tokens(self, stats: DatasetStats) -> int:
        """Tokens the run will train on, about."""
        duration = self.duration
        if duration.unit == "tok":
            return int(duration.value)
        if duration.unit == "ep":
            return int(duration.value * stats.num_tokens)
        return int(duration.value) * self.tokens_per_batch

    def resolved_warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return max(0, round(0.05 * total_steps))

    def experiment(self) -> str:
        return self.experiment_path or "ftmagic"

    # --- checks -----------------------------------------------------------------------------
    def _check(self) -> None:
        if not isinstance(self.model, str):
            raise ConfigError("model", "must be a string", value=self.model)
        if not isinstance(self.train_data_path, str):
            raise ConfigError("train_data_path", "must be a string", value=self.train_data_path)
        self.task_type = _choice("task_type", self.task_type, TASK_TYPES, upper=True)
        self.method = _choice("method", self.method, METHODS)
        self.precision = _choice("precision", self.precision, PRECISIONS)
        self.lr_schedule = _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        self.backend = _choice("backend", self.backend, BACKENDS)
        self.chat_turns = _choice("chat_turns", self.chat_turns, CHAT_TURNS)
        self.data_parallel = _choice("data_parallel", self.data_parallel, DATA_PARALLEL)
        self.attn_implementation = _choice(
            "attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS
        )
        self.training_duration = str(Duration.parse(self.training_duration))
        self.checkpoint_interval = str(self.checkpoint_every)
        if isinstance(self.eval_prompts, str):
            self.eval_prompts = [self.eval_prompts]
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        _check_eval_prompts(self.eval_prompts)
        self.data_format = _choice("data_format", self.data_format, DATA_FORMATS)
        self.columns = _check_columns(self.columns)
        if self.prompt_template is not None and "{prompt}" not in str(self.prompt_template):
            raise ConfigError(
                "prompt_template",
                "has no {prompt} placeholder",
                value=self.prompt_template,
                allowed="text with {prompt} where the prompt goes, e.g. '{prompt}\\n\\nAnswer: '",
            )
        _check_list_of_str("lora_target_modules", self.lora_target_modules)
        for name in ("context_length", "pack_length", "warmup_steps"):
            _check_int(
                name, getattr(self, name), minimum=0 if name == "warmup_steps" else 1, optional=True
            )
        for name in (
            "lora_rank",
            "lora_alpha",
            "tokens_per_batch",
            "micro_batch_tokens",
            "max_new_tokens",
            "num_processes",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        self.eval_metric = _metric_name(self.eval_metric)
        _check_int("eval_metric_samples", self.eval_metric_samples, minimum=1)
        _check_int("loss_chunk_tokens", self.loss_chunk_tokens, minimum=0)
        if not isinstance(self.load_in_4bit, bool):
            raise ConfigError("load_in_4bit", "must be true or false", value=self.load_in_4bit)
        if self.load_in_4bit and self.method != "lora":
            raise ConfigError(
                "load_in_4bit",
                "needs method lora (QLoRA trains adapters on the 4-bit base)",
                value=self.load_in_4bit,
                suggestion="set method: lora, or load_in_4bit: false",
            )
        self.learning_rate = _check_float(
            "learning_rate", self.learning_rate, low=0.0, high=100.0, optional=True
        )
        self.lora_dropout = _check_float("lora_dropout", self.lora_dropout, low=0.0, high=0.99)  # type: ignore[assignment]
        self.weight_decay = _check_float("weight_decay", self.weight_decay, low=0.0, high=10.0)  # type: ignore[assignment]
        self.max_grad_norm = _check_float("max_grad_norm", self.max_grad_norm, low=0.0, high=1e6)  # type: ignore[assignment]
        for name in (
            "validate_inputs",
            "gradient_checkpointing",
            "packing",
            "merge_lora",
            "fold_system_prompt",
            "verbose",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, "must be true or false", value=getattr(self, name))
        if self.register_to is not None:
            check_register_to(self.register_to)


def _metric_name(value: Any) -> str | None:
    from ftmagic.metrics import metric_name

    return metric_name(value)


def check_register_to(name: str) -> None:
    """``catalog.schema`` or ``catalog.schema.name``, each part letters, digits, '_' or '-'."""
    parts = name.split(".") if isinstance(name, str) else []
    part_ok = all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_\-]*", p) for p in parts)
    if len(parts) not in (2, 3) or not part_ok:
        raise ConfigError(
            "register_to",
            "is not a model name",
            value=name,
            allowed="catalog.schema or catalog.schema.name, each part letters, digits, '_' or '-'",
        )


def _choice(name: str, value: Any, allowed: tuple[str, ...], *, upper: bool = False) -> str:
    text = str(value).strip()
    text = text.upper() if upper else text.lower()
    if text not in allowed:
        close = difflib.get_close_matches(text, allowed, n=1, cutoff=0.5)
        raise ConfigError(
            name,
            "is not one of the allowed values",
            value=value,
            allowed=", ".join(allowed),
            suggestion=f"did you mean '{close[0]}'?" if close else None,
        )
    return text


def _check_int(name: str, value: Any, *, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, "must be a whole number", value=value)
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}", value=value)


def _check_float(
    name: str, value: Any, *, low: float, high: float, optional: bool = False
) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(name, "must be a number", value=value) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(name, "must be a number", value=value)
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low:g} and {high:g}", value=value)
    return float(value)


def _check_eval_prompts(value: Any) -> None:
    """Strings, or message lists of ``{role, content}`` objects."""
    if not isinstance(value, list):
        raise ConfigError(
            "eval_prompts", "must be a list of strings (prompts) or of message lists", value=value
        )
    for prompt in value:
        if isinstance(prompt, str):
            continue
        ok = isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m
            for m in prompt
        )
        if not ok or not prompt:
            raise ConfigError(
                "eval_prompts",
                "must be a list of strings (prompts) or of message lists",
                value=prompt,
                allowed="'a prompt' or [{role: user, content: 'a prompt'}]",
            )


def _check_columns(value: Any) -> dict[str, str] | None:
    """``{field ftmagic reads: source column}``; YAML text of one (as a form gives it) is read."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(
                "columns", "is not a mapping", value=value, allowed="e.g. {prompt: question}"
            ) from None
    if not value:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(
            "columns",
            "must map field names to column names",
            value=value,
            allowed="e.g. {prompt: question, response: answer}",
        )
    for key in value:
        if key not in RECORD_FIELDS:
            close = difflib.get_close_matches(key, RECORD_FIELDS, n=1, cutoff=0.5)
            raise ConfigError(
                "columns",
                f"maps to {key!r}, which is not a field ftmagic reads",
                value=value,
                allowed=", ".join(RECORD_FIELDS) + " (the key is ftmagic's field, the value "
                "your column)",
                suggestion=f"did you mean '{close[0]}'?" if close else None,
            )
    return dict(value)


def _check_list_of_str(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(name, "must be a list of strings", value=value)

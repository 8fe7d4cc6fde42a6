"""One typed run configuration, the same in YAML, keyword arguments, the CLI and the panel.

The field names and defaults of the hosted product come first; the fields we need because we train
the model ourselves follow. ``RunConfig`` is a pydantic dataclass: each field's type, help text,
choices and bounds are declared once, and ``RunConfig.json_schema()`` hands them to the CLI's
``--help``, the magic's help, the panel, completion and the docs. Every invalid value raises a
``ConfigError`` naming the field, the rule and the fix, never a pydantic ``ValidationError``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic import dataclasses as pydantic_dataclasses

from ftmagic.errors import ConfigError, brief, shorten

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: members are their values as text."""

        def __str__(self) -> str:
            return str(self.value)


class TaskType(StrEnum):
    """What the data is and which tokens train: the one list of task types."""

    CHAT_COMPLETION = "CHAT_COMPLETION"
    INSTRUCTION_FINETUNE = "INSTRUCTION_FINETUNE"
    CONTINUED_PRETRAIN = "CONTINUED_PRETRAIN"


METHODS = ("full", "lora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "linear", "constant")
BACKENDS = ("inkernel", "local", "torchrun", "ray")
CHAT_TURNS = ("all", "last", "split")
DATA_PARALLEL = ("auto", "ddp", "fsdp2")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flex_attention", "flash_attention_2")
DURATION_UNITS = {"ep": "epochs", "tok": "tokens", "ba": "batches (optimizer steps)"}
# Whole token and step counts stay below 2**53, so their float form is exact.
DURATION_LIMITS = {"ep": 100_000, "tok": 10**15, "ba": 10**9}
DURATION_PATTERN = r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*(ep|tok|ba)\s*$"
MAX_TOTAL_TOKENS = 10_000_000_000
MAX_SEQUENCE = 16_777_216
MAX_STEPS = DURATION_LIMITS["ba"]
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
# Items (list entries, mapping keys and values) one field's value may hold; counted with aliases
# expanded, so a YAML bomb stops here instead of at its billions.
MAX_VALUE_ITEMS = 10_000
DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_response", "text")
RECORD_FIELDS = ("messages", "prompt", "response", "completion", "text", "system")
CHOICES = {
    "task_type": tuple(t.value for t in TaskType),
    "data_format": DATA_FORMATS,
    "chat_turns": CHAT_TURNS,
    "method": METHODS,
    "precision": PRECISIONS,
    "attn_implementation": ATTN_IMPLEMENTATIONS,
    "lr_schedule": SCHEDULES,
    "backend": BACKENDS,
    "data_parallel": DATA_PARALLEL,
}
RUN_DEFAULTS = ("model", "train_data_path")  # kept in only-changed YAML, even when empty


def _field(
    default: Any,
    help: str,
    *,
    group: str = "run",
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    le: float | None = None,
    duration: bool = False,
) -> Any:
    extra: dict[str, Any] = {"group": group}
    if choices:
        extra["enum"] = list(choices)
    if duration:
        extra.update(pattern=DURATION_PATTERN, duration_limits=DURATION_LIMITS)
    if isinstance(default, (list, dict)):
        extra["default"] = default
        return Field(
            default_factory=lambda: copy.deepcopy(default),
            description=help,
            json_schema_extra=extra,
        )
    return Field(default=default, description=help, ge=ge, le=le, json_schema_extra=extra)


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
        match = None
        if isinstance(text, (str, int, float)) and not isinstance(text, bool):
            match = re.fullmatch(DURATION_PATTERN, str(text))
        if not match:
            raise ConfigError(field_name, "is not a duration", value=text, allowed=DURATION_RULE)
        number, unit = match.group(1).replace("_", ""), match.group(2)
        limit = DURATION_LIMITS[unit]
        # Compare digit counts first: float() of 400 digits is inf, and int(inf) overflows.
        if len(number.split(".")[0].lstrip("0")) > len(str(limit)) or float(number) > limit:
            raise ConfigError(
                field_name, f"must be at most {limit:_}{unit}", value=text, allowed=DURATION_RULE
            )
        value = float(number)
        if value <= 0:
            raise ConfigError(field_name, "must be positive", value=text, allowed=DURATION_RULE)
        if unit in ("tok", "ba") and value != int(value):
            raise ConfigError(field_name, f"{unit} durations are whole numbers", value=text)
        return cls(value, unit)  # type: ignore[arg-type]

    def __str__(self) -> str:
        number = int(self.value) if self.value == int(self.value) else self.value
        return f"{number}{self.unit}"


DURATION_RULE = "a positive number followed by ep, tok or ba, e.g. 3ep, 1_000_000tok, 200ba; " + (
    ", ".join(f"at most {limit:_}{unit}" for unit, limit in DURATION_LIMITS.items())
)


@dataclass(frozen=True)
class DatasetStats:
    """What the trainer needs to know about the data to size a run."""

    num_examples: int
    num_tokens: int
    num_trained_tokens: int


@pydantic_dataclasses.dataclass(config=ConfigDict(strict=True, extra="forbid"))
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
        TaskType.CHAT_COMPLETION.value,
        "CHAT_COMPLETION ({'messages': [...]}), INSTRUCTION_FINETUNE ({'prompt', 'response'}) or "
        "CONTINUED_PRETRAIN (a folder of .txt files).",
        group="data",
        choices=CHOICES["task_type"],
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
        choices=CHOICES["data_format"],
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
        "1ep",
        "How long to train: 3ep (epochs), 1_000_000tok (tokens) or 200ba (optimizer steps).",
        duration=True,
    )
    learning_rate: float | None = _field(
        None,
        "Peak learning rate. Empty: 2e-4 for LoRA, 1e-5 for full fine-tuning.",
        group="optim",
        ge=0.0,
        le=100.0,
    )
    context_length: int | None = _field(
        None,
        "Longest sequence in tokens; longer examples are truncated. Empty: the model's own.",
        group="data",
        ge=1,
        le=MAX_SEQUENCE,
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
        choices=CHOICES["chat_turns"],
    )
    fold_system_prompt: bool = _field(
        False,
        "Chat data: merge the system message into the first user message (for templates that "
        "reject system messages, like Gemma 2).",
        group="data",
    )

    # --- fields we need because we train the model ourselves ---
    method: str = _field(
        "full",
        "full (every weight) or lora (low-rank adapters).",
        group="method",
        choices=CHOICES["method"],
    )
    lora_rank: int = _field(16, "LoRA rank r.", group="method", ge=1, le=65_536)
    lora_alpha: int = _field(32, "LoRA scaling alpha.", group="method", ge=1, le=1_000_000)
    lora_dropout: float = _field(
        0.05, "Dropout on the LoRA branch.", group="method", ge=0.0, le=0.99
    )
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
    seed: int = _field(
        17, "Random seed for init, data order and dropout.", group="optim", ge=0, le=MAX_SEED
    )
    tokens_per_batch: int = _field(
        4096,
        "Real (non-pad) tokens per optimizer step, about.",
        group="optim",
        ge=1,
        le=1_000_000_000,
    )
    micro_batch_tokens: int = _field(
        2048,
        "Tokens per forward pass; steps are split into micro-batches (gradient accumulation).",
        group="optim",
        ge=1,
        le=1_000_000_000,
    )
    precision: str = _field(
        "auto",
        "auto (bf16 on GPUs that support it, else fp32), bf16, fp16 or fp32.",
        group="optim",
        choices=CHOICES["precision"],
    )
    gradient_checkpointing: bool = _field(
        False, "Recompute activations in backward: less memory, slower.", group="optim"
    )
    loss_chunk_tokens: int = _field(
        1024,
        "Tokens whose full-vocabulary logits exist at once when computing the loss (0: all of a "
        "micro-batch at once). Smaller saves memory on large vocabularies; the loss is the same.",
        group="optim",
        ge=0,
        le=1_000_000_000,
    )
    attn_implementation: str = _field(
        "auto",
        "auto (a variable-length kernel for packed rows on GPUs: flash_attention_2 when installed, "
        "else flex_attention; sdpa on CPUs), sdpa, flex_attention or flash_attention_2.",
        group="optim",
        choices=CHOICES["attn_implementation"],
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
        ge=1,
        le=MAX_SEQUENCE,
    )
    warmup_steps: int | None = _field(
        None,
        "Linear warmup steps. Empty: 5% of the steps.",
        group="optim",
        ge=0,
        le=MAX_STEPS,
    )
    lr_schedule: str = _field(
        "cosine",
        "Decay after warmup: cosine, linear or constant.",
        group="optim",
        choices=CHOICES["lr_schedule"],
    )
    weight_decay: float = _field(0.0, "AdamW weight decay.", group="optim", ge=0.0, le=10.0)
    max_grad_norm: float = _field(
        1.0,
        "Clip the gradient norm to this (0: no clipping).",
        group="optim",
        ge=0.0,
        le=1e6,
    )
    checkpoint_interval: str = _field(
        "1ep",
        "Checkpoint (with eval loss and eval-prompt generations) every 1ep, 500_000tok or 50ba; "
        "a final checkpoint is always written.",
        group="optim",
        duration=True,
    )
    max_new_tokens: int = _field(
        64, "Tokens to generate for each eval prompt.", group="data", ge=1, le=1_000_000
    )
    eval_metric: str | None = _field(
        None,
        "Score every checkpoint on greedy generations for a sample of eval_data_path: "
        "exact_match, json_list_f1, or (inkernel backend) a Python function "
        "f(predictions, references) -> float, higher is better. Logged as eval/<name>.",
        group="data",
    )
    eval_metric_samples: int = _field(
        16,
        "Eval examples (a seeded sample of eval_data_path) eval_metric scores.",
        group="data",
        ge=1,
        le=1_000_000,
    )
    backend: str = _field(
        "inkernel",
        "Where to train: inkernel (a thread of this kernel), local (a separate process that "
        "survives the kernel), torchrun (several processes) or ray (a Ray cluster).",
        group="backend",
        choices=CHOICES["backend"],
    )
    num_processes: int = _field(
        1,
        "Processes (torchrun) or workers (ray) to train with.",
        group="backend",
        ge=1,
        le=100_000,
    )
    data_parallel: str = _field(
        "auto",
        "How several processes share the model: auto (fsdp2 on GPUs, ddp on CPUs), ddp (a full "
        "copy per process) or fsdp2 (weights, gradients and optimizer state sharded).",
        group="backend",
        choices=CHOICES["data_parallel"],
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

    @field_validator("*", mode="before")
    @classmethod
    def _prepare(cls, value: Any, info: ValidationInfo) -> Any:
        """Checks pydantic's types cannot say, in ftmagic's words; they run before the type and
        bound checks."""
        name = info.field_name or "<config>"
        _check_size(name, value)
        prepare = PREPARE.get(name)
        return value if prepare is None else prepare(name, value)

    def __post_init__(self) -> None:
        if self.load_in_4bit and self.method != "lora":
            raise ConfigError(
                "load_in_4bit",
                "needs method lora (QLoRA trains adapters on the 4-bit base)",
                value=self.load_in_4bit,
                suggestion="set method: lora, or load_in_4bit: false",
            )

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's help text, in declaration order."""
        return {name: prop["description"] for name, prop in schema_fields().items()}

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON schema of a config: per field its ``description`` (the help), type,
        ``default``, ``enum`` (fixed choices), ``minimum``/``maximum`` and ``group``."""
        return copy.deepcopy(_schema())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> RunConfig:
        """Build a config from a mapping, rejecting unknown keys with a "did you mean"."""
        if not isinstance(data, dict):
            raise ConfigError("<config>", "must be a mapping of field: value", value=data)
        for key in data:
            if key not in _FIELD_NAMES:
                raise _unknown_field(key, source)
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
        except ValueError as err:  # e.g. a number past Python's 4300-digit limit, a 13th month
            raise ConfigError(
                "<yaml>", f"holds a value that cannot be read: {shorten(str(err), 120)}"
            ) from None
        except RecursionError:
            raise ConfigError("<yaml>", "is nested too deeply") from None
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
            defaults = _defaults()
            data = {k: v for k, v in data.items() if v != defaults[k] or k in RUN_DEFAULTS}
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


def _raising_config_errors(init: Callable[..., None]) -> Callable[..., None]:
    """``RunConfig(...)`` (and ``dataclasses.replace``) raise ``ConfigError``, not pydantic's
    ``ValidationError``."""

    @functools.wraps(init)
    def __init__(self: RunConfig, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as err:
            raise _config_error(err, kwargs) from None

    return __init__


RunConfig.__init__ = _raising_config_errors(RunConfig.__init__)  # type: ignore[method-assign]
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RunConfig))


# --- the schema -------------------------------------------------------------------------------
@functools.cache
def _schema() -> dict[str, Any]:
    return TypeAdapter(RunConfig).json_schema()


def schema_fields() -> dict[str, dict[str, Any]]:
    """The schema's properties: each field's JSON schema, in declaration order."""
    return RunConfig.json_schema()["properties"]


def value_type(prop: dict[str, Any]) -> tuple[str, bool]:
    """A field schema's JSON type (``string``, ``integer``, ``number``, ``boolean``, ``array``,
    ``object``) and whether it may be null (empty: the default)."""
    types = [option.get("type", "string") for option in prop.get("anyOf", [prop])]
    nullable = "null" in types
    return next((t for t in types if t != "null"), "string"), nullable


@functools.cache
def _defaults() -> dict[str, Any]:
    return RunConfig().to_dict()


# --- errors ------------------------------------------------------------------------------------
def _config_error(err: ValidationError, given: dict[str, Any] | None = None) -> ConfigError:
    """The first of pydantic's errors (in field order) as a ``ConfigError``; ``given`` holds the
    values as passed, which the message shows rather than their converted form."""
    issues = err.errors(include_url=False)
    unknown = [i for i in issues if i["type"] == "unexpected_keyword_argument"]
    issue = (unknown or issues)[0]
    cause = (issue.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    name = str(issue["loc"][0]) if issue["loc"] else "<config>"
    if unknown:
        return _unknown_field(name, None)
    value = (given or {}).get(name, issue.get("input"))
    prop = _schema()["properties"].get(name, {})
    return ConfigError(name, _rule(issue["type"], prop), value=value, allowed=_allowed(prop))


def _rule(issue: str, prop: dict[str, Any]) -> str:
    """The rule a field's value broke, from pydantic's error type and the field's schema."""
    kind, _ = value_type(prop)
    low, high = _bounds(prop)
    if "enum" in prop:
        return "is not one of the allowed values"
    if kind == "number" and issue in BOUND_ISSUES:
        return f"must be between {low:g} and {high:g}"
    if issue in ("greater_than_equal", "greater_than"):
        return f"must be at least {low}"
    if issue in ("less_than_equal", "less_than"):
        return f"must be at most {high}"
    return TYPE_RULES.get(kind, "must be a string")


BOUND_ISSUES = ("greater_than_equal", "greater_than", "less_than_equal", "less_than")
TYPE_RULES = {
    "integer": "must be a whole number",
    "number": "must be a number",
    "boolean": "must be true or false",
    "array": "must be a list of strings",
    "object": "must be a mapping",
}


def _allowed(prop: dict[str, Any]) -> str | None:
    if "enum" in prop:
        return ", ".join(prop["enum"])
    kind, nullable = value_type(prop)
    low, high = _bounds(prop)
    empty = ", or empty for the default" if nullable else ""
    if kind == "integer":
        return f"a whole number from {low:,} to {high:,}{empty}"
    if kind == "number":
        return f"a number from {low:g} to {high:g}{empty}"
    return None


def _allowed_for(name: str) -> str | None:
    return _allowed(_schema()["properties"][name])


def _bounds(prop: dict[str, Any]) -> tuple[Any, Any]:
    for option in prop.get("anyOf", [prop]):
        if "minimum" in option or "maximum" in option:
            return option.get("minimum"), option.get("maximum")
    return None, None


def _unknown_field(key: object, source: str | None) -> ConfigError:
    name = brief(key).strip("'") if not isinstance(key, str) else key[:80]
    close = difflib.get_close_matches(name, RunConfig.field_names(), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "see RunConfig.help() for fields"
    where = f" (in {source})" if source else ""
    return ConfigError(name, f"is not a config field{where}", suggestion=hint)


# --- checks ------------------------------------------------------------------------------------
def _check_size(name: str, value: Any) -> None:
    """Refuse values holding more than ``MAX_VALUE_ITEMS`` items, counting each alias anew."""
    pending, seen = [value], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > MAX_VALUE_ITEMS:
            raise ConfigError(
                name,
                f"holds more than {MAX_VALUE_ITEMS:,} items (with YAML aliases expanded)",
                value=value,
                allowed="a small value; a config names data, it does not hold it",
            )
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)


def _choice(name: str, value: Any) -> str:
    allowed = CHOICES[name]
    text = value.strip() if isinstance(value, str) else ""
    text = text.upper() if name == "task_type" else text.lower()
    if text not in allowed:
        close = difflib.get_close_matches(text, allowed, n=1, cutoff=0.5) if text else []
        raise ConfigError(
            name,
            "is not one of the allowed values",
            value=value,
            allowed=", ".join(allowed),
            suggestion=f"did you mean '{close[0]}'?" if close else None,
        )
    return text


def _number(name: str, value: Any) -> Any:
    """Text (YAML reads ``2e-4`` as text) and ints as floats; an int too large for a float is
    infinite, which the bound check then refuses."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(
                name, "must be a number", value=value, allowed=_allowed_for(name)
            ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            value = math.inf if value > 0 else -math.inf
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(name, "must be a number", value=value, allowed=_allowed_for(name))
    return value


def _path(name: str, value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _duration(name: str, value: Any) -> str:
    return str(Duration.parse(value, field_name=name))


def _one_or_list(name: str, value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _eval_prompts(name: str, value: Any) -> list[Any]:
    """Strings, or message lists of ``{role, content}`` objects."""
    value = _one_or_list(name, value)
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
    return value


def _columns(name: str, value: Any) -> dict[str, str] | None:
    """``{field ftmagic reads: source column}``; YAML text of one (as a form gives it) is read."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(
                "columns", "is not a mapping", value=value, allowed="e.g. {prompt: question}"
            ) from None
        _check_size(name, value)
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
                f"maps to {brief(key)}, which is not a field ftmagic reads",
                value=value,
                allowed=", ".join(RECORD_FIELDS) + " (the key is ftmagic's field, the value "
                "your column)",
                suggestion=f"did you mean '{close[0]}'?" if close else None,
            )
    return dict(value)


def _prompt_template(name: str, value: Any) -> Any:
    if isinstance(value, str) and "{prompt}" not in value:
        raise ConfigError(
            "prompt_template",
            "has no {prompt} placeholder",
            value=value,
            allowed="text with {prompt} where the prompt goes, e.g. '{prompt}\\n\\nAnswer: '",
        )
    return value


def _metric(name: str, value: Any) -> Any:
    """A built-in metric's name, or a notebook function (kept for this kernel by name)."""
    if value is None or isinstance(value, str) or callable(value):
        from ftmagic.metrics import metric_name

        return metric_name(value)
    return value  # the type check names the rule


def _register_to(name: str, value: Any) -> Any:
    if isinstance(value, str):
        check_register_to(value)
    return value


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


PREPARE: dict[str, Callable[[str, Any], Any]] = {
    **dict.fromkeys(CHOICES, _choice),
    **dict.fromkeys(("learning_rate", "lora_dropout", "weight_decay", "max_grad_norm"), _number),
    **dict.fromkeys(("train_data_path", "eval_data_path", "custom_weights_path"), _path),
    "training_duration": _duration,
    "checkpoint_interval": _duration,
    "eval_prompts": _eval_prompts,
    "lora_target_modules": _one_or_list,
    "columns": _columns,
    "prompt_template": _prompt_template,
    "eval_metric": _metric,
    "register_to": _register_to,
}

"""RunConfig round-trips through YAML, dicts and kwargs, and fails with clear messages."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from ftmagic.config import DatasetStats, Duration, RunConfig, TaskType
from ftmagic.errors import ConfigError

FULL = {
    "model": "ftmagic/tiny-random-chat",
    "train_data_path": "data/train.jsonl",
    "register_to": "main.default.support_bot",
    "task_type": "INSTRUCTION_FINETUNE",
    "eval_data_path": "data/eval.jsonl",
    "eval_prompts": ["What is 2+2?", "Say hi: ünïcödé ✓"],
    "training_duration": "1_000tok",
    "learning_rate": 3e-4,
    "context_length": 512,
    "method": "lora",
    "lora_rank": 8,
    "lora_target_modules": ["q_proj", "v_proj"],
    "merge_lora": False,
    "seed": 3,
    "tokens_per_batch": 8192,
    "micro_batch_tokens": 1024,
    "precision": "fp32",
    "gradient_checkpointing": True,
    "packing": False,
    "pack_length": 256,
    "warmup_steps": 0,
    "lr_schedule": "linear",
    "checkpoint_interval": "50ba",
    "backend": "local",
    "num_processes": 2,
}


def test_yaml_dict_kwargs_round_trip_is_lossless() -> None:
    config = RunConfig.from_dict(FULL)
    assert RunConfig.from_yaml(config.to_yaml()) == config
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.coerce(None, **FULL) == config
    assert config.to_dict()["eval_prompts"] == ["What is 2+2?", "Say hi: ünïcödé ✓"]
    assert config.to_dict()["training_duration"] == "1000tok"


def test_only_changed_yaml_keeps_just_the_changes(tmp_path) -> None:
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path="t.jsonl", seed=5)
    text = config.to_yaml(only_changed=True)
    assert text.splitlines() == [
        "model: ftmagic/tiny-random-chat",
        "train_data_path: t.jsonl",
        "seed: 5",
    ]
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert RunConfig.coerce(path) == config
    assert RunConfig.coerce(path, seed=9).seed == 9


def test_misspelled_key_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"model": "m", "learning_rte": 1e-4})
    assert info.value.field == "learning_rte"
    assert "did you mean 'learning_rate'?" in str(info.value)


def test_bad_choice_names_field_value_and_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(task_type="CHAT_COMPLETIONS")
    message = str(info.value)
    assert "task_type" in message
    assert "'CHAT_COMPLETIONS'" in message
    assert "CHAT_COMPLETION, INSTRUCTION_FINETUNE, CONTINUED_PRETRAIN" in message
    assert "did you mean 'CHAT_COMPLETION'?" in message


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"lora_rank": 0}, "lora_rank", "at least 1"),
        ({"learning_rate": "fast"}, "learning_rate", "must be a number"),
        ({"learning_rate": -0.1}, "learning_rate", "must be between 0 and"),
        ({"packing": "yes"}, "packing", "true or false"),
        ({"register_to": "nodots"}, "register_to", "catalog.schema"),
        ({"eval_prompts": [1, 2]}, "eval_prompts", "list of strings"),
        ({"training_duration": "3 epochs"}, "training_duration", "ep, tok or ba"),
    ],
)
def test_errors_name_the_field_and_rule(changes: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    assert info.value.field == field
    assert words in str(info.value)


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        RunConfig.from_yaml("model: x\n  bad: [1,\n")


def test_duration_parsing() -> None:
    assert Duration.parse("3ep") == Duration(3.0, "ep")
    assert Duration.parse("0.5ep") == Duration(0.5, "ep")
    assert Duration.parse(" 1_000_000tok ") == Duration(1_000_000.0, "tok")
    assert str(Duration.parse("200ba")) == "200ba"
    assert str(Duration.parse("0.5ep")) == "0.5ep"
    for bad in ("3", "ep", "-1ep", "0ba", "1.5tok", "2 batches"):
        with pytest.raises(ConfigError):
            Duration.parse(bad)


def test_task_type_and_method_are_normalised() -> None:
    config = RunConfig(task_type="chat_completion", method="LoRA", backend="Local")
    assert (config.task_type, config.method, config.backend) == ("CHAT_COMPLETION", "lora", "local")


def test_derived_values() -> None:
    stats = DatasetStats(num_examples=100, num_tokens=10_000, num_trained_tokens=4_000)
    config = RunConfig(training_duration="2ep", tokens_per_batch=4096, micro_batch_tokens=1000)
    assert config.micro_batches_per_step() == 5
    assert config.steps_per_epoch(stats) == 3
    assert config.total_steps(stats) == 6
    assert config.total_tokens(stats) == 20_000
    assert config.effective_learning_rate() == 1e-5
    assert config.replace(method="lora").effective_learning_rate() == 2e-4
    assert config.resolved_warmup_steps(100) == 5
    assert config.replace(warmup_steps=500).resolved_warmup_steps(100) == 100
    assert config.experiment() == "ftmagic"
    by_tokens = config.replace(training_duration="8192tok")
    assert (by_tokens.total_steps(stats), by_tokens.total_tokens(stats)) == (2, 8192)
    by_batches = config.replace(training_duration="7ba")
    assert (by_batches.total_steps(stats), by_batches.total_tokens(stats)) == (7, 7 * 4096)


def test_help_covers_every_field() -> None:
    help_text = RunConfig.help()
    assert list(help_text) == RunConfig.field_names()
    assert all(isinstance(text, str) and len(text) > 10 for text in help_text.values())
    assert "3ep" in help_text["training_duration"]


@pytest.mark.timeout(10)
def test_json_schema_gives_each_fields_help_type_choices_default_and_bounds() -> None:
    properties = RunConfig.json_schema()["properties"]
    assert list(properties) == RunConfig.field_names()
    for name, prop in properties.items():
        assert prop["description"] == RunConfig.help()[name]
        assert prop["group"] in ("run", "data", "method", "optim", "backend")
        assert "type" in prop or "anyOf" in prop, name
    assert properties["task_type"]["enum"] == list(TaskType)
    assert properties["task_type"]["default"] == "CHAT_COMPLETION"
    assert properties["lora_target_modules"]["default"] == ["all-linear"]
    assert (properties["lora_rank"]["minimum"], properties["lora_rank"]["maximum"]) == (1, 65_536)
    assert properties["learning_rate"]["anyOf"][0]["maximum"] == 100
    assert properties["training_duration"]["duration_limits"]["ep"] == 100_000
    RunConfig.json_schema()["properties"].clear()  # a copy: callers cannot change the schema
    assert RunConfig.json_schema()["properties"]


@pytest.mark.timeout(10)
def test_task_type_is_one_str_enum() -> None:
    config = RunConfig(task_type="instruction_finetune")
    assert config.task_type == TaskType.INSTRUCTION_FINETUNE == "INSTRUCTION_FINETUNE"
    assert f"{TaskType.CONTINUED_PRETRAIN}" == "CONTINUED_PRETRAIN"
    assert config.to_yaml().count("task_type: INSTRUCTION_FINETUNE") == 1


@pytest.mark.timeout(10)
@pytest.mark.parametrize("field", RunConfig.field_names())
def test_wrong_type_for_any_field_is_a_config_error(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: {"a": object()}})
    assert info.value.field == field
    assert "config field" in str(info.value)


@pytest.mark.timeout(10)
def test_unknown_keyword_gets_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(model="m", lora_rnk=8)
    assert info.value.field == "lora_rnk"
    assert "did you mean 'lora_rank'?" in str(info.value)


@pytest.mark.timeout(10)
def test_copies_validate_like_construction() -> None:
    config = RunConfig(model="m", seed=4)
    copied = dataclasses.replace(config, method="LoRA")
    assert (copied.method, copied.seed) == ("lora", 4)
    assert pickle.loads(pickle.dumps(copied)) == copied
    with pytest.raises(ConfigError, match="at most 4294967295"):
        dataclasses.replace(config, seed=2**32)
    with pytest.raises(ConfigError, match="at least 1"):
        config.replace(lora_rank=0)

"""Hostile config values fail fast with a ConfigError: YAML bombs (billion laughs) and numbers
too large for their field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftmagic.config import RunConfig
from ftmagic.errors import ConfigError

HUGE = "1" + "0" * 400
BOMB_FIELDS = (
    "model",
    "task_type",
    "training_duration",
    "learning_rate",
    "seed",
    "columns",
    "lora_target_modules",
    "eval_prompts",
)


def bomb(field: str) -> str:
    """Nine lists of nine references each: ~400 bytes of YAML that expand to 9**9 strings."""
    levels = ["  - &a [" + ", ".join(["lol"] * 9) + "]"]
    levels += [
        f"  - &{b} [" + ", ".join([f"*{a}"] * 9) + "]"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    if field == "eval_prompts":  # the bomb as a message's content, which any value may be
        return "eval_prompts:\n- - role: user\n    content:\n" + "\n".join(
            "    " + line for line in levels
        )
    return f"{field}:\n" + "\n".join(levels) + "\n"


# The child process warms up, then times each entry point under tracemalloc; a bomb that expands
# hangs it, so the parent's timeout turns the hang into a failure.
CHILD = r"""
import contextlib, io, json, sys, time, tracemalloc
from pathlib import Path
from ftmagic import cli
from ftmagic.config import RunConfig
from ftmagic.errors import ConfigError
from ftmagic.ui.cell import parse_cell
import ftmagic.data.validate

entry, folder, cases = sys.argv[1], Path(sys.argv[2]), json.loads(sys.stdin.read())

def run(text):
    path = folder / "run.yaml"
    path.write_text(text)
    if entry == "from_yaml":
        RunConfig.from_yaml(text)
    elif entry == "from_file":
        RunConfig.from_file(path)
    elif entry == "cell":
        parse_cell(text, {})
    else:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            status = cli.main(["validate", str(path)])
        raise ConfigError("<cli>", f"status {status}: {err.getvalue()}")

with contextlib.suppress(ConfigError):
    run("model: m\nseed: x\n")
for field, text in cases:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        run(text)
        outcome, message = "accepted", ""
    except ConfigError as err:
        outcome, message = "ConfigError", str(err)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"field": field, "outcome": outcome, "message": message,
                      "seconds": seconds, "peak": peak}), flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ["from_yaml", "from_file", "cell", "cli"])
def test_yaml_bomb_is_a_quick_config_error(entry: str, tmp_path: Path) -> None:
    fields = BOMB_FIELDS if entry == "from_yaml" else ("model", "eval_prompts")
    cases = [(field, bomb(field)) for field in fields]
    assert all(len(text) < 600 for _, text in cases)
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, entry, str(tmp_path)],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{entry}: a YAML bomb kept the config error path busy for 30 s")
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["field"] for r in results] == list(fields)
    for result in results:
        assert result["outcome"] == "ConfigError", result
        assert result["field"] in result["message"]
        assert len(result["message"]) < 600
        assert result["seconds"] < 1.0, result
        assert result["peak"] < 20_000_000, result


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        pytest.param("training_duration", HUGE + "ba", "at most", id="duration-ba"),
        pytest.param("training_duration", HUGE + "tok", "at most", id="duration-tok"),
        pytest.param("training_duration", HUGE + "ep", "at most", id="duration-ep"),
        pytest.param("training_duration", HUGE + ".5ep", "at most", id="duration-fraction"),
        pytest.param("checkpoint_interval", HUGE + "ba", "at most", id="checkpoint-interval"),
        pytest.param("learning_rate", int(HUGE), "between 0 and 100", id="lr-int"),
        pytest.param("learning_rate", HUGE, "between 0 and 100", id="lr-text"),
        pytest.param("learning_rate", -int(HUGE), "between 0 and 100", id="lr-negative"),
        pytest.param("seed", 2**80, "at most 4294967295", id="seed-2**80"),
    ],
)
def test_huge_numbers_are_config_errors(field: str, value: object, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: value})
    message = str(info.value)
    assert info.value.field == field
    assert rule in message
    assert "allowed:" in message  # the fix: the range the field takes
    assert len(message) < 400


@pytest.mark.timeout(10)
@pytest.mark.parametrize("field", ["training_duration", "checkpoint_interval", "seed"])
def test_huge_numbers_in_yaml_are_config_errors(field: str) -> None:
    value = HUGE + "ba" if field != "seed" else HUGE
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(f"{field}: {value}\n")
    assert info.value.field == field and "at most" in str(info.value)


@pytest.mark.timeout(10)
def test_learning_rate_of_400_digits_in_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(f"learning_rate: {HUGE}\n")
    assert info.value.field == "learning_rate"
    assert "between 0 and 100" in str(info.value)


@pytest.mark.timeout(10)
def test_number_past_pythons_digit_limit_in_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml("seed: " + "9" * 5000 + "\n")
    assert len(str(info.value)) < 400


@pytest.mark.timeout(10)
def test_every_numeric_field_has_an_upper_bound() -> None:
    numeric = [
        name
        for name, prop in RunConfig.json_schema()["properties"].items()
        if {"integer", "number"} & {t.get("type") for t in prop.get("anyOf", [prop])}
    ]
    assert {"seed", "learning_rate", "lora_rank", "tokens_per_batch"} <= set(numeric)
    for name in numeric:
        with pytest.raises(ConfigError) as info:
            RunConfig(**{name: 10**400})
        assert info.value.field == name, name
        assert "allowed:" in str(info.value), name

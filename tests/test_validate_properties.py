"""Whatever is in the file, validation gives a report or an FtmagicError, never anything else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ftmagic
from ftmagic.data.validate import ValidationReport
from ftmagic.errors import FtmagicError

TASKS = st.sampled_from(["CHAT_COMPLETION", "INSTRUCTION_FINETUNE", "CONTINUED_PRETRAIN"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "user", "assistant", "tool", "", "USER"])
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES, "content": st.one_of(st.text(max_size=30), JSONISH)}
)
CHAT_RECORD = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=5)})
INSTRUCTION_RECORD = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=30), SCALARS)},
    optional={"response": st.text(max_size=30), "completion": JSONISH},
)
LINE = st.one_of(
    CHAT_RECORD.map(json.dumps),
    INSTRUCTION_RECORD.map(json.dumps),
    JSONISH.map(json.dumps),
    st.text(max_size=40),
)
CONTENT = st.one_of(
    st.lists(LINE, max_size=6).map(lambda lines: "\n".join(lines).encode()),
    st.binary(max_size=300),
)


def check(content: bytes, name: str, task_type: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            report = ftmagic.validate(
                model="ftmagic/tiny-random-chat", train_data_path=str(path), task_type=task_type
            )
        except FtmagicError:
            return
        assert isinstance(report, ValidationReport)
        assert report.num_errors >= len(report.errors)
        assert report.ok == (report.num_errors == 0)
        json.dumps(report.to_dict())
        str(report)
        report._repr_html_()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=CONTENT, task_type=TASKS)
def test_any_jsonl_gives_report_or_ftmagic_error(content: bytes, task_type: str) -> None:
    check(content, "train.jsonl", task_type)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=CONTENT, suffix=st.sampled_from([".csv", ".parquet", ".txt", ".json"]))
def test_any_bytes_under_other_names_give_report_or_ftmagic_error(
    content: bytes, suffix: str
) -> None:
    check(content, "train" + suffix, "CHAT_COMPLETION")

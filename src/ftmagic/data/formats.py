"""Turn the shapes people keep their data in into ftmagic's records, once, with one note each.

ftmagic trains on three records: ``{"messages": [...]}`` (chat), ``{"prompt", "response"}``
(instruction) and ``{"text"}`` (continued pretraining). Data mostly comes in other shapes:

- ShareGPT: ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}``;
- Alpaca: ``{"instruction", "input", "output"}`` (LLaMA-Factory adds ``system`` and ``history``);
- a ``conversations`` list of role/content messages;
- message content as a list of parts, ``[{"type": "text", "text": ...}]``;
- any columns, renamed with the ``columns:`` config field (``{prompt: question}``).

``Converter`` detects the shape of each record (or takes ``data_format:`` from the config), converts
it, and keeps one note per kind of conversion for the validation report. A record whose shape is
unknown but has an obvious synonym of a missing field (``question`` for ``prompt``) gets an error
naming the ``columns:`` mapping that fixes it; when that is the first record of a file, the file is
skipped with that one error rather than one per line.

``model_input`` is the one rule for prompts typed by a person (eval prompts, ``%ft chat``): a plain
string is given the system prompt every training example shares, or the instruction template, so the
model is asked the way it was trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ftmagic.data.readers import Record, iter_records
from ftmagic.data.rules import CHAT, INSTRUCTION, PRETRAIN
from ftmagic.errors import DataError

if TYPE_CHECKING:
    from ftmagic.config import RunConfig

Messages = list[dict[str, Any]]

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "function": "tool",
    "tool": "tool",
}
SYNONYMS = {
    "prompt": ("question", "query", "instruction", "input", "problem", "source", "context"),
    "response": ("answer", "output", "target", "reply", "solution", "label", "chosen"),
    "messages": ("conversation", "dialog", "dialogue", "chat", "turns", "history"),
    "text": ("content", "document", "body", "passage", "article"),
}
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    CHAT: ("messages",),
    INSTRUCTION: ("prompt", "response"),
    PRETRAIN: ("text",),
}
ALPACA_JOIN = "\n\n"


class ShapeError(DataError):
    """The record is not in a shape ftmagic reads; on a file's first record it skips the file."""


class Converter:
    """Converts records to ftmagic's shape for ``task_type``; ``notes`` say what was converted."""

    def __init__(
        self,
        task_type: str,
        data_format: str = "auto",
        columns: dict[str, str] | None = None,
        prompt_template: str | None = None,
    ) -> None:
        self.task_type = task_type
        self.data_format = data_format
        self.columns = dict(columns or {})
        self.prompt_template = prompt_template
        self._notes: dict[str, str] = {}

    @classmethod
    def of(cls, config: RunConfig) -> Converter:
        return cls(config.task_type, config.data_format, config.columns, config.prompt_template)

    @property
    def notes(self) -> list[str]:
        """One line per kind of conversion made, e.g. "ShareGPT detected: ..."."""
        return list(self._notes.values())

    def records(
        self, records: Iterable[Record], errors: list[DataError] | None = None
    ) -> Iterator[Record]:
        """The converted records. A record that cannot be converted is reported in ``errors``
        (or raised without a list); a shape problem on a file's first record skips the file."""
        started: set[str] = set()
        skipped: set[str] = set()
        for record in records:
            if record.source in skipped:
                continue
            first = record.source not in started
            started.add(record.source)
            try:
                data = self.convert(record.data)
            except DataError as err:
                located = _locate(err, record)
                if errors is None:
                    raise located from None
                errors.append(located)
                if first and isinstance(err, ShapeError):
                    skipped.add(record.source)
                continue
            yield Record(record.source, record.line, data)

    def convert(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` in ftmagic's shape; raises ``DataError`` (without source or line)."""
        data = self._rename(data)
        for name in ("messages", "conversations"):
            data = _decode_json_field(data, name)
        shape = self.data_format if self.data_format != "auto" else detect_format(data)
        if shape is None:
            raise_for_synonyms(data, self.task_type)
            return data
        return self._convert_shape(data, shape)

    # --- shapes ---------------------------------------------------------------------------
    def _convert_shape(self, data: dict[str, Any], shape: str) -> dict[str, Any]:
        if shape == "sharegpt":
            return self._from_sharegpt(data)
        if shape == "alpaca":
            return self._from_alpaca(data)
        if shape == "messages":
            return self._from_messages(data)
        if shape == "prompt_response":
            return self._from_prompt_response(data)
        return self._from_text(data)

    def _from_messages(self, data: dict[str, Any]) -> dict[str, Any]:
        if "messages" not in data and isinstance(data.get("conversations"), list):
            self._note(
                "conversations",
                "'conversations' column of role/content messages read as 'messages'",
            )
            data = {k: v for k, v in data.items() if k != "conversations"} | {
                "messages": data["conversations"]
            }
        if "messages" not in data:
            raise self._format_error(data, "a 'messages' list")
        messages = data["messages"]
        if isinstance(messages, list) and _is_sharegpt(messages):
            return self._from_sharegpt(data)
        if isinstance(messages, list):
            data = {**data, "messages": [self._flatten_parts(m, i) for i, m in enumerate(messages)]}
        return data

    def _from_sharegpt(self, data: dict[str, Any]) -> dict[str, Any]:
        key = "conversations" if "conversations" in data else "messages"
        turns = data.get(key)
        if not isinstance(turns, list) or not _is_sharegpt(turns):
            raise self._format_error(data, "a 'conversations' list of from/value turns")
        messages: Messages = []
        system = data.get("system")
        if isinstance(system, str) and system.strip():
            messages.append({"role": "system", "content": system})
        seen: dict[str, str] = {}
        for index, turn in enumerate(turns):
            if not isinstance(turn, dict):
                messages.append(turn)
                continue
            speaker = turn.get("from")
            role = SHAREGPT_ROLES.get(str(speaker).lower(), speaker)
            if isinstance(speaker, str) and speaker in SHAREGPT_ROLES:
                seen[speaker] = str(role)
            rest = {k: v for k, v in turn.items() if k not in ("from", "value")}
            message = {"role": role, "content": turn.get("value"), **rest}
            messages.append(self._flatten_parts(message, index))
        mapping = ", ".join(f"{k} → {v}" for k, v in seen.items() if k != v)
        self._note(
            "sharegpt",
            "ShareGPT detected: from/value → role/content" + (f" ({mapping})" if mapping else ""),
        )
        rest = {k: v for k, v in data.items() if k not in (key, "system")}
        return {**rest, "messages": messages}

    def _from_alpaca(self, data: dict[str, Any]) -> dict[str, Any]:
        instruction, extra, output = data.get("instruction"), data.get("input"), data.get("output")
        if "instruction" not in data or "output" not in data:
            raise self._format_error(data, "'instruction' and 'output' fields")
        prompt = instruction
        if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
            prompt = instruction + ALPACA_JOIN + extra
        rest = {
            k: v for k, v in data.items() if k not in ("instruction", "input", "output", "system")
        }
        if self.task_type == INSTRUCTION:
            self._note(
                "alpaca",
                "Alpaca detected: instruction/input/output → prompt/response (a non-empty input "
                "follows the instruction after a blank line)",
            )
            return self._from_prompt_response({**rest, "prompt": prompt, "response": output})
        self._note(
            "alpaca",
            "Alpaca detected: instruction/input/output → messages (system, then the instruction "
            "and input as the user's turn, the output as the assistant's)",
        )
        messages: Messages = []
        system = data.get("system")
        if isinstance(system, str) and system.strip():
            messages.append({"role": "system", "content": system})
        for pair in data.get("history") or []:
            if isinstance(pair, list) and len(pair) == 2:
                messages += [
                    {"role": "user", "content": pair[0]},
                    {"role": "assistant", "content": pair[1]},
                ]
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": output},
        ]
        rest.pop("history", None)
        return {**rest, "messages": messages}

    def _from_prompt_response(self, data: dict[str, Any]) -> dict[str, Any]:
        if "prompt" not in data:
            raise self._format_error(data, "'prompt' and 'response' fields")
        template, prompt = self.prompt_template, data.get("prompt")
        if self.task_type != INSTRUCTION or not template or not isinstance(prompt, str):
            return data
        self._note("template", f"prompt_template applied to every prompt: {template!r}")
        return {**data, "prompt": apply_template(template, prompt)}

    def _from_text(self, data: dict[str, Any]) -> dict[str, Any]:
        if "text" not in data:
            raise self._format_error(data, "a 'text' field")
        if self.task_type == PRETRAIN:
            return data
        raise ShapeError(
            'holds plain {"text"} records: that is continued-pretraining data, but task_type is '
            f"{self.task_type}",
            field="text",
            fix="set task_type: CONTINUED_PRETRAIN to train on the text itself (every token "
            'trained); to teach answers, write {"messages": [...]} or {"prompt", "response"} '
            "records instead",
        )

    # --- helpers ------------------------------------------------------------------------------
    def _rename(self, data: dict[str, Any]) -> dict[str, Any]:
        if not self.columns:
            return data
        missing = [column for column in self.columns.values() if column not in data]
        if missing:
            raise ShapeError(
                f"has no column {missing[0]!r} (named in columns:)",
                field=missing[0],
                value=sorted(data)[:12],
                fix=f"the record's columns are listed above; fix the columns: mapping "
                f"{_mapping_text(self.columns)}",
            )
        renamed = {k: v for k, v in data.items() if k not in self.columns.values()}
        for name, column in self.columns.items():
            renamed[name] = data[column]
        pairs = ", ".join(f"{column} → {name}" for name, column in self.columns.items())
        self._note("columns", f"columns renamed: {pairs}")
        return renamed

    def _flatten_parts(self, message: Any, index: int) -> Any:
        if not isinstance(message, dict) or not _is_parts(message.get("content")):
            return message
        texts = []
        for part_index, part in enumerate(message["content"]):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise DataError(
                    f"content part of type {kind!r} is not text: ftmagic trains on text only",
                    field=f"messages[{index}].content[{part_index}]",
                    value=part,
                    fix='keep only {"type": "text", "text": "..."} parts, or write the content '
                    "as one string",
                )
            texts.append(part["text"])
        self._note(
            "parts",
            'content parts [{"type": "text", "text": ...}] joined into one string per message '
            "(a newline between parts)",
        )
        return {**message, "content": "\n".join(texts)}

    def _format_error(self, data: dict[str, Any], wanted: str) -> ShapeError:
        found = detect_format(data)
        fix = f"set data_format: {found}" if found else "set data_format: auto to detect the shape"
        return ShapeError(
            f"data_format is {self.data_format}, but the record has no {wanted}",
            field="data_format",
            value=sorted(data)[:12],
            fix=fix,
        )

    def _note(self, kind: str, text: str) -> None:
        self._notes.setdefault(kind, text)


def detect_format(data: dict[str, Any]) -> str | None:
    """The shape of one record: messages, sharegpt, alpaca, prompt_response, text or None.

    >>> detect_format({"conversations": [{"from": "human", "value": "hi"}]})
    'sharegpt'
    >>> detect_format({"instruction": "Add", "input": "1 2", "output": "3"})
    'alpaca'
    """
    for key in ("messages", "conversations"):
        turns = data.get(key)
        if isinstance(turns, list):
            return "sharegpt" if _is_sharegpt(turns) else "messages"
    if "messages" in data:
        return "messages"
    if "instruction" in data and "output" in data:
        return "alpaca"
    if "prompt" in data and ("response" in data or "completion" in data):
        return "prompt_response"
    if "text" in data:
        return "text"
    return None


def raise_for_synonyms(data: dict[str, Any], task_type: str) -> None:
    """A ``ShapeError`` when the task's fields are missing and obvious synonyms are present."""
    wanted = TASK_FIELDS.get(task_type, ())
    if not wanted or any(name in data for name in wanted):
        return
    mapping = _synonym_mapping(data, wanted)
    fix = f"add columns: {_mapping_text(mapping)} to the config"
    if task_type == CHAT and not mapping:
        # Question/answer data for a chat run: the instruction fields are the nearer match.
        wanted = TASK_FIELDS[INSTRUCTION]
        mapping = _synonym_mapping(data, wanted)
        if len(mapping) < len(wanted):
            return
        fix = f"set task_type: INSTRUCTION_FINETUNE and columns: {_mapping_text(mapping)}"
    if not mapping:
        return
    missing = [f"'{name}'" for name in wanted if name not in mapping]
    if missing:
        fix += f" (and name the column that holds {' and '.join(missing)})"
    found = " and ".join(f"'{column}'" for column in mapping.values())
    needs = " and ".join(f"'{name}'" for name in wanted)
    raise ShapeError(f"has no {needs} field, but has {found}", field=wanted[0], fix=fix)


def _synonym_mapping(data: dict[str, Any], wanted: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for name in wanted:
        for synonym in SYNONYMS.get(name, ()):
            match = next((str(k) for k in data if str(k).lower() == synonym), None)
            if match is not None and match not in mapping.values():
                mapping[name] = match
                break
    return mapping


def _mapping_text(mapping: dict[str, str]) -> str:
    return "{" + ", ".join(f"{name}: {column}" for name, column in mapping.items()) + "}"


def _is_parts(content: Any) -> bool:
    """A content list of typed parts (anything else is left for the rules to report)."""
    return (
        isinstance(content, list)
        and bool(content)
        and all(isinstance(part, dict) and "type" in part for part in content)
    )


def _is_sharegpt(turns: list[Any]) -> bool:
    first = next((t for t in turns if isinstance(t, dict)), None)
    return first is not None and "from" in first and "value" in first and "role" not in first


def _decode_json_field(data: dict[str, Any], name: str) -> dict[str, Any]:
    """A messages column stored as JSON text (CSV cells, some Parquet exports) is decoded."""
    value = data.get(name)
    if not isinstance(value, str) or not value.lstrip().startswith("["):
        return data
    try:
        return {**data, name: json.loads(value)}
    except json.JSONDecodeError as err:
        raise DataError(
            f"the {name} column is not valid JSON: {err.msg}",
            field=name,
            fix=f"store the conversation in the {name} column as a JSON list",
        ) from None


def _locate(err: DataError, record: Record) -> DataError:
    kind = ShapeError if isinstance(err, ShapeError) else DataError
    return kind(
        err.rule,
        source=record.source,
        line=record.line,
        field=err.field,
        value=err.value,
        fix=err.fix,
    )


def apply_template(template: str, prompt: str) -> str:
    """``template`` with the prompt put where ``{prompt}`` is (other braces stay as they are)."""
    return template.replace("{prompt}", prompt)


def runs_together(prompt: str, response: str) -> bool:
    """True when the prompt ends and the response starts without any space or newline between."""
    return (
        bool(prompt) and bool(response) and not prompt[-1].isspace() and not response[0].isspace()
    )


# --- prompts a person types -----------------------------------------------------------------------
def model_input(
    prompt: str | Messages, config: RunConfig, *, history: Messages | None = None
) -> str | Messages:
    """What to give the model for ``prompt`` so it is asked the way it was trained.

    A chat run's plain-string prompt becomes a user message after ``history``, preceded by the
    system prompt that every training example shares (when they all share one). An instruction
    run's prompt is put in ``prompt_template``. A message list is taken as it is.
    """
    if not isinstance(prompt, str):
        return list(prompt)
    if config.task_type == INSTRUCTION:
        return apply_template(config.prompt_template, prompt) if config.prompt_template else prompt
    if config.task_type != CHAT:
        return prompt
    messages: Messages = list(history or [])
    system = shared_system_prompt(config)
    if system is not None and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return [*messages, {"role": "user", "content": prompt}]


def eval_prompt_inputs(config: RunConfig) -> list[str | Messages]:
    """``config.eval_prompts`` as ``model_input`` gives them to the model."""
    return [model_input(prompt, config) for prompt in config.eval_prompts]


def shared_system_prompt(config: RunConfig) -> str | None:
    """The system prompt every training example of a chat run starts with, or None (also when
    the data cannot be read). Cached per data path and format settings."""
    if config.task_type != CHAT or not config.train_data_path:
        return None
    columns = tuple(sorted((config.columns or {}).items()))
    path = config.train_data_path
    return _shared_system_prompt(path, _modified(path), config.data_format, columns)


def _modified(path: str) -> int | None:
    """A local file's modification time, so an edited file is read again."""
    try:
        return os.stat(path).st_mtime_ns
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=16)
def _shared_system_prompt(
    path: str, modified: int | None, data_format: str, columns: tuple[tuple[str, str], ...]
) -> str | None:
    converter = Converter(CHAT, data_format, dict(columns))
    shared: str | None = None
    try:
        for record in converter.records(iter_records(path, []), []):
            system = first_system_prompt(record.data)
            if system is None or (shared is not None and system != shared):
                return None
            shared = system
    except DataError:
        return None
    return shared


def first_system_prompt(data: dict[str, Any]) -> str | None:
    """The content of a chat record's leading system message, or None."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    first = messages[0]
    content = first.get("content")
    return content if first.get("role") == "system" and isinstance(content, str) else None

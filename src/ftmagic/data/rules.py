"""The per-record rules of each task, as the hosted product taught them, in one place.

``check_record`` returns every broken rule of one record as a ``DataError`` naming the file, the
line and the JSON path of the offending value (``messages[2].role``), so a user can fix the data
in one pass; ``validate`` and ``preview`` apply it. The ``require_*`` functions are the smaller
set that ``render`` needs to build an example, raising the first problem: training with
``validate_inputs: false`` renders whatever the chat template accepts. Both read a record through
the same helpers (``content_ok``, ``is_trained``, ``answer_field``, ``reasoning_of``). The
functions are pure: no I/O, no tokenizer.
"""

from __future__ import annotations

import itertools
from typing import Any

from ftmagic.config import TaskType
from ftmagic.errors import DataError

# The short names the data modules use for the task types.
CHAT = TaskType.CHAT_COMPLETION
INSTRUCTION = TaskType.INSTRUCTION_FINETUNE
PRETRAIN = TaskType.CONTINUED_PRETRAIN
ROLES = ("system", "user", "assistant", "tool")
REASONING_FIELDS = ("reasoning_content", "thinking")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CHAT_SHAPE = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}'
INSTRUCTION_SHAPE = '{"prompt": "...", "response": "..."}'


def detect_task(data: dict[str, Any]) -> TaskType | None:
    """The task a record's shape belongs to, or None when it fits none.

    >>> print(detect_task({"messages": []}))
    CHAT_COMPLETION
    >>> print(detect_task({"prompt": "a", "completion": "b"}))
    INSTRUCTION_FINETUNE
    >>> detect_task({"text": "a"}) is None
    True
    """
    if "messages" in data:
        return CHAT
    if "prompt" in data and ("response" in data or "completion" in data):
        return INSTRUCTION
    return None


def task_mismatch(
    data: dict[str, Any], task_type: str, *, source: str | None, line: int | None
) -> DataError | None:
    """An error when a record clearly belongs to another task than ``task_type``."""
    found = detect_task(data)
    if found is None or found == task_type:
        return None
    shape = "chat data ('messages')" if found == CHAT else "instruction data ('prompt'/'response')"
    return DataError(
        f"looks like {shape}, but task_type is {task_type}",
        source=source,
        line=line,
        fix=f"set task_type: {found}",
    )


def check_record(
    data: dict[str, Any], task_type: str, *, source: str | None = None, line: int | None = None
) -> list[DataError]:
    """Every rule of ``task_type`` that ``data`` breaks (an empty list when it is fine)."""
    if not isinstance(data, dict):
        return [DataError("record is not an object", source=source, line=line, value=data)]
    mismatch = task_mismatch(data, task_type, source=source, line=line)
    if mismatch is not None:
        return [mismatch]
    if task_type == CHAT:
        return check_chat(data, source=source, line=line)
    if task_type == INSTRUCTION:
        return check_instruction(data, source=source, line=line)
    if task_type == PRETRAIN:
        return check_text(data, source=source, line=line)
    return [DataError(f"unknown task_type {task_type!r}", source=source, line=line)]


def check_text(
    data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> list[DataError]:
    """Continued pretraining from records (rather than .txt files): a string ``text`` field."""
    fix = 'write {"text": "..."} records, or use a folder of .txt files'
    if "text" not in data:
        return [
            DataError("missing the 'text' field", source=source, line=line, field="text", fix=fix)
        ]
    if not isinstance(data["text"], str):
        return [
            DataError(
                "text must be a string",
                source=source,
                line=line,
                field="text",
                value=data["text"],
                fix=fix,
            )
        ]
    return []


def check_chat(
    data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> list[DataError]:
    """The chat rules: roles system/user/assistant, system only first, user and assistant
    alternate starting with user, and the last message is the assistant's."""

    def error(rule: str, field: str, value: object = None, fix: str | None = None) -> DataError:
        return DataError(rule, source=source, line=line, field=field, value=value, fix=fix)

    messages = data.get("messages")
    if "messages" not in data:
        return [error("missing the 'messages' field", "messages", fix=f"write {CHAT_SHAPE}")]
    if not isinstance(messages, list) or not messages:
        rule = "messages is empty" if messages == [] else "messages must be a list of messages"
        return [error(rule, "messages", value=messages, fix=f"write {CHAT_SHAPE}")]
    found: list[DataError] = []
    roles: list[str | None] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            found.append(
                error(
                    "message must be an object with role and content",
                    where,
                    message,
                    fix='write each message as {"role": "user", "content": "..."}',
                )
            )
            roles.append(None)
            continue
        found += _check_message(message, where, error)
        role = message.get("role")
        roles.append(role if role in ROLES else None)
    found += _check_order(roles, error)
    return found


def _check_message(message: dict[str, Any], where: str, error: Any) -> list[DataError]:
    found = []
    role = message.get("role")
    if "role" not in message:
        found.append(
            error("message has no role", f"{where}.role", fix="add role: user or assistant")
        )
    elif role not in ROLES:
        found.append(
            error(
                "unknown role",
                f"{where}.role",
                role,
                fix="use system, user or assistant (or tool for a tool's result)",
            )
        )
    content = message.get("content")
    found += _check_openai_fields(message, where, error)
    if content_ok(message):
        pass
    elif "content" not in message:
        found.append(error("message has no content", f"{where}.content", fix="add content: text"))
    elif not isinstance(content, str):
        found.append(
            error(
                "content must be a string",
                f"{where}.content",
                content,
                fix="put the message text in content as one string",
            )
        )
    return found


def _check_openai_fields(message: dict[str, Any], where: str, error: Any) -> list[DataError]:
    """OpenAI fine-tuning fields: ``weight`` 0 or 1 on assistant messages, ``name`` a string,
    ``tool_calls`` a list of ``{"type": "function", "function": {"name", "arguments"}}``."""
    found = []
    role = message.get("role")
    if "weight" in message and (message["weight"] not in (0, 1) or role != "assistant"):
        found.append(
            error(
                "weight must be 0 or 1, on assistant messages only",
                f"{where}.weight",
                message["weight"],
                fix="weight: 0 leaves an assistant turn untrained; leave it out to train it",
            )
        )
    if "name" in message and not isinstance(message["name"], str):
        found.append(error("name must be a string", f"{where}.name", message["name"]))
    calls = message.get("tool_calls")
    if calls is not None:
        ok = isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance((c.get("function") or {}).get("name"), str)
            for c in calls
        )
        if role != "assistant" or not ok:
            found.append(
                error(
                    "tool_calls must be a list of function calls on an assistant message",
                    f"{where}.tool_calls",
                    calls,
                    fix='write [{"type": "function", "function": {"name": "...", '
                    '"arguments": "{...}"}}]',
                )
            )
    return found


def _check_order(roles: list[str | None], error: Any) -> list[DataError]:
    """Order rules over the known roles (unknown ones were reported already)."""
    found = []
    for index, role in enumerate(roles):
        if role == "system" and index > 0:
            found.append(
                error(
                    "a system message may only come first",
                    f"messages[{index}].role",
                    role,
                    fix="move the system message to the start or merge it into the first one",
                )
            )
    # Tool results sit between an assistant's tool call and its next message.
    for index, role in enumerate(roles):
        if role == "tool" and (index == 0 or roles[index - 1] not in ("assistant", "tool")):
            found.append(
                error(
                    "a tool message must follow the assistant message that called the tool",
                    f"messages[{index}].role",
                    role,
                    fix="put tool results right after the assistant message with tool_calls",
                )
            )
    turns = [
        (i, r)
        for i, r in enumerate(roles)
        if r in ("user", "assistant") and not (r == "assistant" and i and roles[i - 1] == "tool")
    ]
    # After an unreadable message we cannot tell what came first, so only report what is sure.
    if turns and turns[0][1] != "user" and None not in roles[: turns[0][0]]:
        index = turns[0][0]
        found.append(
            error(
                "the conversation must start with a user message (after an optional system one)",
                f"messages[{index}].role",
                turns[0][1],
                fix="add the user message that the assistant answers",
            )
        )
    for (_, before), (index, role) in itertools.pairwise(turns):
        if role == before:
            found.append(
                error(
                    f"roles must alternate user/assistant: two {role} messages in a row",
                    f"messages[{index}].role",
                    role,
                    fix=f"merge the two {role} messages or add the missing "
                    f"{'assistant' if role == 'user' else 'user'} message between them",
                )
            )
    last = len(roles) - 1
    if "assistant" not in roles:
        if all(r is not None for r in roles):
            found.append(
                error(
                    "has no assistant message: there is nothing to train on",
                    "messages",
                    fix="end the conversation with the assistant's answer",
                )
            )
    elif roles[last] != "assistant" and roles[last] is not None:
        found.append(
            error(
                "the last message must be from the assistant",
                f"messages[{last}].role",
                roles[last],
                fix="end the conversation with the assistant's answer, or drop the trailing "
                "message",
            )
        )
    return found


def check_instruction(
    data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> list[DataError]:
    """The instruction rules: a non-empty string ``prompt`` and ``response`` (or ``completion``)."""
    found = []
    if "response" in data and "completion" in data:
        found.append(
            DataError(
                "has both response and completion",
                source=source,
                line=line,
                field="completion",
                fix="keep one of them",
            )
        )
    for name in ("prompt", answer_field(data) or "response"):
        value = data.get(name)
        if name not in data:
            rule = f"missing the '{name}' field"
            if name == "response":
                rule = "missing the 'response' (or 'completion') field"
            found.append(
                DataError(
                    rule, source=source, line=line, field=name, fix=f"write {INSTRUCTION_SHAPE}"
                )
            )
        elif not isinstance(value, str):
            found.append(
                DataError(
                    f"{name} must be a string",
                    source=source,
                    line=line,
                    field=name,
                    value=value,
                    fix=f"write {INSTRUCTION_SHAPE}",
                )
            )
        elif not value.strip():
            found.append(
                DataError(
                    f"{name} is empty",
                    source=source,
                    line=line,
                    field=name,
                    value=value,
                    fix="remove the example or fill it in",
                )
            )
    return found


def chat_notes(
    data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> list[str]:
    """Warnings (not errors) about a valid chat record: assistant messages with empty content
    (and no tool call) train only the end-of-turn token."""
    notes = []
    where = f"{source}:{line}" if line is not None else str(source)
    for index, message in enumerate(data.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if has_tool_calls(message) or (isinstance(content, str) and content.strip()):
            continue
        notes.append(
            f"{where} messages[{index}].content: the assistant message is empty, so only its "
            "end-of-turn token is trained (fill it in or remove the turn)"
        )
    return notes


def uses_name(data: dict[str, Any]) -> bool:
    """Whether any message of a chat record has a ``name``."""
    messages = data.get("messages") if isinstance(data, dict) else None
    return any(isinstance(m, dict) and m.get("name") for m in messages or [])


# --- reading a record: the helpers every rule and render share ------------------------------


def content_ok(message: dict[str, Any]) -> bool:
    """A string content, or none at all on an assistant's tool call (OpenAI writes null there)."""
    content = message.get("content")
    if isinstance(content, str):
        return True
    return content is None and message.get("role") == "assistant" and has_tool_calls(message)


def has_tool_calls(message: dict[str, Any]) -> bool:
    return bool(message.get("tool_calls"))


def is_trained(message: dict[str, Any]) -> bool:
    """Whether an assistant message is trained: ``weight: 0`` renders it but leaves it out."""
    return bool(message.get("weight", 1) != 0)


def answer_field(data: dict[str, Any]) -> str | None:
    """The field holding an instruction record's answer: ``response``, else ``completion``."""
    for name in ("response", "completion"):
        if name in data:
            return name
    return None


def reasoning_of(message: dict[str, Any]) -> tuple[str, str]:
    """``(reasoning, answer)`` of an assistant message: the reasoning from a separate field or
    from a ``<think>…</think>`` block at the start of the content; the answer is the rest."""
    content = message.get("content") or ""
    if not isinstance(content, str):
        content = ""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip(), content.strip()
    if THINK_CLOSE in content:
        head, _, answer = content.partition(THINK_CLOSE)
        return head.split(THINK_OPEN)[-1].strip(), answer.strip()
    return "", content.strip()


# --- what render needs ------------------------------------------------------------------------


def require_messages(
    data: Any, *, source: str | None = None, line: int | None = None
) -> list[dict[str, Any]]:
    """The messages of a chat record, or the first reason it cannot be rendered: not a
    non-empty list, a message without a string role and content, or no assistant message."""
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DataError(
            "a chat record needs a non-empty 'messages' list",
            source=source,
            line=line,
            field="messages",
            fix='write each line as {"messages": [{"role": "user", "content": "..."}, ...]}',
        )
    for i, message in enumerate(messages):
        ok = isinstance(message, dict) and isinstance(message.get("role"), str)
        if not ok or not content_ok(message):
            raise DataError(
                "each message needs a string 'role' and a string 'content'",
                source=source,
                line=line,
                field=f"messages[{i}]",
                value=message,
                fix='use {"role": "user"|"assistant"|"system", "content": "..."}',
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(
            "a chat record needs at least one assistant message",
            source=source,
            line=line,
            field="messages",
            fix="end the conversation with the assistant's answer",
        )
    return messages


def require_instruction(
    data: Any, *, source: str | None = None, line: int | None = None
) -> tuple[str, str]:
    """``(prompt, response)`` of an instruction record, or the first field that is no string."""
    record = data if isinstance(data, dict) else {}
    key = answer_field(record) or "completion"
    prompt, response = record.get("prompt"), record.get(key)
    for name, value in (("prompt", prompt), (key, response)):
        if not isinstance(value, str):
            raise DataError(
                f"an instruction record needs a string '{name}'",
                source=source,
                line=line,
                field=name,
                value=value,
                fix='write each line as {"prompt": "...", "response": "..."}',
            )
    return str(prompt), str(response)


def require_text(data: Any, *, source: str | None = None, line: int | None = None) -> str:
    """The ``text`` of a continued-pretraining record, or why it has none."""
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str):
        raise DataError(
            "a pretraining record needs a string 'text'",
            source=source,
            line=line,
            field="text",
            value=text,
            fix="use a folder of .txt files or records with a 'text' field",
        )
    return text

"""Turn one record into token ids plus the mask of tokens the loss is computed on.

Chat masks must be right for every Hugging Face chat template, including the many without
``{% generation %}`` markers. So instead of parsing templates we render conversation prefixes as
text: the generation prompt for ``messages[:i]`` ends where assistant turn ``i`` starts, and the
rendering of ``messages[: i + 1]`` shows where it ends. The full conversation is then tokenized once
with character offsets, and a token is trained when it overlaps an assistant span (the content plus
its end-of-turn token). Headers, system and user tokens are never trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ftmagic.errors import DataError

CHAT = "CHAT_COMPLETION"
INSTRUCTION = "INSTRUCTION_FINETUNE"
PRETRAIN = "CONTINUED_PRETRAIN"

Span = tuple[int, int]


@dataclass
class TokenizedExample:
    """Token ids of one example and, for each, whether the loss is computed on it."""

    input_ids: list[int]
    trained: list[bool]
    truncated: bool = False
    source: str | None = None
    line: int | None = None

    @property
    def num_trained(self) -> int:
        return sum(self.trained)

    def __len__(self) -> int:
        return len(self.input_ids)


def render(
    tokenizer: Any,
    data: dict[str, Any],
    task_type: str,
    *,
    max_length: int | None = None,
    source: str | None = None,
    line: int | None = None,
) -> TokenizedExample:
    """Tokenize one record of ``task_type`` and mark the tokens the loss is computed on.

    Raises ``DataError`` (with source, line and field) when the record cannot be rendered or when
    nothing would be trained.
    """
    if task_type == CHAT:
        ids, trained = render_chat(tokenizer, data, source=source, line=line)
    elif task_type == INSTRUCTION:
        ids, trained = render_instruction(tokenizer, data, source=source, line=line)
    elif task_type == PRETRAIN:
        ids, trained = render_text(tokenizer, data, source=source, line=line)
    else:
        raise DataError(
            f"unknown task_type {task_type!r}",
            source=source,
            line=line,
            fix="use CHAT_COMPLETION, INSTRUCTION_FINETUNE or CONTINUED_PRETRAIN",
        )
    example = TokenizedExample(ids, trained, False, source, line)
    if max_length is not None and len(ids) > max_length:
        example = TokenizedExample(ids[:max_length], trained[:max_length], True, source, line)
    if example.num_trained == 0:
        raise _nothing_trained(example, max_length, task_type, source, line)
    return example


def _nothing_trained(
    example: TokenizedExample,
    max_length: int | None,
    task_type: str,
    source: str | None,
    line: int | None,
) -> DataError:
    field = "messages" if task_type == CHAT else ("response" if task_type == INSTRUCTION else None)
    if example.truncated:
        return DataError(
            f"no trained token is left after truncating to {max_length} tokens",
            source=source,
            line=line,
            field=field,
            fix="raise context_length or shorten the text before the first trained part",
        )
    return DataError(
        "this example has no token to train on",
        source=source,
        line=line,
        field=field,
        fix="give it a non-empty assistant message or response",
    )


# --- chat ------------------------------------------------------------------------------------


def render_chat(
    tokenizer: Any, data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> tuple[list[int], list[bool]]:
    """Token ids and trained flags of a ``{"messages": [...]}`` conversation."""
    messages = _messages(data, source, line)
    text, spans = chat_spans(tokenizer, messages, source=source, line=line)
    return tokenize_with_spans(tokenizer, text, spans, add_special_tokens=False)


def chat_spans(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    source: str | None = None,
    line: int | None = None,
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character span of each assistant turn in it."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the model's tokenizer has no chat template",
            source=source,
            line=line,
            field="messages",
            fix="use an instruct/chat model, or task_type INSTRUCTION_FINETUNE with "
            "prompt/response records",
        )
    full = _apply(tokenizer, messages, False, source, line)
    anchors = _content_positions(full, messages, source, line)
    specials = _special_strings(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            span = _turn_by_prefix(tokenizer, messages, i, full, specials, source, line)
            if span is None:
                span = _turn_by_search(tokenizer, messages, i, full, anchors[i], specials)
            spans.append(span)
    return full, spans


def _messages(data: Any, source: str | None, line: int | None) -> list[dict[str, Any]]:
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
        if not ok or not isinstance(message.get("content"), str):
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


def _apply(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    generation_prompt: bool,
    source: str | None,
    line: int | None,
) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as err:
        raise DataError(
            f"the model's chat template rejects this conversation: {err}",
            source=source,
            line=line,
            field="messages",
            fix="change the roles or order of the messages to what this model's template accepts",
        ) from None
    return str(text)


def _content_positions(
    full: str, messages: list[dict[str, Any]], source: str | None, line: int | None
) -> list[int]:
    """Where each message's content ends in ``full`` (user and assistant turns keep their order;
    some templates move the system message). A message that cannot be found was dropped."""
    ends = []
    cursor = 0
    for i, message in enumerate(messages):
        content = message["content"].strip()
        start = cursor if message["role"] != "system" else 0
        pos = full.find(content, start)
        if pos < 0:
            raise DataError(
                f"the model's chat template drops this {message['role']} message: its content "
                "is not in the rendered conversation",
                source=source,
                line=line,
                field=f"messages[{i}].content",
                value=message["content"],
                fix="fold it into another message or use a model whose template keeps it",
            )
        end = pos + len(content)
        if message["role"] != "system":
            cursor = end
        ends.append(end)
    # anchors[i]: where the search for message i may start (end of the previous turn).
    previous = [0]
    for i in range(1, len(messages)):
        previous.append(ends[i - 1] if messages[i - 1]["role"] != "system" else previous[-1])
    return previous


def _special_strings(tokenizer: Any) -> list[str]:
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        strings.add(str(getattr(token, "content", token)))
    return sorted((s for s in strings if s), key=len, reverse=True)


def _turn_by_prefix(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    i: int,
    full: str,
    specials: list[str],
    source: str | None,
    line: int | None,
) -> Span | None:
    """Assistant turn ``i`` as the text between the generation prompt of ``messages[:i]`` and the
    rendering of ``messages[: i + 1]``, when both are prefixes of the full conversation."""
    prompt = _apply(tokenizer, messages[:i], True, source, line)
    upto = _apply(tokenizer, messages[: i + 1], False, source, line)
    if not (full.startswith(prompt) and upto.startswith(prompt)):
        return None
    turn = _common_prefix(upto[len(prompt) :], full[len(prompt) :])
    content = messages[i]["content"].strip()
    at = turn.find(content) if content else 0
    if at < 0:
        return None
    end = _end_of_turn(turn, at + len(content), specials)
    return (len(prompt), len(prompt) + end)


def _turn_by_search(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    i: int,
    full: str,
    anchor: int,
    specials: list[str],
) -> Span:
    """Fallback for templates whose prefixes are not prefixes of the whole (for example a system
    message moved to the last user turn): find the content after the previous turn and extend it
    by the end-of-turn text the template puts after it."""
    content = messages[i]["content"].strip()
    start = full.find(content, anchor)
    upto = _apply(tokenizer, messages[: i + 1], False, None, None)
    after_in_upto = upto.rfind(content) + len(content)
    tail = _common_prefix(upto[after_in_upto:], full[start + len(content) :])
    end = start + _end_of_turn(content + tail, len(content), specials)
    # Spaces the template puts right before the answer (Mistral's "[/INST] ") are generated by the
    # model, as the prefix method finds, since they are not part of any generation prompt.
    while start > anchor and full[start - 1] == " ":
        start -= 1
    return (start, end)


def _end_of_turn(turn: str, content_end: int, specials: list[str]) -> int:
    """End of the trained text in ``turn``: just after the first special token following the
    content (the end-of-turn token generation stops at); the whole turn when there is none."""
    best = None
    for special in specials:
        pos = turn.find(special, content_end)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, pos + len(special))
    return best[1] if best else len(turn)


def _common_prefix(a: str, b: str) -> str:
    if b.startswith(a):
        return a
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return a[:n]


def tokenize_with_spans(
    tokenizer: Any, text: str, spans: list[Span], *, add_special_tokens: bool
) -> tuple[list[int], list[bool]]:
    """Tokenize ``text`` once and flag each token that overlaps one of the character ``spans``."""
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    trained = [
        any(start < span_end and span_start < end for span_start, span_end in spans)
        for start, end in encoded["offset_mapping"]
    ]
    return ids, trained


# --- instruction and plain text --------------------------------------------------------------


def render_instruction(
    tokenizer: Any, data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> tuple[list[int], list[bool]]:
    """``prompt`` + ``response`` with no template; the response and EOS are trained."""
    prompt = data.get("prompt") if isinstance(data, dict) else None
    key = "response" if isinstance(data, dict) and "response" in data else "completion"
    response = data.get(key) if isinstance(data, dict) else None
    for field, value in (("prompt", prompt), (key, response)):
        if not isinstance(value, str):
            raise DataError(
                f"an instruction record needs a string '{field}'",
                source=source,
                line=line,
                field=field,
                value=value,
                fix='write each line as {"prompt": "...", "response": "..."}',
            )
    assert isinstance(prompt, str) and isinstance(response, str)
    text = prompt + response
    ids, trained = tokenize_with_spans(
        tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True
    )
    return _with_eos(tokenizer, ids, trained)


def render_text(
    tokenizer: Any, data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> tuple[list[int], list[bool]]:
    """A ``{"text": ...}`` document for continued pretraining: every token trained, then EOS."""
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
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return _with_eos(tokenizer, ids, [True] * len(ids))


def _with_eos(tokenizer: Any, ids: list[int], trained: list[bool]) -> tuple[list[int], list[bool]]:
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        return [*ids, eos], [*trained, True]
    if ids:
        trained = [*trained[:-1], True]
    return ids, trained


def chunk_texts(tokenizer: Any, texts: Iterable[str], length: int) -> Iterator[TokenizedExample]:
    """Continued pretraining: documents joined with EOS and cut into ``length``-token sequences,
    every token trained. The last, shorter sequence is kept when it has at least 2 tokens."""
    eos = tokenizer.eos_token_id
    buffer: list[int] = []
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= length:
            chunk, buffer = buffer[:length], buffer[length:]
            yield TokenizedExample(chunk, [True] * length)
    if len(buffer) >= 2:
        yield TokenizedExample(buffer, [True] * len(buffer))

"""Token counts of whole batches of examples, equal to what ``render`` produces one by one.

``validate`` counts every example of a dataset; doing it with ``render`` (one tokenizer call and
several template renderings per example, for the exact loss mask) is several times slower than
tokenizing the data. ``TokenCounter`` sends a batch of texts to the fast tokenizer in one call and
reads the trained-token counts off the encodings, and keeps checking itself against ``render``.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from ftmagic.data.readers import Record
from ftmagic.data.rules import CHAT
from ftmagic.errors import DataError

logger = logging.getLogger(__name__)


class Counted(NamedTuple):
    """One example's full length in tokens, and its trained tokens within the context length."""

    length: int
    trained: int


Plan = tuple[str, list[tuple[int, int]]]
"""An example's text to tokenize and the character spans of its trained parts."""


class TokenCounter:
    """Counts tokens as ``render`` builds examples, but a whole batch per tokenizer call.

    ``render`` tokenizes one example at a time to get its exact loss mask; counting a large file
    that way is several times slower than tokenizing it. Here a batch of texts (the rendered
    conversations, or prompt + response) goes to the fast tokenizer in one call (Rust, on every
    core), and the trained tokens are those overlapping the assistant turns' (or the response's)
    character spans, as in ``render``. The first examples and then one in every ``CHECK_EVERY``
    are also counted with ``render``; if they ever disagree, ``render`` counts every later one.
    """

    CHECK_FIRST = 16
    CHECK_EVERY = 1000

    def __init__(self, tokenizer: Any, task_type: str, options: Any = None) -> None:
        from ftmagic.data.render import ChatOptions

        self.tokenizer = tokenizer
        self.task_type = task_type
        self.options = options or ChatOptions()
        self.seen = 0
        self.problem: DataError | None = None
        fast = getattr(tokenizer, "is_fast", False)
        self._backend = getattr(tokenizer, "backend_tokenizer", None) if fast else None
        # Only "all" turns are counted in batches; the other modes go through render.
        self.exact = self._backend is None or (task_type == CHAT and self.options.turns != "all")
        self._eos_id = tokenizer.eos_token_id
        if task_type == CHAT:
            self.problem = _template_problem(tokenizer)
            self._turn_end = _turn_end(tokenizer)
            self._template = _template_renderer(tokenizer)
        else:
            self._adds_eos = _adds_eos(tokenizer)

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` (no special tokens added), in one batched call."""
        if not texts:
            return []
        if self._backend is not None:
            return [
                len(e) for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)
            ]
        return [len(i) for i in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def count_texts(self, texts: list[str]) -> list[int]:
        """Continued pretraining: each document's tokens plus the EOS that ends it."""
        extra = 0 if self._eos_id is None else 1
        return [n + extra for n in self.lengths(texts)]

    def count_records(
        self, records: list[Record], context_length: int | None
    ) -> list[Counted | DataError]:
        """``Counted`` (or the ``DataError`` that ``render`` would raise) for each record."""
        return self.finish(records, self.prepare(records), context_length)

    def prepare(self, records: list[Record]) -> list[Any]:
        """The pure-Python half (chat templates); ``scan`` runs it while the tokenizer works on
        the previous batch in another thread."""
        if self.exact:
            return []
        if self.task_type == CHAT:
            return [self._chat_plan(r) for r in records]
        return [_instruction_plan(r) for r in records]

    def finish(
        self, records: list[Record], prepared: list[Any], context_length: int | None
    ) -> list[Counted | DataError]:
        """The tokenizer half (which releases the GIL) and the per-example tallies."""
        if self.exact:
            return [c for r in records for c in self.render_counts(r, context_length)]
        counts = self._count_spans(records, prepared, context_length)
        return self._spot_check(records, counts, context_length)

    def render_count(self, record: Record, context_length: int | None) -> Counted | DataError:
        """The exact count of the record's (first) example, through ``render``."""
        return self.render_counts(record, context_length)[0]

    def render_counts(
        self, record: Record, context_length: int | None
    ) -> list[Counted | DataError]:
        """The exact count of every example the record makes (several with ``split`` turns)."""
        from ftmagic.data.render import render_examples

        try:
            examples = render_examples(
                self.tokenizer,
                record.data,
                self.task_type,
                source=record.source,
                line=record.line,
                options=self.options,
            )
        except DataError as err:
            return [err]
        counts: list[Counted | DataError] = []
        for example in examples:
            kept = example.trained if context_length is None else example.trained[:context_length]
            counts.append(
                _finish(len(example.input_ids), sum(kept), record, context_length, self.task_type)
            )
        return counts

    def _spot_check(
        self, records: list[Record], counts: list[Counted | DataError], context_length: int | None
    ) -> list[Counted | DataError]:
        for index, (record, fast) in enumerate(zip(records, counts, strict=True)):
            number = self.seen + index
            if number >= self.CHECK_FIRST and number % self.CHECK_EVERY:
                continue
            exact = self.render_count(record, context_length)
            if _same(fast, exact):
                continue
            logger.info(
                "batched token counts differ from render at %s:%s (%s, render: %s); counting "
                "with render from here on",
                record.source,
                record.line,
                fast,
                exact,
            )
            self.exact = True
            self.seen += len(records)
            return [c for r in records for c in self.render_counts(r, context_length)]
        self.seen += len(records)
        return counts

    def _count_spans(
        self,
        records: list[Record],
        plans: list[Plan | DataError | None],
        context_length: int | None,
    ) -> list[Counted | DataError]:
        """Tokenize the plans' texts in one call; count the tokens overlapping the trained spans
        (as ``render`` marks them) by asking the encodings which token holds each span's ends."""
        texts = [plan[0] for plan in plans if isinstance(plan, tuple)]
        assert self._backend is not None
        chat = self.task_type == CHAT
        encodings = iter(self._backend.encode_batch(texts, add_special_tokens=not chat))
        eos = 0 if chat or self._adds_eos else 1
        counts: list[Counted | DataError] = []
        for record, plan in zip(records, plans, strict=True):
            if not isinstance(plan, tuple):
                counts.append(plan or self.render_count(record, context_length))
                continue
            encoding = next(encodings)
            length = len(encoding) + eos
            limit = length if context_length is None else context_length
            trained = _trained_in_spans(encoding, plan[1], limit)
            if trained is None:
                counts.append(self.render_count(record, context_length))
                continue
            # Instruction examples end with an EOS that is trained too.
            trained += 1 if not chat and length <= limit else 0
            counts.append(_finish(length, trained, record, context_length, self.task_type))
        return counts

    def _chat_plan(self, record: Record) -> Plan | DataError | None:
        """The rendered text and assistant spans; None leaves the example to ``render`` (an
        empty or dropped assistant message)."""
        messages = record.data["messages"]
        if not _plain_chat(record.data):
            return None
        if self.options.fold_system_prompt:
            from ftmagic.data.render import prepare_messages

            messages = prepare_messages(messages, fold_system=True)
        try:
            text = self._template(messages)
        except Exception as err:  # jinja2's TemplateError, or whatever the template raises
            return DataError(
                f"the model's chat template rejects this conversation: {err}",
                source=record.source,
                line=record.line,
                field="messages",
                fix="change the roles or order of the messages to what this model's template "
                "accepts",
            )
        spans = _assistant_spans(text, messages, self._turn_end)
        return None if spans is None else (text, spans)


def _plain_chat(data: dict[str, Any]) -> bool:
    """A conversation of plain user/assistant/system text, which the batched count handles;
    reasoning, weights and tools are left to ``render``."""
    if data.get("tools"):
        return False
    for message in data["messages"]:
        content = message.get("content")
        if not isinstance(content, str) or "</think>" in content:
            return False
        if message.get("role") not in ("system", "user", "assistant"):
            return False
        if any(k in message for k in ("weight", "tool_calls", "reasoning_content", "thinking")):
            return False
    return True


def _instruction_plan(record: Record) -> Plan:
    data = record.data
    prompt = data["prompt"]
    text = prompt + (data["response"] if "response" in data else data["completion"])
    return text, [(len(prompt), len(text))]


def _trained_in_spans(encoding: Any, spans: list[tuple[int, int]], limit: int) -> int | None:
    """Tokens of ``encoding`` before ``limit`` that overlap a character span (None when a span's
    end characters map to no token, which ``render`` then settles)."""
    trained = 0
    for start, end in spans:
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            return None
        trained += max(0, min(last + 1, limit) - first)
    return trained


def _finish(
    length: int, trained: int, record: Record, context_length: int | None, task_type: str
) -> Counted | DataError:
    """The count, or the error ``render`` gives when no trained token is left."""
    if trained:
        return Counted(length, int(trained))
    field = "messages" if task_type == CHAT else "response"
    if context_length is not None and length > context_length:
        return DataError(
            f"no trained token is left after truncating to {context_length} tokens",
            source=record.source,
            line=record.line,
            field=field,
            fix="raise context_length or shorten the text before the first trained part",
        )
    return DataError(
        "this example has no token to train on",
        source=record.source,
        line=record.line,
        field=field,
        fix="give it a non-empty assistant message or response",
    )


def _same(fast: Counted | DataError, exact: Counted | DataError) -> bool:
    if isinstance(fast, DataError) or isinstance(exact, DataError):
        return isinstance(fast, DataError) and isinstance(exact, DataError)
    return fast == exact


def _assistant_spans(
    text: str, messages: list[dict[str, Any]], turn_end: str
) -> list[tuple[int, int]] | None:
    """Character spans of the assistant turns in the rendered conversation: each content plus its
    end-of-turn marker (None when the template dropped an assistant message)."""
    spans = []
    cursor = 0
    for message in messages:
        if message["role"] != "assistant":
            continue
        content = message["content"].strip()
        start = text.find(content, cursor) if content else -1
        if start < 0:
            return None
        end = start + len(content)
        if turn_end and text.startswith(turn_end, end):
            end += len(turn_end)
        if end > start:
            spans.append((start, end))
        cursor = end
    return spans


def _template_problem(tokenizer: Any) -> DataError | None:
    if getattr(tokenizer, "chat_template", None):
        return None
    return DataError(
        "the model's tokenizer has no chat template",
        source="config",
        field="model",
        fix="use an instruct/chat model, or task_type INSTRUCTION_FINETUNE with prompt/response "
        "records",
    )


def _turn_end(tokenizer: Any) -> str:
    """The text the template closes an assistant turn with (``<|eot_id|>``, ``<|im_end|>``), as
    ``render`` trains it, so the model learns to stop."""
    from ftmagic.data.render import turn_closing

    return turn_closing(tokenizer)


def _template_renderer(tokenizer: Any) -> Any:
    """A function rendering one conversation as ``apply_chat_template(tokenize=False)`` does.

    ``apply_chat_template`` spends more time copying and normalising each conversation than
    rendering it; the records here are plain JSON already, so we render transformers' own compiled
    template directly, with the same variables. The spot check against ``render`` (which calls
    ``apply_chat_template``) catches any difference, and without the helper we use the public call.
    """

    def public(messages: list[dict[str, Any]]) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False))

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        template = _compile_jinja_template(tokenizer.chat_template)
    except Exception:  # an older or newer transformers, or no template: the public call
        return public
    variables = {**tokenizer.special_tokens_map, "tools": None, "documents": None}

    def direct(messages: list[dict[str, Any]]) -> str:
        return str(template.render(messages=messages, add_generation_prompt=False, **variables))

    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    try:
        same = direct(probe) == public(probe)
    except Exception:  # the template needs something only apply_chat_template provides
        same = False
    return direct if same else public


def _adds_eos(tokenizer: Any) -> bool:
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id

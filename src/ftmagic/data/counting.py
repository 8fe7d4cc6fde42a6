"""Token counts of whole batches of examples, equal to what ``render`` produces one by one.

``validate`` counts every example of a dataset; doing it with ``render`` (one tokenizer call per
example) is several times slower than tokenizing the data in batches. ``TokenCounter`` takes each
example's plan from ``render.plan_example`` (the rendered text and its trained character spans, as
``render`` takes it), sends a batch of texts to the fast tokenizer in one call, and marks the
trained tokens with ``render.plan_tokens``. Nothing about which tokens are trained is decided
here, so the counts are ``render``'s by construction.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any, NamedTuple

from ftmagic.data.readers import Record
from ftmagic.data.render import (
    ChatOptions,
    Plan,
    Span,
    TokenizedExample,
    example_records,
    finish_example,
    no_chat_template,
    plan_example,
    plan_tokens,
)
from ftmagic.data.rules import CHAT
from ftmagic.errors import DataError

KNOWN_TEXTS = 20_000
KNOWN_TEXT_CHARS = 1_000


class Counted(NamedTuple):
    """One example's full length in tokens, and its trained tokens within the context length."""

    length: int
    trained: int


class Job(NamedTuple):
    """One example to count: its text first (what a caller of ``prepare`` may tokenize), its plan
    and record; or, with no plan, the ``DataError`` that ``render`` raises for the record."""

    text: str
    plan: Plan | None
    record: Record
    error: DataError | None = None


class TokenCounter:
    """Counts tokens as ``render_examples`` builds examples, but a whole batch per tokenizer call
    (Rust, on every core). A record that ``render`` refuses gives its ``DataError`` instead."""

    def __init__(self, tokenizer: Any, task_type: str, options: ChatOptions | None = None) -> None:
        self.tokenizer = tokenizer
        self.task_type = task_type
        self.options = options or ChatOptions()
        self.problem: DataError | None = None
        if task_type == CHAT and not getattr(tokenizer, "chat_template", None):
            self.problem = no_chat_template(source="config", field="model")
        fast = getattr(tokenizer, "is_fast", False)
        self._backend = getattr(tokenizer, "backend_tokenizer", None) if fast else None
        self._eos_id = tokenizer.eos_token_id
        self._known: dict[str, int] = {}

    def lengths(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` (no special tokens added), in one batched call. Short texts
        already counted (a system prompt every record shares) are not tokenized again."""
        if len(self._known) > KNOWN_TEXTS:
            self._known.clear()
        known = self._known
        new = [t for t in dict.fromkeys(texts) if t not in known]
        counts = dict(zip(new, self._token_counts(new), strict=True))
        known.update((t, n) for t, n in counts.items() if len(t) <= KNOWN_TEXT_CHARS)
        return [known[t] if t in known else counts[t] for t in texts]

    def _token_counts(self, texts: list[str]) -> list[int]:
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
        """``Counted`` for each example of the records (several with ``chat_turns: split``), or
        the ``DataError`` that ``render`` raises for a record."""
        return self.finish(records, self.prepare(records), context_length)

    def prepare(self, records: list[Record]) -> list[Job]:
        """The pure-Python half (chat templates); ``scan`` runs it while the tokenizer works on
        the previous batch in another thread."""
        return [job for record in records for job in self._jobs(record)]

    def finish(
        self, records: list[Record], jobs: list[Job], context_length: int | None
    ) -> list[Counted | DataError]:
        """The tokenizer half (which releases the GIL) and the per-example tallies."""
        tokens = iter(self._tokenize([job.plan for job in jobs if job.plan is not None]))
        counts: list[Counted | DataError] = []
        for _, group in groupby(jobs, key=lambda job: id(job.record)):
            made = [self._example(job, next(tokens) if job.plan else None) for job in group]
            # As in render_examples, the first example a record cannot make fails the record.
            failed = [m for m in made if isinstance(m, DataError)]
            examples = [m for m in made if isinstance(m, TokenizedExample)]
            counts += failed[:1] or [self._count(e, context_length) for e in examples]
        return counts

    def _jobs(self, record: Record) -> list[Job]:
        datas = example_records(record.data, self.task_type, self.options)
        try:
            plans = [self._plan(data, record) for data in datas]
        except DataError as err:
            return [Job("", None, record, err)]
        return [Job(plan.text, plan, record) for plan in plans]

    def _plan(self, data: Any, record: Record) -> Plan:
        return plan_example(
            self.tokenizer,
            data,
            self.task_type,
            source=record.source,
            line=record.line,
            options=self.options,
        )

    def _example(
        self, job: Job, tokens: tuple[list[int], list[Span]] | None
    ) -> TokenizedExample | DataError:
        if job.plan is None or tokens is None:
            assert job.error is not None
            return job.error
        ids, trained = plan_tokens(self.tokenizer, job.plan, *tokens)
        try:
            return finish_example(
                ids, trained, self.task_type, None, source=job.record.source, line=job.record.line
            )
        except DataError as err:
            return err

    def _count(self, example: TokenizedExample, context_length: int | None) -> Counted | DataError:
        """The example's length and trained tokens within the context length, or the error
        when truncation leaves none."""
        if context_length is None or len(example) <= context_length:
            return Counted(len(example), example.num_trained)
        try:
            kept = finish_example(
                example.input_ids,
                example.trained,
                self.task_type,
                context_length,
                source=example.source,
                line=example.line,
            )
        except DataError as err:
            return err
        return Counted(len(example), kept.num_trained)

    def _tokenize(self, plans: list[Plan]) -> list[tuple[list[int], list[Span]] | None]:
        """Ids and character offsets of each plan's text, as ``render`` tokenizes it, in one
        call per special-tokens setting."""
        out: list[tuple[list[int], list[Span]] | None] = [None] * len(plans)
        for special in (False, True):
            index = [i for i, plan in enumerate(plans) if plan.special_tokens == special]
            texts = [plans[i].text for i in index]
            for i, tokens in zip(index, self._encode(texts, special), strict=True):
                out[i] = tokens
        return out

    def _encode(self, texts: list[str], special: bool) -> list[tuple[list[int], list[Span]]]:
        if not texts:
            return []
        backend = self._same_backend()
        if backend is not None:
            encodings = backend.encode_batch(texts, add_special_tokens=special)
            return [(e.ids, e.offsets) for e in encodings]
        encoded = self.tokenizer(texts, add_special_tokens=special, return_offsets_mapping=True)
        return list(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True))

    def _same_backend(self) -> Any:
        """The Rust tokenizer when calling it gives what ``tokenizer(text)`` gives (which first
        turns off the truncation and padding a tokenizer file may set, and sets how special
        tokens are split); None otherwise."""
        backend = self._backend
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return None
        split = bool(getattr(self.tokenizer, "split_special_tokens", False))
        return backend if getattr(backend, "encode_special_tokens", split) == split else None

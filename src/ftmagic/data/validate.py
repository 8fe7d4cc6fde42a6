"""Validate a run before it starts: data rules, token counts, truncation, steps, time, advice.

``validate(config)`` never raises for bad data or a bad model name: every problem becomes an error
in the ``ValidationReport``, with its file, line and field. The data is streamed once; token counts
come from batched tokenization (``ftmagic.data.counting``), so a large file costs about the time of
tokenizing it and the memory of one batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import math
import os
import time
from array import array
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from ftmagic.caching import CopyCache
from ftmagic.config import MAX_TOTAL_TOKENS, DatasetStats, RunConfig
from ftmagic.data.counting import Counted, TokenCounter
from ftmagic.data.formats import Converter, first_system_prompt, runs_together
from ftmagic.data.readers import (
    Record,
    iter_records,
    iter_text_files,
    looks_like_record_source,
)
from ftmagic.data.render import ChatOptions
from ftmagic.data.rules import (
    CHAT,
    INSTRUCTION,
    PRETRAIN,
    chat_notes,
    check_record,
    task_mismatch,
    uses_name,
)
from ftmagic.data.templates import chat_report_notes
from ftmagic.errors import DataError, FtmagicError, ValidationFailed

if TYPE_CHECKING:
    from ftmagic.data.estimate import Measure

BATCH = 512
MIN_PRETRAIN_TOKENS = 1_500_000
EPOCH_RANGE = (1.0, 4.0)
LOW_TRAINED_SHARE = 0.10
SYSTEM_PROMPT_SHARE = 0.5
RENDER_SAMPLE = 32


@dataclass
class Histogram:
    """Example lengths in tokens: ``counts[i]`` examples fall in ``[edges[i], edges[i + 1])``."""

    edges: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, lengths: array, bins: int = 16) -> Histogram:
        if not lengths:
            return cls()
        low, high = min(lengths), max(lengths) + 1
        step = max(1, math.ceil((high - low) / bins))
        counts = [0] * math.ceil((high - low) / step)
        for length in lengths:
            counts[(length - low) // step] += 1
        return cls([low + i * step for i in range(len(counts) + 1)], counts)

    def to_dict(self) -> dict[str, list[int]]:
        return {"edges": self.edges, "counts": self.counts}


class ErrorLog(list[DataError]):
    """A list that keeps the first ``limit`` errors and counts them all (readers append to it)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0
        self.notes: list[str] = []  # per-record warnings (ftmagic.data.rules.chat_notes)
        self.num_notes = 0
        self.uses_name = False

    def append(self, error: DataError) -> None:
        self.total += 1
        if len(self) < self.limit:
            super().append(error)


_UNSET = object()


@dataclass
class DataTally:
    """What one pass over a data source found."""

    num_examples: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0
    num_truncated: int = 0
    lengths: array = field(default_factory=lambda: array("I"))
    role_tokens: dict[str, int] = field(default_factory=dict)
    system_prompt: Any = _UNSET  # the one every example starts with; None when they differ
    run_together: int = 0
    run_together_example: tuple[str, str] | None = None
    sample: list[Record] = field(default_factory=list)

    def add_roles(self, counter: TokenCounter, records: list[Record], task_type: str) -> None:
        """Tokens of each role's text (before truncation), in one batched tokenizer call."""
        roles, texts = _role_texts(records, task_type)
        for role, count in zip(roles, counter.lengths(texts), strict=True):
            self.role_tokens[role] = self.role_tokens.get(role, 0) + count

    def add_shape(self, record: Record, task_type: str) -> None:
        """The shared system prompt (chat) and prompts that run into their response."""
        if len(self.sample) < RENDER_SAMPLE:
            self.sample.append(record)
        if task_type == CHAT:
            system = first_system_prompt(record.data)
            if self.system_prompt is _UNSET:
                self.system_prompt = system
            elif system != self.system_prompt:
                self.system_prompt = None
        elif task_type == INSTRUCTION:
            prompt = record.data.get("prompt")
            response = record.data.get("response", record.data.get("completion"))
            ok = isinstance(prompt, str) and isinstance(response, str)
            if ok and runs_together(str(prompt), str(response)):
                self.run_together += 1
                if self.run_together_example is None:
                    self.run_together_example = (str(prompt)[-24:], str(response)[:24])

    def add(self, length: int, trained: int, context_length: int | None) -> None:
        self.num_examples += 1
        self.lengths.append(length)
        kept = length if context_length is None else min(length, context_length)
        self.total_tokens += kept
        self.trained_tokens += trained
        if context_length is not None and length > context_length:
            self.num_truncated += 1


@dataclass
class ValidationReport:
    """The outcome of ``validate``: errors (first ``max_errors`` of ``num_errors``), warnings and
    the numbers that size the run. Token counts are after truncation to ``context_length``."""

    model: str
    task_type: str
    train_data_path: str
    errors: list[DataError]
    num_errors: int
    warnings: list[str]
    recommendations: list[str]
    num_examples: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0
    num_truncated: int = 0
    context_length: int | None = None
    length_histogram: Histogram = field(default_factory=Histogram)
    estimated_steps: int | None = None
    estimated_seconds: float | None = None
    eval_data_path: str | None = None
    eval_num_examples: int = 0
    eval_tokens: int = 0
    conversions: list[str] = field(default_factory=list)
    role_tokens: dict[str, int] = field(default_factory=dict)
    system_prompt: str | None = None
    estimate_parts: dict[str, float] = field(default_factory=dict)
    memory: Any = None  # ftmagic.models.memory.MemoryEstimate: peak memory per device

    @property
    def trained_share(self) -> float | None:
        """Trained tokens over all tokens (after truncation); None without counts."""
        return self.trained_tokens / self.total_tokens if self.total_tokens else None

    @property
    def ok(self) -> bool:
        return self.num_errors == 0

    def stats(self) -> DatasetStats:
        return DatasetStats(self.num_examples, self.total_tokens, self.trained_tokens)

    def raise_if_failed(self) -> None:
        """Raise ``ValidationFailed`` (listing the first errors) unless the report is ok."""
        if self.ok:
            return
        shown = self.errors[:5]
        lines = [f"validation found {self.num_errors} error(s):"]
        lines += [f"  {e}" for e in shown]
        if self.num_errors > len(shown):
            lines.append(f"  ... and {self.num_errors - len(shown)} more")
        raise ValidationFailed(self, "\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "model": self.model,
            "task_type": self.task_type,
            "train_data_path": self.train_data_path,
            "num_errors": self.num_errors,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
            "recommendations": list(self.recommendations),
            "num_examples": self.num_examples,
            "total_tokens": self.total_tokens,
            "trained_tokens": self.trained_tokens,
            "num_truncated": self.num_truncated,
            "context_length": self.context_length,
            "length_histogram": self.length_histogram.to_dict(),
            "estimated_steps": self.estimated_steps,
            "estimated_seconds": self.estimated_seconds,
            "eval_data_path": self.eval_data_path,
            "eval_num_examples": self.eval_num_examples,
            "eval_tokens": self.eval_tokens,
            "conversions": list(self.conversions),
            "role_tokens": dict(self.role_tokens),
            "trained_share": self.trained_share,
            "system_prompt": self.system_prompt,
            "estimate_parts": dict(self.estimate_parts),
            "memory": self.memory.to_dict() if self.memory is not None else None,
        }

    def summary_lines(self) -> list[str]:
        verdict = "OK" if self.ok else f"{self.num_errors} error(s)"
        lines = [
            f"Validation of {self.train_data_path or '<no train_data_path>'} "
            f"({self.task_type}, model {self.model or '<none>'}): {verdict}",
            f"Examples: {self.num_examples:,}   tokens: {self.total_tokens:,} "
            f"(trained: {self.trained_tokens:,}{_share_text(self.trained_share)})",
            f"Context length: {_maybe(self.context_length)}   truncated examples: "
            f"{self.num_truncated:,}",
        ]
        if self.role_tokens:
            lines.append("Tokens by role: " + _roles_text(self.role_tokens))
        lines += [f"Converted: {note}" for note in self.conversions]
        if self.eval_data_path:
            lines.append(
                f"Eval data {self.eval_data_path}: {self.eval_num_examples:,} examples, "
                f"{self.eval_tokens:,} tokens"
            )
        if self.estimated_steps is not None:
            lines.append(
                f"Estimated: {self.estimated_steps:,} optimizer steps, "
                f"{_duration_text(self.estimated_seconds)}{_parts_text(self.estimate_parts)}"
            )
        if self.memory is not None:
            lines += self.memory.lines()
        return lines

    def __str__(self) -> str:
        lines = self.summary_lines()
        if self.length_histogram.counts:
            lines.append("Example lengths (tokens):")
            lines += _text_histogram(self.length_histogram)
        if self.errors:
            lines.append(f"Errors (showing {len(self.errors)} of {self.num_errors}):")
            lines += [f"  {e}" for e in self.errors]
        if self.warnings:
            lines.append("Warnings:")
            lines += [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        colour = "#1a7f37" if self.ok else "#cf222e"
        parts = [
            "<div class='ftmagic-validation' style='font-family:sans-serif;font-size:13px'>",
            f"<div style='font-weight:bold;color:{colour}'>{esc(self.summary_lines()[0])}</div>",
            "<div>" + "<br>".join(esc(line) for line in self.summary_lines()[1:]) + "</div>",
        ]
        if self.length_histogram.counts:
            parts.append(_html_histogram(self.length_histogram, self.context_length))
        if self.errors:
            parts.append(_html_errors(self.errors, self.num_errors))
        if self.warnings:
            items = "".join(f"<li>{esc(w)}</li>" for w in self.warnings)
            parts.append(f"<div style='color:#9a6700'>Warnings:<ul>{items}</ul></div>")
        parts.append("</div>")
        return "".join(parts)


# --- validate -----------------------------------------------------------------------------------
VALIDATION_CACHE_SIZE = 8
_validation_cache: CopyCache[ValidationReport] = CopyCache(VALIDATION_CACHE_SIZE)


def validate(
    config: RunConfig, *, max_errors: int = 20, measure: Measure | None = None
) -> ValidationReport:
    """Check ``config``'s model and data against the task's rules and size the run.

    The time estimate comes from a short measured calibration of the model on this machine's
    device, cached per model and device. ``measure`` makes one when none is cached (the public
    ``ftmagic.validate`` passes the trainer's ``ftmagic.train.calibration.measure``); without it
    only the cache is read, and without a cached calibration the time is unknown.

    The report of local data is kept per process, keyed by the config and the data files' sizes
    and mtimes (``data_files_fingerprint``): validating unchanged data again returns a copy of it
    at once.
    """
    calibrate = measure is not None
    key = validation_key(config, max_errors, calibrate)
    cached = _validation_cache.get(key)
    if cached is not None:
        return cached
    report = _validate(config, max_errors=max_errors, measure=measure)
    _validation_cache.put(key, report)
    return report


def clear_validation_cache() -> None:
    _validation_cache.clear()


def validation_key(config: RunConfig, max_errors: int, calibrate: bool) -> str | None:
    """What decides a validation report, hashed; ``None`` (not cached) when a data path is not
    a readable local file or folder."""
    from ftmagic.data import estimate

    paths = [p for p in (config.train_data_path, config.eval_data_path) if p]
    files = data_files_fingerprint(paths)
    if files is None or not paths:
        return None
    estimates = str(estimate.cache_file(config.model, "any").parent)  # a new calibration counts
    calibrations = data_files_fingerprint([estimates]) if os.path.isdir(estimates) else []
    key = [config.to_dict(), max_errors, calibrate, files, calibrations]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def data_files_fingerprint(paths: list[str]) -> list[list[Any]] | None:
    """(path, size, mtime) of every file under ``paths``; ``None`` for remote or missing paths."""
    found: list[list[Any]] = []
    for path in paths:
        if "://" in path or not os.path.exists(path):
            return None
        walked = (
            [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
            if os.path.isdir(path)
            else [path]
        )
        for name in sorted(walked):
            stat = os.stat(name)
            found.append([os.path.abspath(name), stat.st_size, stat.st_mtime_ns])
    return found


def _validate(config: RunConfig, *, max_errors: int, measure: Measure | None) -> ValidationReport:
    started = time.perf_counter()
    errors = ErrorLog(max_errors)
    notes: list[str] = []
    advice: list[str] = []
    entry, tokenizer = _load_model(config, errors, notes, advice)
    context_length = config.context_length or (entry.context_length if entry else None)
    if not config.train_data_path:
        errors.append(
            DataError(
                "no training data is set",
                source="config",
                field="train_data_path",
                fix="set train_data_path to a JSONL/Parquet/CSV file, a Delta table or a folder",
            )
        )
    options = ChatOptions.of(config)
    counter = TokenCounter(tokenizer, config.task_type, options) if tokenizer else None
    if counter is not None and counter.problem is not None:
        errors.append(counter.problem)
        counter = None
    converter = Converter.of(config)
    train = scan(
        config.train_data_path, config.task_type, counter, context_length, errors, converter
    )
    held_out = DataTally()
    if config.eval_data_path:
        held_out = scan(
            config.eval_data_path, config.task_type, counter, context_length, errors, converter
        )
    report = ValidationReport(
        model=config.model,
        task_type=config.task_type,
        train_data_path=config.train_data_path,
        errors=errors,
        num_errors=0,
        warnings=notes,
        recommendations=advice,
        num_examples=train.num_examples,
        total_tokens=train.total_tokens,
        trained_tokens=train.trained_tokens,
        num_truncated=train.num_truncated,
        context_length=context_length,
        length_histogram=Histogram.of(train.lengths),
        eval_data_path=config.eval_data_path,
        eval_num_examples=held_out.num_examples,
        eval_tokens=held_out.total_tokens,
        conversions=converter.notes,
        role_tokens=_with_template(train),
        system_prompt=train.system_prompt if isinstance(train.system_prompt, str) else None,
    )
    if counter is not None and train.num_examples:
        scanned = time.perf_counter() - started
        prepare = _prepare_seconds(config, tokenizer, (train, held_out), scanned)
        _size_run(report, config, errors, (train, held_out), prepare, measure)
    _advise(report, config, counter is not None)
    _advise_on_shape(report, config, train)
    if counter is not None and config.task_type == CHAT:
        report.warnings += chat_report_notes(errors, tokenizer, config.model)
    report.errors = list(errors)
    report.num_errors = errors.total
    return report


def scan(
    path: str,
    task_type: str,
    counter: TokenCounter | None,
    context_length: int | None,
    errors: ErrorLog,
    converter: Converter | None = None,
) -> DataTally:
    """Read ``path`` once: rule errors into ``errors``, token counts of the good examples.
    Records are first converted to ftmagic's shape by ``converter`` (default: detection)."""
    tally = DataTally()
    if not path:
        return tally
    converter = converter or Converter(task_type)
    try:
        if task_type == PRETRAIN:
            _scan_texts(path, counter, errors, tally, converter)
        else:
            _scan_records(path, task_type, counter, context_length, errors, tally, converter)
    except DataError as err:
        errors.append(err)
    except FtmagicError as err:
        errors.append(DataError(str(err), source=path))
    return tally


def _scan_records(
    path: str,
    task_type: str,
    counter: TokenCounter | None,
    context_length: int | None,
    errors: ErrorLog,
    tally: DataTally,
    converter: Converter,
) -> None:
    converted = converter.records(iter_records(path, errors), errors)
    records = _matching_records(converted, task_type, errors)
    # One batch is tokenized (Rust, GIL released) while the next is read, checked and templated.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftmagic-count") as pool:
        pending: Future[list[Counted | DataError]] | None = None
        for batch in batched(records):
            good = _check_batch(batch, task_type, errors)
            for record in good:
                tally.add_shape(record, task_type)
            if counter is None:
                tally.num_examples += len(good)
                continue
            tally.add_roles(counter, good, task_type)
            prepared = counter.prepare(good)
            if pending is not None:
                _add_counts(pending.result(), tally, context_length, errors)
            pending = pool.submit(counter.finish, good, prepared, context_length)
        if pending is not None:
            _add_counts(pending.result(), tally, context_length, errors)


def _check_batch(batch: list[Record], task_type: str, errors: ErrorLog) -> list[Record]:
    return [record for record in batch if not _report_all(record, task_type, errors)]


def _add_counts(
    counts: list[Counted | DataError],
    tally: DataTally,
    context_length: int | None,
    errors: ErrorLog,
) -> None:
    for counted in counts:
        if isinstance(counted, DataError):
            errors.append(counted)
        else:
            tally.add(counted.length, counted.trained, context_length)


def _matching_records(
    records: Iterator[Record], task_type: str, errors: ErrorLog
) -> Iterator[Record]:
    """Skip a whole file whose first record belongs to another task, with one error for it."""
    checked: dict[str, bool] = {}
    for record in records:
        if record.source not in checked:
            mismatch = task_mismatch(record.data, task_type, source=record.source, line=None)
            if mismatch is not None:
                errors.append(mismatch)
            checked[record.source] = mismatch is None
        if checked[record.source]:
            yield record


def _scan_texts(
    path: str,
    counter: TokenCounter | None,
    errors: ErrorLog,
    tally: DataTally,
    converter: Converter,
) -> None:
    """Continued pretraining: documents are joined and cut into sequences, never truncated."""
    if looks_like_record_source(path):
        converted = converter.records(iter_records(path, errors), errors)
        records = _matching_records(converted, PRETRAIN, errors)
        documents: Iterator[str] = (
            r.data["text"] for r in records if not _report_all(r, PRETRAIN, errors)
        )
    else:
        documents = (text for _, text in iter_text_files(path, errors))
    for batch in batched(documents):
        if counter is None:
            tally.num_examples += len(batch)
            continue
        for length in counter.count_texts(batch):
            tally.add(length, length, None)
        tally.role_tokens["text"] = tally.total_tokens


def _report_all(record: Record, task_type: str, errors: ErrorLog) -> bool:
    """Append the record's rule errors; True when it has any."""
    problems = check_record(record.data, task_type, source=record.source, line=record.line)
    for problem in problems:
        errors.append(problem)
    if not problems and task_type == CHAT:
        found = chat_notes(record.data, source=record.source, line=record.line)
        errors.num_notes += len(found)
        errors.notes += found[: max(0, errors.limit - len(errors.notes))]
        errors.uses_name = errors.uses_name or uses_name(record.data)
    return bool(problems)


# --- model, run size and advice ---------------------------------------------------------------
def _load_model(
    config: RunConfig, errors: ErrorLog, notes: list[str], advice: list[str]
) -> tuple[Any, Any]:
    from ftmagic import catalog
    from ftmagic.models.loading import load_tokenizer

    if not config.model:
        errors.append(
            DataError(
                "no model is set",
                source="config",
                field="model",
                fix="set model to a name from ftmagic.get_models(), e.g. ftmagic/tiny-chat",
            )
        )
        return None, None
    # Not catch_warnings: it swaps process-wide warning state, which races with a run's thread.
    try:
        entry = catalog.resolve_model(config.model, warn=False)
    except FtmagicError as err:
        errors.append(DataError(str(err), source="config", field="model"))
        return None, None
    note = catalog.retired_note(entry)
    if note:
        advice.append(note)
    if entry.kind == "unlisted":
        notes.append(entry.note)
    try:
        return entry, load_tokenizer(config.model)
    except FtmagicError as err:
        errors.append(DataError(str(err), source="config", field="model"))
        return entry, None


def _size_run(
    report: ValidationReport,
    config: RunConfig,
    errors: ErrorLog,
    tallies: tuple[DataTally, DataTally],
    prepare_seconds: float,
    measure: Measure | None,
) -> None:
    from ftmagic.data.estimate import estimate_run

    stats = report.stats()
    run_tokens = config.total_tokens(stats)
    if run_tokens > MAX_TOTAL_TOKENS:
        errors.append(
            DataError(
                f"the run would train on {run_tokens:,} tokens, over the limit of "
                f"{MAX_TOTAL_TOKENS:,}",
                source="config",
                field="training_duration",
                fix="train for fewer epochs or on less data",
            )
        )
        report.estimated_steps = config.total_steps(stats)
        return  # no plan of a run that will not start
    train, held_out = tallies
    context = report.context_length or max(train.lengths)
    _estimate_memory(report, config, _sequence_lengths(train, config.task_type, context), context)
    try:
        estimate = estimate_run(
            config,
            _sequence_lengths(train, config.task_type, context),
            _sequence_lengths(held_out, config.task_type, context),
            context,
            prepare_seconds=prepare_seconds,
            measure=measure,
        )
    except FtmagicError as err:
        report.warnings.append(f"No time estimate: {err}")
        report.estimated_steps = config.total_steps(stats)
        return
    report.estimated_steps = estimate.steps
    report.estimated_seconds = estimate.seconds
    report.estimate_parts = estimate.parts


def _estimate_memory(
    report: ValidationReport, config: RunConfig, lengths: list[int], context: int
) -> None:
    """Peak memory per device from the model's config and the plan's row width."""
    from ftmagic.data.plan import resolve_pack_length
    from ftmagic.models.memory import estimate_for_run

    row = resolve_pack_length(lengths, config, context) or max(lengths, default=context)
    try:
        report.memory = estimate_for_run(config, row)
    except (OSError, ValueError, AttributeError) as err:
        report.warnings.append(f"No memory estimate for {config.model}: {err}")
        return
    if report.memory.fits is False:
        report.warnings.append(report.memory.summary())


def _prepare_seconds(
    config: RunConfig, tokenizer: Any, tallies: tuple[DataTally, DataTally], scanned: float
) -> float:
    """What preparing the data costs the trainer: this validation (when it validates), then
    rendering every example (timed on a sample) or, for continued pretraining, tokenizing."""
    from ftmagic.data.render import render

    spent = scanned if config.validate_inputs else 0.0
    if config.task_type == PRETRAIN:
        return spent + scanned
    for tally in tallies:
        if not tally.sample:
            continue
        start = time.perf_counter()
        for record in tally.sample:
            with contextlib.suppress(DataError):
                render(tokenizer, record.data, config.task_type)
        per_example = (time.perf_counter() - start) / len(tally.sample)
        spent += per_example * tally.num_examples
    return spent


def _sequence_lengths(tally: DataTally, task_type: str, context_length: int) -> list[int]:
    """The lengths the trainer packs: examples truncated to the context length, or (continued
    pretraining) all documents joined and cut into context-length sequences."""
    if task_type != PRETRAIN:
        return [min(n, context_length) for n in tally.lengths]
    full, rest = divmod(tally.total_tokens, context_length)
    return [context_length] * full + ([rest] if rest >= 2 else [])


def _advise(report: ValidationReport, config: RunConfig, counted: bool) -> None:
    advice = report.recommendations
    if counted and report.num_examples:
        tokens, ctx = report.total_tokens, report.context_length
        if config.task_type != PRETRAIN and ctx and tokens < ctx:
            advice.append(
                f"The data has {tokens:,} tokens, less than one context length ({ctx:,}): "
                "chat and instruction data should hold at least a full context length of tokens. "
                "Add examples."
            )
        if config.task_type == PRETRAIN and tokens < MIN_PRETRAIN_TOKENS:
            advice.append(
                f"Continued pretraining on {tokens:,} tokens is little: about 1.5M tokens or "
                "more are needed for a good result."
            )
        epochs = config.total_tokens(report.stats()) / max(1, tokens)
        low, high = EPOCH_RANGE
        if not low <= epochs <= high:
            advice.append(
                f"training_duration {config.training_duration} is {epochs:.2g} epochs: "
                f"{low:g} to {high:g} epochs work best."
            )
    report.warnings[:0] = advice
    if report.num_truncated:
        share = report.num_truncated / max(1, report.num_examples)
        report.warnings.append(
            f"{report.num_truncated:,} example(s) ({share:.1%}) are longer than the context "
            f"length {report.context_length:,} and will be truncated."
        )
    if report.eval_data_path and report.ok and counted and not report.eval_num_examples:
        report.warnings.append(f"The eval data {report.eval_data_path} has no usable examples.")


def _advise_on_shape(report: ValidationReport, config: RunConfig, train: DataTally) -> None:
    """Warnings about what the model will learn from: the trained share, a system prompt that
    fills the examples, prompts that run into their responses."""
    share = report.trained_share
    if share is not None and share < LOW_TRAINED_SHARE and config.task_type != PRETRAIN:
        report.warnings.append(
            f"Only {share:.1%} of the tokens are trained ({report.trained_tokens:,} of "
            f"{report.total_tokens:,}): the rest is context the model reads but is not taught. "
            "Shorter prompts or longer answers train more per step."
        )
    system = train.role_tokens.get("system", 0)
    total = sum(train.lengths)
    if isinstance(train.system_prompt, str) and total and system / total > SYSTEM_PROMPT_SHARE:
        report.warnings.append(
            f"Every example starts with the same system prompt, and it fills {system / total:.0%} "
            "of the tokens: each step spends most of its compute re-reading it. Shorten it, or "
            "pack several questions into one conversation."
        )
    if train.run_together and train.run_together_example is not None:
        before, after = train.run_together_example
        report.warnings.append(
            f"{train.run_together:,} prompt(s) run straight into their response with nothing "
            f"between them (…{before + after}…), so the model cannot tell where the answer "
            "starts. Set prompt_template, e.g. '{prompt}\\n\\nAnswer: ', or end each prompt "
            "with a separator."
        )


def _with_template(tally: DataTally) -> dict[str, int]:
    """Tokens by role, plus the template's: what the roles' own texts leave of the lengths."""
    roles = dict(tally.role_tokens)
    if roles and "text" not in roles:
        roles["template"] = max(0, sum(tally.lengths) - sum(roles.values()))
    return roles


def _role_texts(records: list[Record], task_type: str) -> tuple[list[str], list[str]]:
    roles: list[str] = []
    texts: list[str] = []
    for record in records:
        if task_type == CHAT:
            for message in record.data["messages"]:
                content = message.get("content")
                if isinstance(content, str):
                    roles.append(str(message.get("role")))
                    texts.append(content)
        else:
            answer = record.data.get("response", record.data.get("completion"))
            for role, text in (("prompt", record.data.get("prompt")), ("response", answer)):
                if isinstance(text, str):
                    roles.append(role)
                    texts.append(text)
    return roles, texts


# --- text and HTML helpers ----------------------------------------------------------------------
def batched(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    """Lists of up to ``size`` items (itertools.batched arrives in Python 3.12)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _share_text(share: float | None) -> str:
    return "" if share is None else f", {share:.1%}"


def _roles_text(role_tokens: dict[str, int]) -> str:
    total = sum(role_tokens.values()) or 1
    return ", ".join(
        f"{role} {count:,} ({count / total:.0%})" for role, count in role_tokens.items()
    )


def _parts_text(parts: dict[str, float]) -> str:
    shown = [
        f"{name} {_duration_text(seconds).removeprefix('about ')}"
        for name, seconds in parts.items()
        if seconds >= 0.5
    ]
    return f" ({', '.join(shown)})" if shown else ""


def _maybe(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown (not calibrated on this device)"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def _text_histogram(hist: Histogram, width: int = 40) -> list[str]:
    top = max(hist.counts) or 1
    lines = []
    for i, count in enumerate(hist.counts):
        bar = "#" * math.ceil(width * count / top) if count else ""
        lines.append(f"  {hist.edges[i]:>7,}-{hist.edges[i + 1] - 1:<7,} {bar} {count:,}")
    return lines


def _html_histogram(hist: Histogram, context_length: int | None) -> str:
    top = max(hist.counts) or 1
    bars = "".join(
        f"<div title='{hist.edges[i]:,}-{hist.edges[i + 1] - 1:,} tokens: {c:,}' "
        f"style='display:inline-block;width:10px;margin-right:1px;background:#0969da;"
        f"height:{max(1, round(48 * c / top)) if c else 0}px'></div>"
        for i, c in enumerate(hist.counts)
    )
    label = f"example lengths {hist.edges[0]:,}-{hist.edges[-1] - 1:,} tokens"
    if context_length:
        label += f" (context length {context_length:,})"
    return (
        f"<div style='margin:6px 0'><div style='display:flex;align-items:flex-end;height:50px'>"
        f"{bars}</div><div style='color:#57606a'>{html.escape(label)}</div></div>"
    )


def _html_errors(errors: list[DataError], total: int) -> str:
    esc = html.escape
    head = "".join(f"<th style='text-align:left'>{h}</th>" for h in ("where", "rule", "fix"))
    rows = "".join(
        f"<tr><td><code>{esc(e.location)}</code></td><td>{esc(e.rule)}"
        + (f" <code>{esc(repr(e.value)[:80])}</code>" if e.value is not None else "")
        + f"</td><td>{esc(e.fix or '')}</td></tr>"
        for e in errors
    )
    caption = f"Errors (showing {len(errors)} of {total})"
    return f"<div style='color:#cf222e'>{caption}</div><table>{head}{rows}</table>"

"""Streaming readers for training data: JSONL, Parquet, CSV, Delta tables and saved datasets.

Nothing here loads a whole file: JSON Lines are read one binary line at a time, Parquet and Delta in
record batches, CSV row by row. A 2 GB file costs the memory of one line or one batch.

Errors come in two kinds:

- A problem with the path itself (missing, not a known format, an unreadable Parquet file or Delta
  table) raises ``DataError`` at once: nothing can be read.
- A problem inside the data (a bad line, non-UTF-8 bytes, an empty or binary file in a folder) is
  a ``DataError`` appended to the caller's ``errors`` list, and reading goes on with the next line
  or file. Without an ``errors`` list such problems raise instead.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec

from ftmagic.errors import DataError

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
MAX_LINE_BYTES = 64 * 1024 * 1024
BATCH_ROWS = 1024
_SNIFF_BYTES = 8192
_UTF8_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class Record:
    """One example: where it came from and its fields.

    ``line`` is the 1-based line of a JSONL or CSV file, or the 1-based row of a Parquet file, a
    Delta table or a saved dataset.
    """

    source: str
    line: int
    data: dict[str, Any]


def iter_records(path: str, errors: list[DataError] | None = None) -> Iterator[Record]:
    """Stream the records of a file, a folder of files, a Delta table or a saved dataset.

    ``path`` is a local path or an fsspec URL. Problems inside the data are appended to ``errors``
    (or raised when it is None); problems with the path raise ``DataError``.
    """
    fs, root = _filesystem(path)
    if not fs.exists(root):
        raise missing_path_error(path)
    if fs.isdir(root):
        yield from _iter_folder(fs, root, path, errors)
    else:
        yield from _iter_file(fs, root, path, errors)


def iter_text_files(path: str, errors: list[DataError] | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(source, text)`` for every ``.txt`` file under ``path`` (recursively, sorted).

    ``path`` may also be a single ``.txt`` file. Each file is one document and is read whole. A
    file that is not UTF-8 is reported through ``errors`` (or raised) and skipped.
    """
    fs, root = _filesystem(path)
    if not fs.exists(root):
        raise missing_path_error(path)
    files = [root] if not fs.isdir(root) else _data_files(fs, root, (".txt",))
    if not files:
        raise DataError(
            "holds no .txt files",
            source=path,
            fix="continued pretraining reads a folder of UTF-8 .txt files; add some, or point "
            "train_data_path at the folder that holds them",
        )
    for file in files:
        source = _source_name(root, file, path)
        with fs.open(file, "rb", compression="infer") as handle:
            raw = handle.read()
        try:
            yield source, raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            _report(_decode_error(err, raw, source), errors)


def looks_like_record_source(path: str) -> bool:
    """True when ``path`` names a file or folder that ``iter_records`` reads (not a .txt folder)."""
    fs, root = _filesystem(path)
    if not fs.exists(root):
        return False
    if not fs.isdir(root):
        return _suffix(root) != ".txt"
    return _folder_kind(fs, root) in ("delta", "datasets") or bool(
        _data_files(fs, root, RECORD_SUFFIXES)
    )


def missing_path_error(path: str) -> DataError:
    """A ``DataError`` for a path that does not exist, naming close names in its folder."""
    fs, root = _filesystem(path)
    parent = posixpath.dirname(root.rstrip("/")) or "/"
    try:
        siblings = [posixpath.basename(p.rstrip("/")) for p in fs.ls(parent, detail=False)]
    except (OSError, ValueError):
        siblings = None
    if siblings is None:
        fix = f"check the path: the folder {parent} does not exist either"
    else:
        close = difflib.get_close_matches(posixpath.basename(root), siblings, n=3, cutoff=0.5)
        hint = f"close names there: {', '.join(close)}" if close else "no close names there"
        fix = f"check the path ({hint}; the folder {parent} holds {len(siblings)} entries)"
    return DataError("path does not exist", source=path, fix=fix)


# --- paths and folders ------------------------------------------------------------------------
def _filesystem(path: str) -> tuple[Any, str]:
    if not isinstance(path, str) or not path.strip():
        raise DataError("no data path given", fix="set train_data_path to a file or folder")
    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as err:
        raise DataError(
            f"cannot open this URL: {err}",
            source=path,
            fix="use a local path or an fsspec URL whose filesystem package is installed",
        ) from None


def _source_name(root: str, file: str, original: str) -> str:
    """The name errors use: the path the user gave, plus the file's place under it."""
    if file == root:
        return original
    return original.rstrip("/") + "/" + posixpath.relpath(file, root)


def _suffix(name: str) -> str:
    base = posixpath.basename(name).lower()
    for comp in COMPRESSION_SUFFIXES:
        if base.endswith(comp):
            base = base[: -len(comp)]
    return posixpath.splitext(base)[1]


def _data_files(fs: Any, root: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``root`` with these suffixes, sorted, skipping hidden and ``_``-prefixed ones
    (``_SUCCESS``, ``.crc``, ``_delta_log``)."""
    found = []
    for file in fs.find(root):
        parts = posixpath.relpath(file, root).split("/")
        if any(p.startswith((".", "_")) for p in parts):
            continue
        if _suffix(file) in suffixes:
            found.append(file)
    return sorted(found)


def _folder_kind(fs: Any, root: str) -> str:
    names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    if "_delta_log" in names:
        return "delta"
    if "dataset_dict.json" in names or {"dataset_info.json", "state.json"} <= names:
        return "datasets"
    return "files"


def _iter_folder(fs: Any, root: str, path: str, errors: list[DataError] | None) -> Iterator[Record]:
    kind = _folder_kind(fs, root)
    if kind == "delta":
        yield from _iter_delta(path, errors)
        return
    if kind == "datasets":
        yield from _iter_saved_dataset(path, errors)
        return
    files = _data_files(fs, root, RECORD_SUFFIXES)
    if not files:
        texts = _data_files(fs, root, (".txt",))
        fix = (
            "this folder holds .txt files: that is continued-pretraining data, so set "
            "task_type: CONTINUED_PRETRAIN"
            if texts
            else "put .jsonl, .parquet or .csv files in it, or point at a Delta table or a "
            "datasets.save_to_disk folder"
        )
        raise DataError("holds no .jsonl, .json, .parquet or .csv files", source=path, fix=fix)
    for file in files:
        yield from _iter_file(fs, file, _source_name(root, file, path), errors)


def _iter_file(fs: Any, file: str, source: str, errors: list[DataError] | None) -> Iterator[Record]:
    suffix = _suffix(file)
    if suffix in (".jsonl", ".json"):
        with fs.open(file, "rb", compression="infer") as handle:
            head = handle.read(_SNIFF_BYTES)
            stream = io.BufferedReader(_Prepend(head, handle), buffer_size=1 << 16)  # type: ignore[arg-type]
            # No JSON Lines file starts with "[": its lines are objects. So this is one array.
            if head.lstrip(b" \t\r\n").removeprefix(_UTF8_BOM).lstrip().startswith(b"["):
                yield from iter_json_array(stream, source, errors)
            else:
                yield from iter_jsonl(stream, source, errors)
    elif suffix == ".parquet":
        with fs.open(file, "rb") as handle:
            yield from _iter_parquet(handle, source, errors)
    elif suffix == ".csv":
        with fs.open(file, "rb", compression="infer") as handle:
            yield from _iter_csv(handle, source, errors)
    else:
        fix = (
            "continued-pretraining text goes in a folder of .txt files with task_type: "
            "CONTINUED_PRETRAIN"
            if suffix == ".txt"
            else "use a .jsonl, .json (JSON Lines), .parquet or .csv file"
        )
        raise DataError(
            f"is not a known data format ({suffix or 'no suffix'})", source=source, fix=fix
        )


# --- JSON Lines ---------------------------------------------------------------------------------
def iter_jsonl(
    handle: IO[bytes],
    source: str,
    errors: list[DataError] | None = None,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[Record]:
    """Stream JSON objects from a binary handle, one per line.

    A UTF-8 BOM on line 1 and CRLF endings are accepted; blank lines are skipped. A line longer
    than ``max_line_bytes`` is reported and skipped without being held in memory.
    """
    head = handle.read(_SNIFF_BYTES)
    if b"\x00" in head:
        _report(
            DataError(
                "is not a text JSONL file (it holds NUL bytes: binary data)",
                source=source,
                fix="export the data as JSON Lines: one UTF-8 JSON object per line",
            ),
            errors,
        )
        return
    stream = io.BufferedReader(_Prepend(head, handle), buffer_size=1 << 16)  # type: ignore[arg-type]
    seen_content = False
    for number, start, raw in _lines(stream, max_line_bytes, source, errors):
        if raw is None:
            seen_content = True
            continue
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
            start += len(_UTF8_BOM)
        record = _parse_line(raw, number, start, source, errors)
        if record is not _BLANK:
            seen_content = True
        if isinstance(record, Record):
            yield record
    if not seen_content:
        _report(
            DataError(
                "file is empty",
                source=source,
                fix='add examples, one JSON object per line, e.g. {"messages": [...]}',
            ),
            errors,
        )


_BLANK = object()


def _lines(
    stream: IO[bytes], limit: int, source: str, errors: list[DataError] | None
) -> Iterator[tuple[int, int, bytes | None]]:
    """``(line number, byte offset, bytes)`` for each line of ``stream``. An over-long line is
    reported, drained chunk by chunk (never held whole) and given as None."""
    number, offset = 0, 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        number += 1
        start, offset = offset, offset + len(raw)
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield number, start, raw
            continue
        while not raw.endswith(b"\n"):
            raw = stream.readline(1 << 20)
            if not raw:
                break
            offset += len(raw)
        _report(
            DataError(
                f"line is longer than {limit:,} bytes",
                source=source,
                line=number,
                fix="split very long examples, or check that the file really has one "
                "object per line",
            ),
            errors,
        )
        yield number, start, None


def _parse_line(
    raw: bytes, number: int, start: int, source: str, errors: list[DataError] | None
) -> Record | object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        _report(
            DataError(
                f"is not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the "
                f"line, byte offset {start + err.start} in the file)",
                source=source,
                line=number,
                fix="re-save the file as UTF-8",
            ),
            errors,
        )
        return None
    if not text.strip():
        return _BLANK
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        _report(
            DataError(
                f"is not valid JSON: {err.msg} at column {err.colno}",
                source=source,
                line=number,
                fix="each line must be one complete JSON object; check that the line was not "
                "cut off or split over several lines",
            ),
            errors,
        )
        return None
    if not isinstance(data, dict):
        fix = 'write one JSON object per line, like {"messages": [...]}'
        if number == 1 and isinstance(data, list):
            fix = "the file looks like one JSON array; " + fix + " (JSON Lines)"
        _report(
            DataError(
                f"line is a JSON {_json_type(data)}, not an object",
                source=source,
                line=number,
                value=data,
                fix=fix,
            ),
            errors,
        )
        return None
    return Record(source, number, data)


# --- one JSON array (.json) ---------------------------------------------------------------------
def iter_json_array(
    handle: IO[bytes],
    source: str,
    errors: list[DataError] | None = None,
    *,
    chunk_chars: int = 1 << 16,
    max_element_chars: int = MAX_LINE_BYTES,
) -> Iterator[Record]:
    """Stream the objects of a file holding one JSON array (``[{...}, {...}]``, pretty-printed or
    not), element by element: memory holds one element and one chunk, never the whole file.

    ``Record.line`` is the line each element starts on. A syntax error ends the file with one
    error (the reader cannot tell where the next element starts).
    """
    text = io.TextIOWrapper(handle, encoding="utf-8-sig")
    reader = _ArrayReader(text, chunk_chars, max_element_chars)
    try:
        for line, data in reader:
            if isinstance(data, dict):
                yield Record(source, line, data)
                continue
            _report(
                DataError(
                    f"array element is a JSON {_json_type(data)}, not an object",
                    source=source,
                    line=line,
                    value=data,
                    fix='make each element of the array an object, like {"messages": [...]}',
                ),
                errors,
            )
    except UnicodeDecodeError as err:
        _report(
            DataError(
                f"is not valid UTF-8 (byte 0x{err.object[err.start]:02x})",
                source=source,
                line=reader.line,
                fix="re-save the file as UTF-8",
            ),
            errors,
        )
    except _ArrayError as err:
        _report(DataError(str(err), source=source, line=err.line, fix=err.fix), errors)


class _ArrayError(Exception):
    def __init__(self, message: str, line: int, fix: str) -> None:
        super().__init__(message)
        self.line = line
        self.fix = fix


class _ArrayReader:
    """Yields ``(line, value)`` for each element of a JSON array read chunk by chunk."""

    def __init__(self, text: IO[str], chunk_chars: int, max_element_chars: int) -> None:
        self._text = text
        self._chunk = chunk_chars
        self._limit = max_element_chars
        self._buffer = ""
        self._pos = 0
        self._eof = False
        self.line = 1
        self._decoder = json.JSONDecoder()

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        if self._skip_space() != "[":
            raise _ArrayError("is not a JSON array", self.line, "start the file with [")
        self._consume(1)
        if self._skip_space() == "]":
            return
        while True:
            self._skip_space()
            yield self.line, self._element()
            separator = self._skip_space()
            if separator == "]":
                return
            if separator != ",":
                found = repr(separator) if separator else "the end of the file"
                raise _ArrayError(
                    f"is not a valid JSON array: expected ',' or ']' but found {found}",
                    self.line,
                    "check the file is one complete JSON array (was it cut off?)",
                )
            self._consume(1)

    def _element(self) -> Any:
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as err:
                if self._eof or len(self._buffer) - self._pos > self._limit:
                    line = self.line + self._buffer.count("\n", self._pos, err.pos)
                    raise _ArrayError(
                        f"is not valid JSON: {err.msg}",
                        line,
                        "check the array element that starts on this line (a missing comma or "
                        "quote, or a file cut off)",
                    ) from None
                self._fill(max(self._chunk, len(self._buffer) - self._pos))
                continue
            # A number at the end of the buffer may go on in the next chunk.
            if end == len(self._buffer) and not self._eof:
                self._fill(self._chunk)
                continue
            self._consume(end - self._pos)
            return value

    def _skip_space(self) -> str:
        while True:
            while self._pos < len(self._buffer) and self._buffer[self._pos] in " \t\r\n":
                self._consume(1)
            if self._pos < len(self._buffer) or self._eof:
                return self._buffer[self._pos : self._pos + 1]
            self._fill(self._chunk)

    def _consume(self, count: int) -> None:
        self.line += self._buffer.count("\n", self._pos, self._pos + count)
        self._pos += count

    def _fill(self, size: int) -> None:
        """Read ``size`` more characters, dropping what was consumed."""
        data = self._text.read(size)
        if not data:
            self._eof = True
        self._buffer = self._buffer[self._pos :] + data
        self._pos = 0


class _Prepend(io.RawIOBase):
    """A raw stream that replays ``head`` and then reads on from ``handle`` (so we can sniff the
    first bytes of a non-seekable fsspec file)."""

    def __init__(self, head: bytes, handle: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._handle = handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# --- Parquet, CSV, Delta, datasets ------------------------------------------------------------
def _iter_parquet(
    handle: IO[bytes], source: str, errors: list[DataError] | None = None
) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            f"cannot be read as Parquet: {err}",
            source=source,
            fix="check that the file is a complete Parquet file (re-export it)",
        ) from None
    yield from _iter_batches(parquet.iter_batches(batch_size=BATCH_ROWS), source, errors)


def _iter_batches(
    batches: Any, source: str, errors: list[DataError] | None = None
) -> Iterator[Record]:
    """Rows of Arrow record batches; a messages column stored as JSON text is decoded, as in
    CSV, so every reader gives the same records."""
    row = 0
    for batch in batches:
        for data in batch.to_pylist():
            row += 1
            decoded = _decode_json_column(Record(source, row, data), errors)
            if decoded is not None:
                yield decoded


def _iter_csv(handle: IO[bytes], source: str, errors: list[DataError] | None) -> Iterator[Record]:
    # Long documents in one cell are normal here; the default 128 KiB field limit is not.
    # Raising the (process-wide) limit is idempotent and only makes the csv module more permissive.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text)
    line = 1
    try:
        for row in reader:
            data = {k: v for k, v in row.items() if k is not None}
            record = Record(source, line + 1, data)
            line = reader.line_num
            decoded = _decode_json_column(record, errors)
            if decoded is not None:
                yield decoded
    except UnicodeDecodeError as err:
        _report(
            DataError(
                f"is not valid UTF-8 (byte 0x{err.object[err.start]:02x})",
                source=source,
                line=reader.line_num + 1,
                fix="re-save the file as UTF-8",
            ),
            errors,
        )
    except csv.Error as err:
        _report(
            DataError(
                f"is not valid CSV: {err}",
                source=source,
                line=reader.line_num,
                fix="re-export the CSV file",
            ),
            errors,
        )


JSON_COLUMNS = ("messages", "conversations")


def _decode_json_column(record: Record, errors: list[DataError] | None) -> Record | None:
    """CSV cells are text, and Parquet exports often store a conversation as text too: a
    ``messages`` (or ``conversations``) column holding JSON is decoded."""
    data = record.data
    for name in JSON_COLUMNS:
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            continue
        try:
            data = {**data, name: json.loads(value)}
        except json.JSONDecodeError as err:
            _report(
                DataError(
                    f"the {name} column is not valid JSON: {err.msg}",
                    source=record.source,
                    line=record.line,
                    field=name,
                    fix=f"store the conversation in the {name} column as a JSON list",
                ),
                errors,
            )
            return None
    return record if data is record.data else Record(record.source, record.line, data)


def _iter_delta(path: str, errors: list[DataError] | None = None) -> Iterator[Record]:
    import deltalake

    try:
        dataset = deltalake.DeltaTable(path).to_pyarrow_dataset()
    except Exception as err:  # deltalake raises several unrelated types for a broken table
        raise DataError(
            f"cannot be read as a Delta table: {_first_line(err)}",
            source=path,
            fix="check that the folder is a complete Delta table (its _delta_log must hold the "
            "commit files)",
        ) from None
    yield from _iter_batches(dataset.to_batches(batch_size=BATCH_ROWS), path, errors)


def _iter_saved_dataset(path: str, errors: list[DataError] | None = None) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as err:  # datasets raises FileNotFoundError, ValueError, ArrowInvalid, ...
        raise DataError(
            f"cannot be read as a saved dataset: {_first_line(err)}",
            source=path,
            fix="save it again with datasets.Dataset.save_to_disk",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(
                "is a DatasetDict without a 'train' split",
                source=path,
                value=sorted(loaded),
                fix="point at one split's folder, or save the training split as 'train'",
            )
        loaded = loaded["train"]
    yield from _iter_batches(loaded.with_format("arrow").iter(batch_size=BATCH_ROWS), path, errors)


# --- helpers ------------------------------------------------------------------------------------
def _report(error: DataError, errors: list[DataError] | None) -> None:
    if errors is None:
        raise error
    errors.append(error)


def _decode_error(err: UnicodeDecodeError, raw: bytes, source: str) -> DataError:
    line = raw.count(b"\n", 0, err.start) + 1
    column = err.start - (raw.rfind(b"\n", 0, err.start) + 1)
    return DataError(
        f"is not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {column + 1} of the line, "
        f"byte offset {err.start} in the file)",
        source=source,
        line=line,
        fix="re-save the file as UTF-8",
    )


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

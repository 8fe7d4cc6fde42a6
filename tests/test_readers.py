"""The streaming readers: every supported source gives the same records with their locations."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftmagic.data.readers import Record, iter_jsonl, iter_records, iter_text_files
from ftmagic.errors import DataError

ROWS = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(5)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_records_carry_source_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    records = list(iter_records(str(path)))
    assert records[0] == Record(str(path), 1, ROWS[0])
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert [r.data for r in records] == ROWS


def test_blank_lines_are_skipped_and_numbering_kept(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert [(r.line, r.data) for r in iter_records(str(path))] == [(1, {"a": 1}), (4, {"a": 2})]


def test_json_suffix_is_json_lines_and_gzip_is_decompressed(tmp_path: Path) -> None:
    import gzip

    plain = write_jsonl(tmp_path / "a.json", ROWS[:2])
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [r.data for r in iter_records(str(plain))] == ROWS[:2]
    assert [r.data for r in iter_records(str(packed))] == ROWS[:2]


def test_parquet_rows_are_numbered_across_batches(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(2500)]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    records = list(iter_records(str(path)))
    assert len(records) == 2500
    assert records[1999] == Record(str(path), 2000, rows[1999])


def test_parquet_nested_chat_messages(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    assert next(iter_records(str(path))).data == row


def test_csv_lines_count_multiline_cells_and_decode_messages(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows(
            [
                ["prompt", "response", "messages"],
                ["two\nlines", "ok", ""],
                ["x", "y", json.dumps(messages)],
            ]
        )
    records = list(iter_records(str(path)))
    assert [r.line for r in records] == [2, 4]
    assert records[0].data == {"prompt": "two\nlines", "response": "ok", "messages": ""}
    assert records[1].data["messages"] == messages


def test_delta_table(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "delta"), pa.Table.from_pylist(ROWS))
    write_deltalake(str(tmp_path / "delta"), pa.Table.from_pylist(ROWS[:1]), mode="append")
    records = list(iter_records(str(tmp_path / "delta")))
    assert sorted(r.data["prompt"] for r in records) == sorted(
        [row["prompt"] for row in ROWS] + ["question 0"]
    )
    assert [r.line for r in records] == [1, 2, 3, 4, 5, 6]


def test_saved_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert [r.data for r in iter_records(str(tmp_path / "ds"))] == ROWS
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2])})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert [r.data for r in iter_records(str(tmp_path / "dd"))] == ROWS[:2]
    no_train = datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS[:1])})
    no_train.save_to_disk(str(tmp_path / "nt"))
    with pytest.raises(DataError, match="without a 'train' split"):
        list(iter_records(str(tmp_path / "nt")))


def test_memory_fsspec_url() -> None:
    url = "memory://ftmagic-readers/train.jsonl"
    with fsspec.open(url, "wb") as handle:
        handle.write(b'{"prompt": "p", "response": "r"}\n')
    try:
        assert list(iter_records(url)) == [Record(url, 1, {"prompt": "p", "response": "r"})]
        folder = list(iter_records("memory://ftmagic-readers"))
        assert folder[0].source == "memory://ftmagic-readers/train.jsonl"
    finally:
        fsspec.filesystem("memory").rm("/ftmagic-readers", recursive=True)


def test_file_url(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ROWS[:1])
    assert [r.data for r in iter_records(path.as_uri())] == ROWS[:1]


def test_folder_reads_files_in_order_and_skips_markers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "part-1.jsonl", ROWS[2:])
    write_jsonl(tmp_path / "part-0.jsonl", ROWS[:2])
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".part-0.jsonl.crc").write_text("junk")
    records = list(iter_records(str(tmp_path)))
    assert [r.data for r in records] == ROWS
    assert records[0].source == f"{tmp_path}/part-0.jsonl"
    assert records[2] == Record(f"{tmp_path}/part-1.jsonl", 1, ROWS[2])


def test_folder_of_parquet_and_jsonl(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), tmp_path / "a.parquet")
    write_jsonl(tmp_path / "b.jsonl", ROWS[2:3])
    assert [r.data for r in iter_records(str(tmp_path))] == ROWS[:3]


def test_text_files_recursive_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "notes.md").write_text("ignored")
    assert list(iter_text_files(str(tmp_path))) == [
        (f"{tmp_path}/a.txt", "first"),
        (f"{tmp_path}/b/two.txt", "second"),
    ]
    assert list(iter_text_files(str(tmp_path / "a.txt"))) == [(str(tmp_path / "a.txt"), "first")]


def test_errors_list_collects_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n[1]\n{"a": 4}\n')
    errors: list[DataError] = []
    records = list(iter_records(str(path), errors))
    assert [r.line for r in records] == [1, 4]
    assert [e.line for e in errors] == [2, 3]
    with pytest.raises(DataError) as info:
        list(iter_records(str(path)))
    assert info.value.line == 2


def test_over_long_line_is_skipped_without_holding_it() -> None:
    stream = io.BytesIO(b'{"a": 1}\n{"b": "' + b"x" * 20_000_000 + b'"}\n{"c": 3}\n')
    errors: list[DataError] = []
    tracemalloc.start()
    records = list(iter_jsonl(stream, "big.jsonl", errors, max_line_bytes=100_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(r.line, r.data) for r in records] == [(1, {"a": 1}), (3, {"c": 3})]
    assert errors[0].line == 2
    assert "longer than 100,000 bytes" in str(errors[0])
    assert peak < 6_000_000  # the line is 20 MB


def test_pretty_printed_json_array_is_streamed_element_by_element(tmp_path: Path) -> None:
    rows = [
        {"instruction": f"Question {i}?", "input": "", "output": "x" * 200} for i in range(20_000)
    ]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    assert path.stat().st_size > 5_000_000
    tracemalloc.start()
    count, last = 0, None
    for record in iter_records(str(path)):
        count, last = count + 1, record
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == len(rows) and last is not None and last.data == rows[-1]
    assert last.line == 2 + 5 * (len(rows) - 1)  # each element spans 5 lines after the "["
    assert peak < 1_500_000  # the file is over 5 MB


def test_json_array_with_a_number_split_across_chunks() -> None:
    from ftmagic.data.readers import iter_json_array

    stream = io.BytesIO(b'[{"a": 1}, {"b": [1, 2, 3]}\n, {"c": 12345678}]')
    records = list(iter_json_array(stream, "x.json", chunk_chars=3))
    assert [(r.line, r.data) for r in records] == [
        (1, {"a": 1}),
        (1, {"b": [1, 2, 3]}),
        (2, {"c": 12345678}),
    ]
    errors: list[DataError] = []
    assert list(iter_json_array(io.BytesIO(b'[{"a": 1} {"b": 2}]'), "y.json", errors)) == [
        Record("y.json", 1, {"a": 1})
    ]
    assert "expected ',' or ']'" in errors[0].rule


def test_parquet_messages_stored_as_json_text_decode_as_in_csv(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    pq.write_table(
        pa.Table.from_pylist([{"messages": json.dumps(messages)}, {"messages": "[not json"}]),
        tmp_path / "chats.parquet",
    )
    errors: list[DataError] = []
    records = list(iter_records(str(tmp_path / "chats.parquet"), errors))
    assert [r.data["messages"] for r in records] == [messages]
    assert (errors[0].line, errors[0].field) == (2, "messages")

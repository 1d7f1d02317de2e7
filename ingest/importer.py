"""``ingest import FILE``: payments from CSV or JSON Lines, in bulk, with a line for each error.

CSV needs a header row with the API's field names (``amount,currency,transaction_id,...``);
JSON Lines is one object per line. Rows are validated like any event, enqueued 500 at a
time in one round trip each, and a bad row is reported with its line number and field
without stopping the rest. Importing the same file again enqueues nothing new: event ids are
deterministic, so every row comes back as a duplicate.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .models import Payment, payment_from_mapping
from .producer import Producer

BATCH = 500
_BOOLEAN_FIELDS = ("renewal", "refunded", "is_free_trial")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str
    reason: str


@dataclass(slots=True)
class ImportResult:
    rows: int = 0
    queued: int = 0
    duplicates: int = 0
    spooled: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len({e.line for e in self.errors})


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    with path.open(encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "csv"


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            line = reader.line_num
            if None in row:
                yield line, RowError(line, "(row)", "more values than header columns")
                continue
            data: dict[str, Any] = {}
            problem: RowError | None = None
            for name, value in row.items():
                if value is None or value.strip() == "":
                    continue  # an empty cell is an absent optional field
                if name in _BOOLEAN_FIELDS:
                    word = value.strip().lower()
                    if word in _TRUE:
                        data[name] = True
                    elif word in _FALSE:
                        data[name] = False
                    else:
                        problem = RowError(line, name, f"must be true or false, got {value!r}")
                        break
                else:
                    data[name] = value
            yield line, problem if problem else data


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text, parse_float=str)
            except json.JSONDecodeError as exc:
                yield line, RowError(line, "(line)", f"not valid JSON: {exc.msg}")
                continue
            if not isinstance(data, dict):
                yield line, RowError(line, "(line)", "must be a JSON object")
                continue
            yield line, data


def count_rows(path: Path) -> int:
    with path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(0, lines - 1) if detect_format(path) == "csv" else lines


def import_file(
    path: Path,
    producer: Producer,
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    rows = _csv_rows(path) if detect_format(path) == "csv" else _jsonl_rows(path)
    result = ImportResult()
    batch: list[Payment] = []

    def send() -> None:
        for receipt in producer.enqueue_many(batch):
            if receipt.status == "duplicate":
                result.duplicates += 1
            elif receipt.status == "spooled":
                result.spooled += 1
            else:
                result.queued += 1
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for line, row in rows:
        result.rows += 1
        if isinstance(row, RowError):
            result.errors.append(row)
            if progress is not None:
                progress(1)
            continue
        try:
            batch.append(payment_from_mapping(row))
        except ValidationError as exc:
            result.errors.extend(RowError(line, f, reason) for f, reason in exc.errors.items())
            if progress is not None:
                progress(1)
            continue
        if len(batch) >= BATCH:
            send()
    if batch:
        send()
    return result

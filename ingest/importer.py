"""``ingest import FILE``: payments from CSV, a JSON array or JSON Lines, in bulk, with a line
for each error.

CSV needs a header row with the API's field names (``amount,currency,transaction_id,...``);
a JSON file is an array of objects (``[{...}, {...}]``) or one object per line. The format is
told by the first character (``[``, ``{``, anything else: CSV), whatever the file is called.
The whole file is checked before anything is enqueued: text that is not UTF-8, a CSV header
without a required column (or with a column no payment has), or a JSON array that does not
parse is one :class:`ImportFileError`. Then rows are validated like any event, enqueued 500
at a time in one round trip each, and a bad row is reported with its line number and every
bad field without stopping the rest. Importing the same file again enqueues nothing new:
event ids are deterministic, so every row comes back as a duplicate.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImportFileError, ValidationError
from .models import FIELD_NAMES, REQUIRED_FIELDS, Payment, payment_from_mapping
from .producer import Producer

BATCH = 500
_BOOLEAN_FIELDS = ("renewal", "refunded", "is_free_trial")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_BOM = b"\xef\xbb\xbf"


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
    """``"json"`` (an array), ``"jsonl"`` or ``"csv"``, from the first character that is not
    white space; an empty file is CSV."""
    with path.open("rb") as handle:
        for raw in handle:
            text = raw.removeprefix(_BOM).lstrip()
            if text:
                if text.startswith(b"["):
                    return "json"
                return "jsonl" if text.startswith(b"{") else "csv"
    return "csv"


def check_file(path: Path) -> tuple[str, int]:
    """The file's format and how many rows it holds, or :class:`ImportFileError` saying why
    it cannot be imported at all. Reads the whole file once; enqueues nothing."""
    line_count = 0
    with path.open("rb") as handle:
        # Line by line: a newline byte never occurs inside a UTF-8 sequence.
        for line_number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ImportFileError(
                    f"{path.name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line "
                    f"{line_number}): save it as UTF-8 and import it again",
                    path=str(path),
                ) from None
            if raw.strip():
                line_count += 1
    kind = detect_format(path)
    if kind == "csv":
        _check_header(path)
        return kind, max(0, line_count - 1)
    if kind == "json":
        return kind, sum(1 for _ in _json_items(path))
    return kind, line_count


def _check_header(path: Path) -> None:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    if not header:
        return
    columns = [name.strip() for name in header]
    problems = []
    missing = [name for name in REQUIRED_FIELDS if name not in columns]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        problems.append(
            f"the header has no {names} column{'s' if len(missing) > 1 else ''} "
            f"(required: {', '.join(REQUIRED_FIELDS)})"
        )
    unknown = [name for name in columns if name not in FIELD_NAMES]
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        problems.append(f"unknown column{'s' if len(unknown) > 1 else ''} {names}")
    if problems:
        raise ImportFileError(f"{path.name}: {'; '.join(problems)}", path=str(path))


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | list[RowError]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        for values in reader:
            line = reader.line_num
            if not values:
                continue  # a blank line
            if len(values) > len(header):
                yield line, [RowError(line, "(row)", "more values than header columns")]
                continue
            data: dict[str, Any] = {}
            problems: list[RowError] = []
            for name, value in zip(header, values, strict=False):
                if value.strip() == "":
                    continue  # an empty cell is an absent optional field
                if name in _BOOLEAN_FIELDS:
                    word = value.strip().lower()
                    if word in _TRUE:
                        data[name] = True
                    elif word in _FALSE:
                        data[name] = False
                    else:
                        problems.append(
                            RowError(line, name, f"must be true or false, got {value!r}")
                        )
                else:
                    data[name] = value
            # Validated too when a boolean was refused, so every bad field shows at once.
            yield line, _validate(line, data, problems)


def _validate(
    line: int, data: dict[str, Any], problems: list[RowError]
) -> dict[str, Any] | list[RowError]:
    if not problems:
        return data
    try:
        payment_from_mapping(data)
    except ValidationError as exc:
        problems += [RowError(line, f, reason) for f, reason in exc.errors.items()]
    return sorted(problems, key=lambda e: _field_order(e.field))


def _field_order(name: str) -> int:
    return FIELD_NAMES.index(name) if name in FIELD_NAMES else len(FIELD_NAMES)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | list[RowError]]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text, parse_float=str)
            except json.JSONDecodeError as exc:
                yield line, [RowError(line, "(line)", f"not valid JSON: {exc.msg}")]
                continue
            if not isinstance(data, dict):
                yield line, [RowError(line, "(line)", "must be a JSON object")]
                continue
            yield line, data


def _json_items(path: Path) -> Iterator[tuple[int, Any]]:
    """(line where it starts, value) for each item of a JSON array file, or
    :class:`ImportFileError` where the array stops parsing."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder(parse_float=str)

    def refuse(position: int, why: str) -> ImportFileError:
        line = text.count("\n", 0, position) + 1
        return ImportFileError(
            f"{path.name}: not a JSON array of objects: {why} on line {line}", path=str(path)
        )

    def skip_space(position: int) -> int:
        while position < len(text) and text[position].isspace():
            position += 1
        return position

    position = skip_space(0) + 1  # past "["
    line, counted = 1, 0
    position = skip_space(position)
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise refuse(exc.pos, exc.msg) from None
        line += text.count("\n", counted, position)
        counted = position
        yield line, value
        position = skip_space(end)
        if position < len(text) and text[position] == ",":
            position = skip_space(position + 1)
            continue
        if position < len(text) and text[position] == "]":
            if skip_space(position + 1) < len(text):
                raise refuse(position + 1, "text after the closing ]")
            return
        raise refuse(position, "expecting ',' or ']'")


def _json_array_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | list[RowError]]]:
    for line, value in _json_items(path):
        if isinstance(value, dict):
            yield line, value
        else:
            yield line, [RowError(line, "(item)", "must be a JSON object")]


def count_rows(path: Path) -> int:
    """Rows in ``path``; :class:`ImportFileError` if it cannot be imported at all."""
    return check_file(path)[1]


_READERS = {"csv": _csv_rows, "json": _json_array_rows, "jsonl": _jsonl_rows}


def import_file(
    path: Path,
    producer: Producer,
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Enqueue every valid row of ``path``; :class:`ImportFileError` (before anything is
    enqueued) if the file cannot be imported at all."""
    kind, _ = check_file(path)
    rows = _READERS[kind](path)
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
        if isinstance(row, list):
            result.errors.extend(row)
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

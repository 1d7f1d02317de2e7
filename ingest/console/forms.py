"""The dead-letter filter as an HTML form: parsed leniently, echoed back, put in links.

A page must render whatever is in its address bar (a bad status is shown as an error
next to the form, not a 422), so this parses text fields by hand where the API lets
FastAPI validate. Both end in the same :class:`~ingest.deadletter.DeadLetterFilter`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

from ingest.deadletter import DeadLetterFilter

from .operations import Target

REASONS = ("rejected", "exhausted")
WINDOWS = {"15m": 900, "1h": 3600, "24h": 86_400, "7d": 604_800}
WINDOW_LABELS = {
    "": "any time",
    "15m": "last 15 minutes",
    "1h": "last hour",
    "24h": "last 24 hours",
    "7d": "last 7 days",
}
PAGE_SIZES = (25, 50, 100, 200)
MAX_OFFSET = 10_000_000
MAX_IDS = 1000


def _first(params: Mapping[str, Sequence[str]], name: str) -> str:
    values = params.get(name) or [""]
    return values[0].strip()[:255]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", " ").split() if part.strip()]


def parse_time(text: str) -> float:
    """ISO 8601 (or an HTML ``datetime-local`` value, taken as UTC) or unix seconds."""
    try:
        value = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value):
        raise ValueError("not a finite time")
    return value


@dataclass
class FilterForm:
    """The filter form's fields as typed, plus what was wrong with them."""

    reasons: list[str] = field(default_factory=list)
    statuses: str = ""
    websites: str = ""
    search: str = ""
    window: str = ""
    since: str = ""
    until: str = ""
    ids: list[str] = field(default_factory=list)
    offset: int = 0
    limit: int = 50
    errors: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: Mapping[str, Sequence[str]]) -> FilterForm:
        form = cls(
            reasons=[r for r in params.get("reason", []) if r in REASONS],
            statuses=_first(params, "status"),
            websites=_first(params, "website"),
            search=_first(params, "q"),
            window=_first(params, "window"),
            since=_first(params, "since"),
            until=_first(params, "until"),
            ids=[i.strip()[:255] for i in params.get("id", []) if i.strip()][:MAX_IDS],
        )
        if form.window not in WINDOWS:
            form.window = ""
        try:
            form.offset = min(max(0, int(_first(params, "offset") or 0)), MAX_OFFSET)
        except ValueError:
            form.errors.append("offset must be a whole number")
        try:
            limit = int(_first(params, "limit") or 50)
            form.limit = limit if limit in PAGE_SIZES else 50
        except ValueError:
            form.errors.append("page size must be a whole number")
        return form

    def selection(self, now: float) -> DeadLetterFilter:
        """The filter these fields describe (``now`` anchors a relative window); fields
        that do not parse are reported in ``errors`` and left out."""
        statuses: set[int] = set()
        for part in _split(self.statuses):
            if part.isdigit() and 100 <= int(part) <= 599:
                statuses.add(int(part))
            else:
                self.errors.append(f"HTTP status {part!r} is not a number from 100 to 599")
        since = self._time("since", self.since)
        until = self._time("until", self.until)
        if self.window:
            since = now - WINDOWS[self.window]
        return DeadLetterFilter(
            reasons=frozenset(self.reasons),
            statuses=frozenset(statuses),
            websites=frozenset(_split(self.websites)),
            transaction_contains=self.search or None,
            since=since,
            until=until,
        )

    def target(self, now: float) -> Target:
        """Explicit ids (ticked rows) if any, else the filter."""
        if self.ids:
            return Target(ids=tuple(self.ids))
        return Target(selection=self.selection(now))

    def _time(self, name: str, text: str) -> float | None:
        if not text:
            return None
        try:
            return parse_time(text)
        except (ValueError, OverflowError, OSError):
            self.errors.append(f"{name} {text!r} is not a time (use 2026-05-01T09:00, UTC)")
            return None

    def params(self) -> list[tuple[str, str]]:
        """The filter as query parameters (for links and hidden form fields)."""
        out: list[tuple[str, str]] = [("reason", r) for r in self.reasons]
        for name, value in (
            ("status", self.statuses),
            ("website", self.websites),
            ("q", self.search),
            ("window", self.window),
            ("since", self.since),
            ("until", self.until),
        ):
            if value:
                out.append((name, value))
        out.extend(("id", i) for i in self.ids)
        return out

    def query(self, **extra: object) -> str:
        items = self.params()
        if self.limit != 50:
            items.append(("limit", str(self.limit)))
        items.extend((k, str(v)) for k, v in extra.items() if v not in (None, ""))
        return urlencode(items)

    @property
    def is_filtered(self) -> bool:
        return bool(
            self.reasons
            or self.statuses
            or self.websites
            or self.search
            or self.window
            or self.since
            or self.until
        )


def resolved_params(selection: DeadLetterFilter) -> list[tuple[str, str]]:
    """A resolved filter (relative window turned into times) as form fields, so that the
    confirmation posts exactly the selection the dry run showed."""
    out: list[tuple[str, str]] = [("reason", r) for r in sorted(selection.reasons)]
    if selection.statuses:
        out.append(("status", " ".join(str(s) for s in sorted(selection.statuses))))
    if selection.websites:
        out.append(("website", " ".join(sorted(selection.websites))))
    if selection.transaction_contains:
        out.append(("q", selection.transaction_contains))
    if selection.since is not None:
        out.append(("since", repr(selection.since)))
    if selection.until is not None:
        out.append(("until", repr(selection.until)))
    return out

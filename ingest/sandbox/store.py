"""The sandbox's memory: one record per idempotency key, and request counters.

Idempotency key = (website, transaction_id, refunded), so a refund is its own event and
the same transaction id on two websites is two payments.

Every method takes the lock: the event loop thread writes while a test thread reads
(``records()``, ``stats()``), and iterating a dict that another thread grows raises.

Writers pass the ``generation`` they read when their request arrived, and a write from
an older generation is ignored: a request still sleeping (latency, a slow answer) when a
test calls ``reset`` must not record or count into the next test's clean slate.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

RecordStatus = Literal["recorded", "deleted"]


class RecordView(TypedDict):
    """One record as ``records()`` and ``GET /_sandbox/records`` show it."""

    website: str
    transaction_id: str
    refunded: bool
    status: RecordStatus
    attempts: int
    """POSTs of this key that reached the store (first + duplicates + re-records); those
    answered by an injected 429/5xx or fail_ids never get that far and are not counted."""
    first_received_at: str
    last_received_at: str
    deleted_at: str | None
    is_free_trial: bool
    body: dict[str, Any]
    """The JSON object exactly as the API received it."""


class StatsView(TypedDict):
    requests: int
    """API requests answered or dropped (admin endpoints are not counted)."""
    by_status: dict[str, int]
    """HTTP status (as a string, as in JSON) -> API answers with it."""
    recorded: int
    duplicates: int
    deleted: int
    dropped: int
    """Connections closed without an answer (rate_drop)."""
    slow: int
    """Answers held back by rate_timeout."""
    records: int
    """Records currently stored and not deleted."""


@dataclass(slots=True)
class PaymentRecord:
    website: str
    transaction_id: str
    refunded: bool
    body: dict[str, Any]
    visitor_id: str | None
    event_time: float
    """The payment's timestamp, or its first receive time when it has none (epoch s)."""
    is_free_trial: bool
    first_received: float
    last_received: float
    attempts: int = 1
    status: RecordStatus = "recorded"
    deleted_at: float | None = None

    def view(self) -> RecordView:
        return {
            "website": self.website,
            "transaction_id": self.transaction_id,
            "refunded": self.refunded,
            "status": self.status,
            "attempts": self.attempts,
            "first_received_at": _iso(self.first_received),
            "last_received_at": _iso(self.last_received),
            "deleted_at": None if self.deleted_at is None else _iso(self.deleted_at),
            "is_free_trial": self.is_free_trial,
            "body": dict(self.body),
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class PaymentStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str, bool], PaymentRecord] = {}
        self._by_status: dict[int, int] = {}
        self._recorded = 0
        self._duplicates = 0
        self._deleted = 0
        self._dropped = 0
        self._slow = 0
        self.generation = 0

    def record(
        self,
        generation: int,
        website: str,
        transaction_id: str,
        refunded: bool,
        body: dict[str, Any],
        visitor_id: str | None,
        event_time: float | None,
        is_free_trial: bool,
        now: float,
    ) -> bool:
        """Store a payment; False when its key is already recorded (a duplicate)."""
        key = (website, transaction_id, refunded)
        with self._lock:
            if generation != self.generation:
                return True
            existing = self._records.get(key)
            if existing is None:
                self._records[key] = PaymentRecord(
                    website=website,
                    transaction_id=transaction_id,
                    refunded=refunded,
                    body=body,
                    visitor_id=visitor_id,
                    event_time=now if event_time is None else event_time,
                    is_free_trial=is_free_trial,
                    first_received=now,
                    last_received=now,
                )
                self._recorded += 1
                return True
            existing.attempts += 1
            existing.last_received = now
            if existing.status == "deleted":
                # A payment sent again after its deletion is a new event, as it would be
                # for an API that forgot it: recorded afresh, not skipped.
                existing.status = "recorded"
                existing.deleted_at = None
                existing.body = body
                existing.visitor_id = visitor_id
                existing.event_time = now if event_time is None else event_time
                existing.is_free_trial = is_free_trial
                self._recorded += 1
                return True
            self._duplicates += 1
            return False

    def delete(
        self,
        generation: int,
        website: str,
        *,
        transaction_id: str | None,
        visitor_id: str | None,
        start: float | None,
        end: float | None,
        now: float,
    ) -> int:
        """Mark the website's matching records deleted; how many were."""
        deleted = 0
        with self._lock:
            if generation != self.generation:
                return 0
            for rec in self._records.values():
                if (
                    rec.status != "recorded"
                    or rec.website != website
                    or (transaction_id is not None and rec.transaction_id != transaction_id)
                    or (visitor_id is not None and rec.visitor_id != visitor_id)
                    or (start is not None and rec.event_time < start)
                    or (end is not None and rec.event_time > end)
                ):
                    continue
                rec.status = "deleted"
                rec.deleted_at = now
                deleted += 1
            self._deleted += deleted
        return deleted

    def count(self, generation: int, status: int) -> None:
        with self._lock:
            if generation == self.generation:
                self._by_status[status] = self._by_status.get(status, 0) + 1

    def count_dropped(self, generation: int) -> None:
        with self._lock:
            if generation == self.generation:
                self._dropped += 1

    def count_slow(self, generation: int) -> None:
        with self._lock:
            if generation == self.generation:
                self._slow += 1

    def views(
        self, *, transaction_id: str | None = None, website: str | None = None
    ) -> list[RecordView]:
        with self._lock:
            selected = [
                rec
                for rec in self._records.values()
                if (transaction_id is None or rec.transaction_id == transaction_id)
                and (website is None or rec.website == website)
            ]
            return [rec.view() for rec in selected]

    def stats(self) -> StatsView:
        with self._lock:
            return {
                "requests": sum(self._by_status.values()) + self._dropped,
                "by_status": {str(code): n for code, n in sorted(self._by_status.items())},
                "recorded": self._recorded,
                "duplicates": self._duplicates,
                "deleted": self._deleted,
                "dropped": self._dropped,
                "slow": self._slow,
                "records": sum(1 for r in self._records.values() if r.status == "recorded"),
            }

    def clear(self) -> None:
        with self._lock:
            self._records = {}
            self._by_status = {}
            self._recorded = self._duplicates = self._deleted = 0
            self._dropped = self._slow = 0
            self.generation += 1

"""The dead-letter store: events the API refused for good, or that ran out of attempts.

Each dead letter keeps the event (so it can be replayed exactly), why it died, the API's
last status and message, and every attempt. Nothing here expires or is trimmed: a payment
leaves the store only by an operator's replay or purge, and both are counted in the
accounting (``replayed``, ``purged``). The records hold the request body, never a header,
so never the API key. Key layout: :mod:`ingest.keys`; the atomic moves: :mod:`ingest.scripts`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from . import keys, scripts
from .delivery import Outcome
from .errors import AmbiguousIdError, NotFoundError
from .jobs import Claimed, job_args
from .logs import REDACTED, scrub
from .models import event_id
from .personal import LetterMask
from .timestamps import utc_iso

_SCAN_CHUNK = 500
# Characters a Redis MATCH pattern treats specially, escaped to match an id literally.
_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")
# Events per second a replay puts back on the queue (CLI and console alike).
DEFAULT_REPLAY_RATE = 200.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    job_id: str
    transaction_id: str
    website: str
    reason: str
    status: int | None
    error: str
    attempts: int
    first_attempt_at: str
    last_attempt_at: str
    dead_at: str
    history: list[dict[str, Any]]
    body: dict[str, Any]

    @classmethod
    def from_record(cls, raw: bytes | str) -> DeadLetter:
        record = json.loads(raw)
        return cls(
            job_id=record["job_id"],
            transaction_id=record.get("transaction_id", ""),
            website=record.get("website", ""),
            reason=record.get("reason", ""),
            status=record.get("status"),
            error=record.get("error", ""),
            attempts=int(record.get("attempts", 0)),
            first_attempt_at=record.get("first_attempt_at", ""),
            last_attempt_at=record.get("last_attempt_at", ""),
            dead_at=record.get("dead_at", ""),
            history=record.get("history", []),
            body=json.loads(job_args(record["data"]).body),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "transaction_id": self.transaction_id,
            "website": self.website,
            "reason": self.reason,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "first_attempt_at": self.first_attempt_at,
            "last_attempt_at": self.last_attempt_at,
            "dead_at": self.dead_at,
            "history": self.history,
            "event": self.body,
        }


def api_message(body: str, message: str) -> str:
    """The API's message about the event whose request body is ``body``, as we keep it
    (history, dead letter, pause reason): without keys, email addresses, or this event's
    own customer name and email."""
    return LetterMask.of(body).redact(scrub(message), REDACTED)


def dead_record(
    claimed: Claimed,
    outcome: Outcome,
    *,
    reason: str,
    attempts: int,
    history: list[dict[str, Any]],
    now: float,
) -> dict[str, Any]:
    """A dead letter: the event (to replay it), why it died, and every attempt.

    It holds the request body but never a request header, so never the API key.
    """
    return {
        "job_id": claimed.job_id,
        "transaction_id": claimed.transaction_id,
        "website": claimed.website,
        "data": claimed.data,
        "reason": reason,
        "status": outcome.status,
        "error": api_message(claimed.body, outcome.message),
        "attempts": attempts,
        "first_attempt_at": history[0]["at"] if history else utc_iso(now),
        "last_attempt_at": utc_iso(now),
        "dead_at": utc_iso(now),
        "history": history,
        "history_json": json.dumps(history),
    }


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to; empty fields match everything."""

    reasons: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    websites: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    transaction_contains: str | None = None
    since: float | None = None  # unix time of death, inclusive
    until: float | None = None

    @property
    def is_empty(self) -> bool:
        return not (
            self.reasons
            or self.statuses
            or self.websites
            or self.ids
            or self.transaction_contains
            or self.since is not None
            or self.until is not None
        )

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.statuses and letter.status not in self.statuses:
            return False
        if self.websites and letter.website not in self.websites:
            return False
        if self.ids and letter.job_id not in self.ids and letter.transaction_id not in self.ids:
            return False
        return not (
            self.transaction_contains
            and self.transaction_contains.lower() not in letter.transaction_id.lower()
        )


@dataclass(slots=True)
class ReplayResult:
    selected: int = 0
    requeued: int = 0
    skipped: int = 0  # replayed or purged by someone else meanwhile
    ids: list[str] = field(default_factory=list)


class DeadLetterStore:
    """Read and act on the dead letters of one queue."""

    def __init__(
        self,
        connection: redis.Redis,
        queue: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connection = connection
        self.queue = queue
        self.keys = keys.QueueKeys(queue)
        self._clock = clock
        self._sleep = sleep

    def count(self) -> int:
        """Every dead letter in the store (see :meth:`counts_by_reason` for a selection)."""
        return int(self.connection.hlen(self.keys.dead))

    def get(self, dead_id: str) -> DeadLetter:
        raw = self.connection.hget(self.keys.dead, dead_id)
        if raw is None:
            # Operators think in transaction ids: accept one when it is unambiguous.
            matches = list(self.iter(DeadLetterFilter(ids=frozenset({dead_id}))))
            if len(matches) == 1:
                return matches[0]
            raise NotFoundError(f"no dead letter with id {dead_id!r}", id=dead_id)
        return DeadLetter.from_record(raw)

    def find(self, dead_id: str) -> DeadLetter:
        """Like :meth:`get`, and also by the start of an id, as long as no other id starts
        the same way: :class:`AmbiguousIdError` says how many do."""
        try:
            return self.get(dead_id)
        except NotFoundError:
            if not dead_id:
                raise
        pattern = _GLOB_SPECIAL.sub(r"\\\g<0>", dead_id) + "*"
        candidates = [
            keys.text(member)
            for member, _score in self.connection.zscan_iter(
                self.keys.dead_index, match=pattern, count=_SCAN_CHUNK
            )
        ]
        if len(candidates) > 1:
            raise AmbiguousIdError(
                f"{dead_id!r} is the start of {len(candidates)} dead-letter ids; "
                "give more of the id",
                id=dead_id,
                candidates=len(candidates),
            )
        if candidates:
            return self.get(candidates[0])
        raise NotFoundError(f"no dead letter with id {dead_id!r}", id=dead_id)

    def iter(
        self, selection: DeadLetterFilter = DeadLetterFilter(), *, newest_first: bool = False
    ) -> Iterator[DeadLetter]:
        """Matching dead letters in order of death, read in chunks (never all at once)."""
        low = selection.since if selection.since is not None else "-inf"
        high = selection.until if selection.until is not None else "+inf"
        offset = 0
        while True:
            if newest_first:
                ids = self.connection.zrevrangebyscore(
                    self.keys.dead_index, high, low, start=offset, num=_SCAN_CHUNK
                )
            else:
                ids = self.connection.zrangebyscore(
                    self.keys.dead_index, low, high, start=offset, num=_SCAN_CHUNK
                )
            if not ids:
                return
            offset += len(ids)
            for raw in self.connection.hmget(
                self.keys.dead, [keys.text(i) for i in ids if isinstance(i, bytes | str)]
            ):
                if raw is None:  # replayed or purged since the index was read
                    continue
                letter = DeadLetter.from_record(raw)
                if selection.matches(letter):
                    yield letter

    def page(
        self,
        selection: DeadLetterFilter,
        *,
        offset: int = 0,
        limit: int = 50,
        newest_first: bool = True,
    ) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for index, letter in enumerate(self.iter(selection, newest_first=newest_first)):
            if index < offset:
                continue
            out.append(letter)
            if len(out) >= limit:
                break
        return out

    def counts_by_reason(self, selection: DeadLetterFilter = DeadLetterFilter()) -> dict[str, int]:
        """``reason (status)`` -> how many of the selected dead letters died so."""
        counts: dict[str, int] = {}
        for letter in self.iter(selection):
            label = (
                f"{letter.reason} ({letter.status if letter.status is not None else 'no answer'})"
            )
            counts[label] = counts.get(label, 0) + 1
        return counts

    def replay(
        self,
        ids: Iterable[str],
        *,
        rate: float | None = None,
        chunk: int = 100,
        progress: Callable[[int], None] | None = None,
    ) -> ReplayResult:
        """Put these dead letters back on the queue as fresh events (attempts reset).

        Idempotent: an id already replayed (or purged) is skipped, so two operators
        replaying at once requeue each event once. ``rate`` caps events per second so a
        large replay does not hit the API as one burst.
        """
        result = ReplayResult()
        pending = list(dict.fromkeys(ids))
        result.selected = len(pending)
        started = self._clock()
        for start in range(0, len(pending), chunk):
            batch = pending[start : start + chunk]
            now = datetime.now().astimezone()
            requeued = scripts.replay(
                self.connection, self.keys, batch, now=now, payments=self._payments_of(batch)
            )
            result.requeued += len(requeued)
            result.ids.extend(requeued)
            if progress is not None:
                progress(len(batch))
            if rate:
                # Pace by the clock, not per batch, so the average holds over the whole run.
                ahead = (start + len(batch)) / rate - (self._clock() - started)
                if ahead > 0:
                    self._sleep(ahead)
        result.skipped = result.selected - result.requeued
        return result

    def _payments_of(self, ids: list[str]) -> dict[str, str]:
        """Refund id -> the id of the payment it refunds, for the refunds among ``ids``."""
        payments: dict[str, str] = {}
        for job_id, raw in zip(ids, self.connection.hmget(self.keys.dead, ids), strict=True):
            if raw is None:
                continue
            args = job_args(json.loads(raw)["data"])
            body = json.loads(args.body)
            if body.get("refunded") is True:
                payments[job_id] = event_id(
                    args.website_id, str(body.get("transaction_id", "")), refunded=False
                )
        return payments

    def purge(self, ids: Iterable[str]) -> int:
        """Delete these dead letters for good; returns how many were removed.

        A refund waiting (deferred) on a purged payment is dead-lettered with the reason
        ``payment_purged`` rather than sent: a refund of a payment the API never recorded
        would post revenue that never was. Replay it to send it anyway, or purge it too.
        """
        removed = 0
        batch: list[str] = []
        for dead_id in ids:
            batch.append(dead_id)
            if len(batch) >= _SCAN_CHUNK:
                removed += self._purge_batch(batch)
                batch = []
        if batch:
            removed += self._purge_batch(batch)
        return removed

    def _purge_batch(self, batch: list[str]) -> int:
        return scripts.purge(self.connection, self.keys, batch, now=datetime.now(UTC))

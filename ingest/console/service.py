"""What the console knows and does, independent of HTTP: pages and API both call this.

:class:`Console` reads the accounting (:func:`ingest.stats.read_accounting`), pages of
dead letters (:mod:`ingest.console.index`), one dead letter, the paused websites; and
acts through the package's own implementations: replay and purge go to
:class:`~ingest.deadletter.DeadLetterStore` (:mod:`ingest.console.operations`), a probe
request is a ``SADD`` to ``ingest:{q}:probe`` that a worker picks up at its next
housekeeping. Everything it returns is already masked unless a reveal was asked for.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from ingest import keys
from ingest.deadletter import DeadLetter, DeadLetterFilter, DeadLetterStore
from ingest.errors import NotFoundError
from ingest.logs import get_logger
from ingest.personal import LetterMask, mask_text
from ingest.settings import Settings
from ingest.stats import read_accounting
from ingest.timestamps import utc_iso

from . import schemas
from .config import ConsoleOptions
from .index import DeadLetterIndex, parse_letter, shown_transaction, time_only
from .operations import Action, Operation, Operations, Target
from .security import mask_event

SAMPLE = 100  # dead letters listed by a dry run


class RateTracker:
    """Per-second rates of monotonic counters over the last ``window`` seconds, from the
    samples this process has seen; ``None`` until it has seen ``minimum`` seconds."""

    def __init__(self, *, window: float = 60.0, minimum: float = 5.0) -> None:
        self.window = window
        self.minimum = minimum
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()
        self._lock = threading.Lock()

    def observe(self, now: float, values: Sequence[int]) -> list[float | None]:
        with self._lock:
            samples = self._samples
            samples.append((now, tuple(values)))
            while len(samples) > 1 and samples[1][0] <= now - self.window:
                samples.popleft()
            start, first = samples[0]
            span = now - start
            if span < self.minimum:
                return [None] * len(values)
            return [max(0.0, (v - f) / span) for v, f in zip(values, first, strict=True)]


def _status(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 999:
        return None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _stamp(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def describe(target: Target) -> str:
    """A sentence an operator can check before confirming."""
    if target.selection is None:
        return f"{len(set(target.ids)):,} selected dead letter(s)"
    s = target.selection
    parts: list[str] = []
    if s.reasons:
        parts.append("reason " + " or ".join(sorted(s.reasons)))
    if s.statuses:
        parts.append("HTTP status " + " or ".join(str(x) for x in sorted(s.statuses)))
    if s.websites:
        parts.append("website " + " or ".join(sorted(s.websites)))
    if s.ids:
        parts.append("id " + " or ".join(sorted(s.ids)))
    if s.transaction_contains:
        parts.append(f"transaction id containing {s.transaction_contains!r}")
    if s.since is not None:
        parts.append(f"died at or after {utc_iso(s.since)}")
    if s.until is not None:
        parts.append(f"died at or before {utc_iso(s.until)}")
    return "dead letters with " + ", ".join(parts) if parts else "every dead letter"


def pinned(selection: DeadLetterFilter, as_of: float) -> DeadLetterFilter:
    """The selection limited to letters that had died by ``as_of`` (a dry run's moment), so
    confirming acts on what was shown, not on letters that arrived since."""
    until = as_of if selection.until is None else min(selection.until, as_of)
    return dataclasses.replace(selection, until=until)


class Console:
    """The console's reads and actions on one queue."""

    def __init__(
        self,
        settings: Settings,
        connection: redis.Redis,
        *,
        options: ConsoleOptions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.options = options
        self.queue = settings.queue
        self.connection = connection
        self.keys = keys.QueueKeys(settings.queue)
        self.store = DeadLetterStore(connection, settings.queue)
        self.index = DeadLetterIndex(connection, settings.queue)
        self.operations = Operations(
            self.store, rate=options.replay_rate, clock=clock, removed=self.index.forget
        )
        self._warming: threading.Thread | None = None
        self.rates = RateTracker()
        self._clock = clock
        self._log = get_logger(component="console")

    def warm(self) -> None:
        """Read the dead-letter index in the background (seconds for 100,000 letters),
        so that pages do not wait for it; until then they show no counts."""
        if self._warming is None and not self.index.ready:
            self._warming = threading.Thread(target=self._warm, name="console-index", daemon=True)
            self._warming.start()

    def _warm(self) -> None:
        try:
            self.index.refresh()
        except redis.exceptions.RedisError as exc:
            self._log.warning("dead-letter index not read yet", error=exc)
            self._warming = None

    # -- overview -------------------------------------------------------------------

    def overview(self) -> schemas.Overview:
        now = self._clock()
        a = read_accounting(self.connection, self.queue, now=now)
        enqueued_rate, dead_rate = self.rates.observe(now, (a.enqueued, a.dead_lettered_total))
        identity = schemas.Identity(
            enqueued=a.enqueued,
            delivered=a.delivered,
            dead=a.dead,
            purged=a.purged,
            erased=a.erased,
            queued=a.queued,
            in_flight=a.in_flight,
            scheduled=a.scheduled,
            deferred=a.deferred,
            parked=a.parked,
            lost=a.lost,
            holds=a.lost == 0,
        )
        return schemas.Overview(
            queue=self.queue,
            identity=identity,
            duplicates=a.duplicates,
            api_duplicates=a.api_duplicates,
            retried=a.retried,
            replayed=a.replayed,
            dead_lettered_total=a.dead_lettered_total,
            rates=schemas.Rates(
                delivered=a.rate_per_second, enqueued=enqueued_rate, dead_lettered=dead_rate
            ),
            oldest_queued_age_seconds=a.oldest_queued_age,
            workers=a.workers,
            paused=self._paused(a.paused),
            send_rates=[
                schemas.SendRate(credential=v.credential, rate=v.rate, hold_seconds=v.hold_seconds)
                for v in a.send_rates
            ],
            read_at=_stamp(now),
        )

    # -- paused websites ------------------------------------------------------------

    def paused(self) -> list[schemas.PausedWebsite]:
        raw = self.connection.hgetall(self.keys.paused)
        return self._paused({keys.text(k): keys.text(v) for k, v in raw.items()})

    def _paused(self, reasons: dict[str, str]) -> list[schemas.PausedWebsite]:
        sites = sorted(reasons)
        if not sites:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for site in sites:
                pipe.llen(self.keys.parked(site))
                pipe.sismember(self.keys.probe_requests, site)
            answers = pipe.execute()
        out = []
        for n, site in enumerate(sites):
            reason = _reason(reasons[site])
            last_probe = _text(reason.get("last_probe_at")) or None
            out.append(
                schemas.PausedWebsite(
                    website=site,
                    status=_status(reason.get("status")),
                    error=mask_text(_text(reason.get("error"))),
                    since=_text(reason.get("since")) or None,
                    last_probe_at=last_probe,
                    next_probe_after=self._next_probe(last_probe or _text(reason.get("since"))),
                    parked=int(answers[2 * n]),
                    probe_requested=bool(answers[2 * n + 1]),
                )
            )
        return out

    def _next_probe(self, moment: str) -> str | None:
        try:
            then = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return None
        if then.tzinfo is None:
            then = then.replace(tzinfo=UTC)
        return utc_iso(then.timestamp() + self.settings.auth_probe_interval)

    def request_probe(self, website: str, *, actor: str) -> bool:
        """Ask the workers to probe ``website`` now; False if it is not paused."""
        if not self.connection.hexists(self.keys.paused, website):
            return False
        self.connection.sadd(self.keys.probe_requests, website)
        self._log.info("probe requested from the console", website=website, actor=actor)
        return True

    # -- dead letters ---------------------------------------------------------------

    def dead_letters(
        self,
        selection: DeadLetterFilter,
        *,
        offset: int = 0,
        limit: int = 50,
        with_counts: bool = True,
    ) -> schemas.DeadLetterPage:
        if time_only(selection):
            ids, matched, total = self._rank_page(selection, offset, limit)
        else:
            entries = self.index.select(selection)
            ids = [e.id for e in entries[offset : offset + limit]]
            matched, total = len(entries), len(self.index)
        # While the index is first read in the background, an unfiltered page answers at
        # once, without counts, rather than waiting seconds for them.
        warming = self._warming is not None and not self.index.ready
        counts = self.counts() if with_counts and not warming else None
        return schemas.DeadLetterPage(
            total=total,
            matched=matched,
            offset=offset,
            limit=limit,
            items=[summary(letter) for letter in self._letters(ids)],
            counts=counts,
        )

    def counts(self) -> schemas.Counts:
        c = self.index.counts()
        return schemas.Counts(
            total=c.total,
            by_reason=c.by_reason,
            by_reason_status=[
                schemas.ReasonStatusCount(reason=r, status=s, count=n)
                for r, s, n in c.by_reason_status
            ],
            by_website=[schemas.WebsiteCount(website=w, count=n) for w, n in c.by_website],
        )

    def _rank_page(
        self, selection: DeadLetterFilter, offset: int, limit: int
    ) -> tuple[list[str], int, int]:
        """Newest first, by rank: O(log n + limit) however deep the page."""
        index = self.keys.dead_index
        low = "-inf" if selection.since is None else repr(float(selection.since))
        high = "+inf" if selection.until is None else repr(float(selection.until))
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.zcard(index)
            # Letters that died after the window come first in newest-first order.
            pipe.zcount(index, f"({high}", "+inf")
            pipe.zcount(index, low, high)
            total, newer, matched = (int(n) for n in pipe.execute())
        start = newer + offset
        last = newer + matched - 1
        if offset >= matched or start > last:
            return [], matched, total
        stop = min(start + limit - 1, last)
        ids = [
            keys.text(m)
            for m in self.connection.zrevrange(index, start, stop)
            if isinstance(m, bytes | str)
        ]
        return ids, matched, total

    def _letters(self, ids: Sequence[str]) -> list[DeadLetter]:
        if not ids:
            return []
        records = self.connection.hmget(self.keys.dead, list(ids))
        return [
            parse_letter(i, raw) for i, raw in zip(ids, records, strict=True) if raw is not None
        ]

    def dead_letter(
        self, dead_id: str, *, reveal: bool = False, actor: str = ""
    ) -> schemas.DeadLetterDetail:
        """One dead letter by id or (when unambiguous) transaction id."""
        raw = self.connection.hget(self.keys.dead, dead_id)
        found = dead_id
        if raw is None:
            same = self.index.find_transaction(dead_id)
            if len(same) == 1:
                found = same[0].id
                raw = self.connection.hget(self.keys.dead, found)
        if raw is None:
            raise NotFoundError(f"no dead letter with id {dead_id!r}", id=dead_id)
        letter = parse_letter(found, raw)
        if reveal:
            self._log.warning(
                "personal data revealed in the console", dead_letter=found, actor=actor
            )
        return detail(letter, reveal=reveal)

    # -- replay and purge -----------------------------------------------------------

    def as_of(self) -> float:
        """The moment a dry run describes: now, or the newest death if a worker's clock
        is ahead of ours (so everything listed is included)."""
        newest = self.connection.zrevrange(self.keys.dead_index, 0, 0, withscores=True)
        top = float(newest[0][1]) if newest else 0.0
        return max(self._clock(), top)

    def preview(
        self, action: Action, target: Target, *, as_of: float | None = None
    ) -> schemas.Preview:
        """The dry run: how many and which letters ``action`` would take; changes nothing."""
        moment = self.as_of() if as_of is None else as_of
        if target.selection is not None:
            page = self.dead_letters(
                pinned(target.selection, moment), limit=SAMPLE, with_counts=False
            )
            count, sample = page.matched, page.items
        else:
            ids = list(dict.fromkeys(target.ids))
            present = [i for i, raw in zip(ids, self._exists(ids), strict=True) if raw]
            count = len(present)
            sample = [summary(letter) for letter in self._letters(present[:SAMPLE])]
        return schemas.Preview(
            action=action, description=describe(target), count=count, as_of=moment, sample=sample
        )

    def _exists(self, ids: Sequence[str]) -> list[bool]:
        if not ids:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for dead_id in ids:
                pipe.hexists(self.keys.dead, dead_id)
            return [bool(x) for x in pipe.execute()]

    def start(
        self, action: Action, target: Target, *, as_of: float | None, actor: str
    ) -> Operation:
        """Replay or purge for real, in the background; see :mod:`.operations`."""
        description = describe(target)
        if target.selection is not None:
            moment = self.as_of() if as_of is None else as_of
            selection = pinned(target.selection, moment)
            # A search matches transaction ids as shown (masked): the letters it takes are
            # the ones this console listed, not those the unmasked text would match.
            searched = selection.ids or selection.transaction_contains
            target = (
                Target(ids=tuple(e.id for e in self.index.select(selection)))
                if searched
                else Target(selection=selection)
            )
        return self.operations.start(action, target, description=description, actor=actor)


def _reason(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"error": raw}
    return value if isinstance(value, dict) else {"error": raw}


def _shown(letter: DeadLetter, reveal: bool) -> Callable[[Any], str]:
    """How free text of ``letter`` is shown: as stored when revealed, else with every email
    and the letter's own customer (from its event) masked."""
    if reveal:
        return _text
    mask = LetterMask.of(letter.body)
    return lambda value: mask.mask(_text(value))


def summary(letter: DeadLetter, *, reveal: bool = False) -> schemas.DeadLetterSummary:
    show = _shown(letter, reveal)
    return schemas.DeadLetterSummary(
        id=letter.job_id,
        # An identifier, shown (and searched: index.shown_transaction) with emails masked.
        transaction_id=_text(letter.transaction_id)
        if reveal
        else shown_transaction(_text(letter.transaction_id)),
        website=_text(letter.website),
        reason=_text(letter.reason),
        status=_status(letter.status),
        attempts=letter.attempts,
        dead_at=_text(letter.dead_at),
        error=show(letter.error),
    )


def detail(letter: DeadLetter, *, reveal: bool) -> schemas.DeadLetterDetail:
    show = _shown(letter, reveal)
    history = letter.history if isinstance(letter.history, list) else []
    body = letter.body if isinstance(letter.body, dict) else {"value": letter.body}
    return schemas.DeadLetterDetail(
        **summary(letter, reveal=reveal).model_dump(),
        first_attempt_at=_text(letter.first_attempt_at),
        last_attempt_at=_text(letter.last_attempt_at),
        history=[
            schemas.Attempt(
                at=_text(a.get("at")), status=_status(a.get("status")), error=show(a.get("error"))
            )
            for a in history
            if isinstance(a, dict)
        ],
        event=body if reveal else mask_event(body),
        revealed=reveal,
    )


def operation_view(operation: Operation) -> schemas.Operation:
    return schemas.Operation(
        id=operation.id,
        action=operation.action,
        state=operation.state,
        description=operation.description,
        selected=operation.selected,
        processed=operation.processed,
        requeued=operation.requeued,
        purged=operation.purged,
        skipped=operation.skipped,
        rate=operation.rate,
        started_at=_stamp(operation.started_at),
        finished_at=None if operation.finished_at is None else _stamp(operation.finished_at),
        error=operation.error,
    )

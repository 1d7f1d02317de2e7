"""Fast reads of a large dead-letter store: pages, filtered pages and counts.

:meth:`DeadLetterStore.page` skips by iterating and :meth:`DeadLetterStore.counts_by_reason`
reads every record, so with 100,000 dead letters each takes seconds. Here:

- an unfiltered page, or one filtered only by time, is read by rank from the dead index
  (``ZREVRANGE`` with offsets found by ``ZCOUNT``): O(log n + page), no index needed;
- any other filter, and the counts per reason, use :class:`DeadLetterIndex`: a compact
  in-process summary of every dead letter (id, transaction id, website, reason, status,
  time of death), filtered in memory.

The index is kept exact without re-reading the store. Every change to the store moves a
counter of ``ingest:{q}:stats`` in the same Lua script (``dead_lettered`` when a letter
arrives; ``replayed``, ``purged`` or ``erased`` when one leaves), so those counters plus
``ZCARD`` are a version. Unchanged version: the index is current. Only arrivals (and the
console's own replays and purges, which it forgets as it makes them): read the newest end
of the dead index. Anything else: re-read the index's ids (not the records) and fetch only
the records it did not have.

Reading is cheap on both sides: a Lua script summarises records in Redis (``cjson``, a few
milliseconds per 500 letters) and both scripts answer one string per chunk, because
redis-py parses a long array reply element by element in Python (seconds for 100,000
letters) but a single string at once.

Selections are :class:`~ingest.deadletter.DeadLetterFilter`, with the same meaning as in
``ingest dlq``; :func:`matches` mirrors ``DeadLetterFilter.matches`` plus its time window.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from ingest import keys
from ingest.deadletter import DeadLetter, DeadLetterFilter
from ingest.personal import mask_text

_CHUNK = 250  # letters summarised per script call: a few ms of Redis time
_LIST_CHUNK = 20_000
# Workers stamp a death with their own clock; read this far below the newest known death
# so a worker running a little behind is not missed by an incremental refresh.
_CLOCK_MARGIN = 120.0
_VERSION_FIELDS = ("dead_lettered", "replayed", "purged", "erased")
_SELECTION_CACHE = 16
_SEP = b"\0"

# KEYS: 1 ingest:{q}:dead:index   ARGV: 1 start rank  2 stop rank
# Returns {number of fields, "id\0score\0id\0score..."}.
_LIST = """
local items = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
return {#items, table.concat(items, '\\0')}
"""

# KEYS: 1 ingest:{q}:dead   ARGV: ids
# Returns {number of letters found, "id\0transaction\0website\0reason\0status\0..."}; a
# record that is not JSON is summarised with the reason "unreadable".
_SUMMARISE = """
local function text(v)
  if type(v) == 'string' then return (string.gsub(v, '%z', '')) end
  if type(v) == 'number' then return tostring(v) end
  return ''
end
local out = {}
local n = 0
for _, id in ipairs(ARGV) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local ok, rec = pcall(cjson.decode, raw)
    if not ok or type(rec) ~= 'table' then rec = {reason = 'unreadable'} end
    local status = rec['status']
    if type(status) == 'number' and status == math.floor(status) and status >= 0
       and status < 1000 then
      status = string.format('%d', status)
    else
      status = ''
    end
    out[#out + 1] = id
    out[#out + 1] = text(rec['transaction_id'])
    out[#out + 1] = text(rec['website'])
    out[#out + 1] = text(rec['reason'])
    out[#out + 1] = status
    n = n + 1
  end
end
return {n, table.concat(out, '\\0')}
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """What the index keeps of one dead letter: enough to filter and count it."""

    id: str
    transaction_id: str
    website: str
    reason: str
    status: int | None
    dead_at: float


@dataclass(frozen=True, slots=True)
class Counts:
    """Dead letters per reason, per (reason, status) and per website."""

    total: int
    by_reason: dict[str, int] = field(default_factory=dict)
    by_reason_status: list[tuple[str, int | None, int]] = field(default_factory=list)
    by_website: list[tuple[str, int]] = field(default_factory=list)


def matches(selection: DeadLetterFilter, entry: Entry) -> bool:
    """``selection.matches`` for an index entry, including the time window that
    ``DeadLetterStore.iter`` applies through the dead index's scores."""
    if selection.since is not None and entry.dead_at < selection.since:
        return False
    if selection.until is not None and entry.dead_at > selection.until:
        return False
    if selection.reasons and entry.reason not in selection.reasons:
        return False
    if selection.statuses and entry.status not in selection.statuses:
        return False
    if selection.websites and entry.website not in selection.websites:
        return False
    if not (selection.ids or selection.transaction_contains):
        return True
    shown = shown_transaction(entry.transaction_id)
    if selection.ids and entry.id not in selection.ids and shown not in selection.ids:
        return False
    return not (
        selection.transaction_contains
        and selection.transaction_contains.lower() not in shown.lower()
    )


def shown_transaction(transaction_id: str) -> str:
    """A transaction id as the console shows it and searches it: emails masked, so that a
    search cannot find (or confirm) one by its unmasked text."""
    return mask_text(transaction_id) if "@" in transaction_id else transaction_id


def time_only(selection: DeadLetterFilter) -> bool:
    """True when the selection is empty or only a time window (readable by rank)."""
    return not (
        selection.reasons
        or selection.statuses
        or selection.websites
        or selection.ids
        or selection.transaction_contains
    )


def parse_letter(dead_id: str, raw: bytes | str) -> DeadLetter:
    """A dead letter from its record; an unreadable record still shows up, as such."""
    try:
        return DeadLetter.from_record(raw)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return DeadLetter(
            job_id=dead_id,
            transaction_id="",
            website="",
            reason="unreadable",
            status=None,
            error="this dead-letter record could not be read",
            attempts=0,
            first_attempt_at="",
            last_attempt_at="",
            dead_at="",
            history=[],
            body={},
        )


def _status(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1000:
        return None
    return value


class DeadLetterIndex:
    """The summaries of one queue's dead letters, refreshed on demand; thread-safe."""

    def __init__(self, connection: redis.Redis, queue: str) -> None:
        self.connection = connection
        self.keys = keys.QueueKeys(queue)
        self._list = connection.register_script(_LIST)
        self._summarise = connection.register_script(_SUMMARISE)
        self._lock = threading.Lock()
        self._entries: list[Entry] = []  # oldest first, as ZRANGE orders them
        self._by_id: dict[str, Entry] = {}
        self._version: tuple[int, ...] | None = None
        self._forgotten = 0  # letters this console removed since the version was read
        self._generation = 0
        self._interned: dict[Any, Any] = {}
        self._selections: OrderedDict[DeadLetterFilter, list[Entry]] = OrderedDict()
        self._counts: tuple[int, Counts] | None = None

    @property
    def ready(self) -> bool:
        return self._version is not None

    def __len__(self) -> int:
        return len(self._entries)

    # -- reads ----------------------------------------------------------------------

    def select(self, selection: DeadLetterFilter) -> list[Entry]:
        """Matching entries, newest first (the order of the dead-letter page)."""
        self.refresh()
        with self._lock:
            cached = self._selections.get(selection)
            if cached is not None:
                self._selections.move_to_end(selection)
                return cached
            found = [e for e in reversed(self._entries) if matches(selection, e)]
            self._selections[selection] = found
            if len(self._selections) > _SELECTION_CACHE:
                self._selections.popitem(last=False)
            return found

    def counts(self) -> Counts:
        self.refresh()
        with self._lock:
            if self._counts is not None and self._counts[0] == self._generation:
                return self._counts[1]
            triples = Counter(map(_triple, self._entries))
            reasons: Counter[str] = Counter()
            pairs: Counter[tuple[str, int | None]] = Counter()
            websites: Counter[str] = Counter()
            for (reason, status, website), n in triples.items():
                reasons[reason] += n
                pairs[(reason, status)] += n
                websites[website] += n
            counts = Counts(
                total=len(self._entries),
                by_reason=dict(reasons.most_common()),
                by_reason_status=[(r, s, n) for (r, s), n in pairs.most_common()],
                by_website=websites.most_common(50),
            )
            self._counts = (self._generation, counts)
            return counts

    def find_transaction(self, transaction_id: str) -> list[Entry]:
        self.refresh()
        with self._lock:
            return [
                e for e in self._entries if shown_transaction(e.transaction_id) == transaction_id
            ]

    # -- keeping it current ---------------------------------------------------------

    def refresh(self) -> None:
        """Bring the index up to date with Redis (cheap when nothing changed)."""
        with self._lock:
            if self._version is None or not self._refresh_incrementally():
                self._resync()

    def forget(self, ids: Iterable[str]) -> None:
        """Drop letters this process just replayed or purged (each one it is told of
        must be gone from the store), so its own actions need no re-read."""
        with self._lock:
            gone = [self._by_id.pop(i) for i in ids if i in self._by_id]
            if not gone:
                return
            dropped = {id(e) for e in gone}
            self._entries = [e for e in self._entries if id(e) not in dropped]
            self._forgotten += len(gone)
            self._changed()

    def _read_version(self, pipe: Any) -> None:
        pipe.hmget(self.keys.stats, list(_VERSION_FIELDS))
        pipe.zcard(self.keys.dead_index)

    @staticmethod
    def _version_of(raw: list[Any], size: Any) -> tuple[int, ...]:
        return (*(int(v or 0) for v in raw), int(size))

    def _refresh_incrementally(self) -> bool:
        low = (self._entries[-1].dead_at if self._entries else 0.0) - _CLOCK_MARGIN
        with self.connection.pipeline(transaction=True) as pipe:
            self._read_version(pipe)
            pipe.zcount(self.keys.dead_index, low, "+inf")
            raw_version, size, recent = pipe.execute()
        version = self._version_of(raw_version, size)
        assert self._version is not None
        if version == self._version and int(size) == len(self._entries):
            return True
        removed = sum(version[1:4]) - sum(self._version[1:4])
        if removed != self._forgotten:
            return False  # letters left the store that this index still holds
        total = int(size)
        newest = self._members(total - int(recent), total - 1)
        arrivals = [(m, score) for m, score in newest.items() if m not in self._by_id]
        if len(self._entries) + len(arrivals) != total:
            return False
        added = sorted(self._load(arrivals), key=_order)
        if added:
            in_order = not self._entries or _order(self._entries[-1]) <= _order(added[0])
            self._entries.extend(added)
            if not in_order:
                self._entries.sort(key=_order)
            self._changed()
        self._version = version
        self._forgotten = 0
        return True

    def _resync(self) -> None:
        with self.connection.pipeline(transaction=True) as pipe:
            self._read_version(pipe)
            raw_version, size = pipe.execute()
        # The version read before listing: if the store moves while it is listed, the next
        # refresh sees a newer version and lists again.
        version = self._version_of(raw_version, size)
        present = self._members(0, -1)
        kept = [e for e in self._entries if present.get(e.id) == e.dead_at]
        self._by_id = {e.id: e for e in kept}
        arrivals = [(m, score) for m, score in present.items() if m not in self._by_id]
        entries = kept + self._load(arrivals)
        entries.sort(key=_order)
        self._entries = entries
        self._by_id = {e.id: e for e in entries}
        self._version = version
        self._forgotten = 0
        self._changed()

    def _members(self, start: int, stop: int) -> dict[str, float]:
        """id -> time of death for the ranks start..stop (-1: the last), in chunks."""
        if stop < 0:
            stop = int(self.connection.zcard(self.keys.dead_index)) - 1
        out: dict[str, float] = {}
        for low in range(max(0, start), stop + 1, _LIST_CHUNK):
            high = min(stop, low + _LIST_CHUNK - 1)
            count, blob = self._list(keys=[self.keys.dead_index], args=[low, high])
            parts = bytes(blob).split(_SEP) if count else []
            if len(parts) != int(count):  # an id holding a NUL byte: read it the slow way
                pairs = cast(
                    "list[tuple[bytes, float]]",
                    self.connection.zrange(self.keys.dead_index, low, high, withscores=True),
                )
                out.update((keys.text(m), float(score)) for m, score in pairs)
                continue
            for n in range(0, len(parts), 2):
                out[parts[n].decode("utf-8", "replace")] = float(parts[n + 1])
        return out

    def _load(self, members: Iterable[tuple[str, float]]) -> list[Entry]:
        """Summaries of these (id, time of death) pairs, read in chunks."""
        pending = list(members)
        out: list[Entry] = []
        for start in range(0, len(pending), _CHUNK):
            chunk = dict(pending[start : start + _CHUNK])
            for entry in self._summaries(chunk):
                out.append(entry)
                self._by_id[entry.id] = entry
        return out

    def _summaries(self, chunk: dict[str, float]) -> list[Entry]:
        count, blob = self._summarise(keys=[self.keys.dead], args=list(chunk))
        parts = bytes(blob).split(_SEP) if count else []
        if len(parts) != 5 * int(count):
            return self._summaries_in_python(chunk)
        intern = self._intern
        out = []
        for n in range(0, len(parts), 5):
            dead_id = parts[n].decode("utf-8", "replace")
            status = parts[n + 4]
            out.append(
                Entry(
                    id=dead_id,
                    transaction_id=parts[n + 1].decode("utf-8", "replace"),
                    website=intern(parts[n + 2].decode("utf-8", "replace")),
                    reason=intern(parts[n + 3].decode("utf-8", "replace")),
                    status=intern(int(status)) if status else None,
                    dead_at=chunk.get(dead_id, 0.0),
                )
            )
        return out

    def _summaries_in_python(self, chunk: dict[str, float]) -> list[Entry]:
        """The same summaries with json in this process (ids the script cannot carry)."""
        records = self.connection.hmget(self.keys.dead, list(chunk))
        return [
            self._summarise_record(dead_id, dead_at, raw)
            for (dead_id, dead_at), raw in zip(chunk.items(), records, strict=True)
            if raw is not None
        ]

    def _summarise_record(self, dead_id: str, dead_at: float, raw: bytes | str) -> Entry:
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError):
            record = {"reason": "unreadable"}
        intern = self._intern
        return Entry(
            id=dead_id,
            transaction_id=_text(record.get("transaction_id")),
            website=intern(_text(record.get("website"))),
            reason=intern(_text(record.get("reason"))),
            status=intern(_status(record.get("status"))),
            dead_at=dead_at,
        )

    def _intern(self, value: Any) -> Any:
        # Thousands of letters share a handful of websites, reasons and statuses.
        return self._interned.setdefault(value, value)

    def _changed(self) -> None:
        self._generation += 1
        self._selections.clear()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.replace("\0", "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _triple(entry: Entry) -> tuple[str, int | None, str]:
    return (entry.reason, entry.status, entry.website)


def _order(entry: Entry) -> tuple[float, str]:
    # ZRANGE's order: by score, then by member.
    return (entry.dead_at, entry.id)

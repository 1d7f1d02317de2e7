"""Replays and purges started from the console, run in the background.

They call :class:`~ingest.deadletter.DeadLetterStore` exactly as ``ingest dlq replay`` and
``ingest dlq purge`` do: the selection is read with ``store.iter(selection)`` and handed to
``store.replay(ids, rate=...)`` (idempotent, paced) or ``store.purge(ids)``. A replay of
100,000 letters at 200 per second takes over eight minutes, longer than a browser should
wait for an answer, so each runs in its own thread and the page shows its progress.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ingest.deadletter import DeadLetterFilter, DeadLetterStore
from ingest.logs import get_logger

Action = Literal["replay", "purge"]
State = Literal["running", "done", "failed"]
_KEEP = 100


@dataclass(frozen=True, slots=True)
class Target:
    """What an action applies to: a filter (as in ``ingest dlq``) or explicit ids."""

    selection: DeadLetterFilter | None = None
    ids: tuple[str, ...] = ()

    @property
    def is_ids(self) -> bool:
        return self.selection is None


@dataclass(frozen=True, slots=True)
class Operation:
    """A snapshot of one replay or purge."""

    id: str
    action: Action
    state: State
    description: str
    selected: int = 0
    processed: int = 0
    requeued: int = 0
    purged: int = 0
    skipped: int = 0
    rate: float | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None


class Operations:
    """Starts actions in threads and remembers the last ``_KEEP`` of them."""

    def __init__(
        self,
        store: DeadLetterStore,
        *,
        rate: float,
        clock: Callable[[], float] = time.time,
        removed: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``removed`` is told the ids each action took out of the store."""
        self.store = store
        self.rate = rate
        self._removed = removed
        self._clock = clock
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._operations: OrderedDict[str, Operation] = OrderedDict()
        self._numbers = itertools.count(1)
        self._log = get_logger(component="console")

    def get(self, operation_id: str) -> Operation | None:
        with self._lock:
            return self._operations.get(operation_id)

    def start(self, action: Action, target: Target, *, description: str, actor: str) -> Operation:
        operation_id = f"{next(self._numbers)}-{secrets.token_hex(4)}"
        operation = Operation(
            id=operation_id,
            action=action,
            state="running",
            description=description,
            rate=self.rate if action == "replay" else None,
            started_at=self._clock(),
        )
        with self._lock:
            self._operations[operation_id] = operation
            while len(self._operations) > _KEEP:
                self._operations.popitem(last=False)
        self._log.info(
            f"dead-letter {action} started from the console",
            operation=operation_id,
            selection=description,
            actor=actor,
        )
        thread = threading.Thread(
            target=self._run, args=(operation_id, action, target), name=f"console-{action}"
        )
        thread.daemon = True
        thread.start()
        return operation

    def wait(self, operation_id: str, timeout: float) -> Operation | None:
        """The operation once finished, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._done:
            while True:
                operation = self._operations.get(operation_id)
                left = deadline - time.monotonic()
                if operation is None or operation.state != "running" or left <= 0:
                    return operation
                self._done.wait(left)

    def _update(self, operation_id: str, **changes: object) -> None:
        with self._done:
            current = self._operations.get(operation_id)
            if current is not None:
                self._operations[operation_id] = replace(current, **changes)  # type: ignore[arg-type]
            self._done.notify_all()

    def _ids(self, target: Target) -> list[str]:
        if target.selection is None:
            return list(dict.fromkeys(target.ids))
        # The same read as `ingest dlq replay` / `purge`: every matching letter, in order.
        return [letter.job_id for letter in self.store.iter(target.selection)]

    def _run(self, operation_id: str, action: Action, target: Target) -> None:
        try:
            ids = self._ids(target)
            self._update(operation_id, selected=len(ids))
            if action == "replay":
                processed = 0

                def progress(n: int) -> None:
                    nonlocal processed
                    processed += n
                    self._update(operation_id, processed=processed)

                result = self.store.replay(ids, rate=self.rate, progress=progress)
                self._tell_removed(result.ids)
                self._update(
                    operation_id,
                    processed=len(ids),
                    requeued=result.requeued,
                    skipped=result.skipped,
                )
                outcome = {"requeued": result.requeued, "skipped": result.skipped}
            else:
                removed = self._purge(operation_id, ids)
                outcome = {"purged": removed, "skipped": len(ids) - removed}
                self._update(operation_id, purged=removed, skipped=len(ids) - removed)
        except Exception as exc:  # reported on the page; the console keeps serving
            self._log.error(f"dead-letter {action} failed", operation=operation_id, error=exc)
            self._update(
                operation_id,
                state="failed",
                error=f"{type(exc).__name__}: {exc}",
                finished_at=self._clock(),
            )
            return
        self._log.info(
            f"dead-letter {action} finished", operation=operation_id, selected=len(ids), **outcome
        )
        self._update(operation_id, state="done", finished_at=self._clock())

    def _purge(self, operation_id: str, ids: Sequence[str]) -> int:
        removed = 0
        for start in range(0, len(ids), 500):
            batch = list(ids[start : start + 500])
            gone = self.store.purge(batch)
            if gone == len(batch):  # otherwise which ones were already gone is unknown
                self._tell_removed(batch)
            removed += gone
            self._update(operation_id, processed=start + len(batch), purged=removed)
        return removed

    def _tell_removed(self, ids: list[str]) -> None:
        if self._removed is not None and ids:
            self._removed(ids)

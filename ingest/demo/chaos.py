"""``ingest demo --chaos``: the faults injected while the demo delivers, and their account.

Each fault fires once the run has got far enough (a share of the events delivered or
dead-lettered), so it lands mid-run whatever the machine's speed, and reports what it did
as it happens and, at the end, with the evidence that it happened: the sandbox's answer
counts, the killed worker's exit status and what became of the events it held, the
redis-server's new process.

- **5xx** throughout: the sandbox answers 500 and 503 to a share of POSTs;
- a **429 window**: for a few seconds a share of POSTs is answered 429 with ``Retry-After``;
- a **worker SIGKILLed** with events in flight: their leases (short in this mode) run out
  and the other worker delivers them;
- **redis-server killed** (SIGKILL) and restarted from its append-only file.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from ingest.sandbox import StatsView

from .stack import DemoStack, DemoWorker, EventCount

RATE_500 = 0.05
RATE_503 = 0.05
# Width of the "when" column of the account: "throughout", "t+12.3 s".
WHEN = 11
# The workers' lease in this mode: a SIGKILLed worker's events come back within seconds.
LEASE_SECONDS = 3


def answered(stats: StatsView, status: int) -> int:
    return stats["by_status"].get(str(status), 0)


class Fault(abc.ABC):
    """One fault of the run. ``step`` is called on every poll until ``done``, and only once
    the faults before it are done, so they happen one after another; it acts when due and
    returns a line to show then, or None."""

    done: bool = False

    @abc.abstractmethod
    def step(self, stack: DemoStack, progress: float, now: float) -> str | None:
        """``progress``: share of events delivered or dead-lettered; ``now``: seconds since
        the workers started."""

    @abc.abstractmethod
    def account(self, count: EventCount, stats: StatsView) -> str:
        """One line for the end: what was done, when, and the evidence it happened."""


class ErrorAnswers(Fault):
    """500s and 503s for a share of POSTs, from the first to the last (set at start-up)."""

    done = True

    def __init__(self, rate_500: float = RATE_500, rate_503: float = RATE_503) -> None:
        self.rate_500 = rate_500
        self.rate_503 = rate_503

    def sandbox_faults(self) -> dict[str, float]:
        return {"rate_500": self.rate_500, "rate_503": self.rate_503}

    def step(self, stack: DemoStack, progress: float, now: float) -> str | None:
        return None

    def account(self, count: EventCount, stats: StatsView) -> str:
        return (
            f"{'throughout':<{WHEN}} {self.rate_500:.0%} of POSTs answered 500, "
            f"{self.rate_503:.0%} 503: 500s {answered(stats, 500):,}, 503s {answered(stats, 503):,}"
        )


@dataclass
class ThrottleWindow(Fault):
    """For ``seconds``, a share of POSTs is answered 429 with ``Retry-After``."""

    at: float = 0.15
    seconds: float = 2.0
    rate: float = 0.3
    retry_after: int = 1
    opened_at: float | None = None
    closed_at: float | None = None

    def step(self, stack: DemoStack, progress: float, now: float) -> str | None:
        if self.opened_at is None:
            if progress < self.at:
                return None
            stack.sandbox.set_faults(rate_429=self.rate, retry_after=self.retry_after)
            self.opened_at = now
            return (
                f"t+{now:.1f} s  429 window opens: {self.rate:.0%} of POSTs answered 429, "
                f"Retry-After: {self.retry_after}"
            )
        if self.closed_at is None and now >= self.opened_at + self.seconds:
            stack.sandbox.set_faults(rate_429=0.0)
            self.closed_at = now
            self.done = True
            return f"t+{now:.1f} s  429 window closes"
        return None

    def account(self, count: EventCount, stats: StatsView) -> str:
        when = f"t+{self.opened_at or 0:.1f} s"
        seconds = (self.closed_at or 0) - (self.opened_at or 0)
        return (
            f"{when:<{WHEN}} 429 window of {seconds:.1f} s, {self.rate:.0%} of POSTs, "
            f"Retry-After: {self.retry_after}: 429s {answered(stats, 429):,}"
        )


@dataclass
class KillWorker(Fault):
    """SIGKILL the last worker once it holds events; the others deliver them after their
    lease runs out."""

    at: float = 0.35
    lease_seconds: int = LEASE_SECONDS
    killed_at: float | None = None
    victim: DemoWorker | None = None
    exit_code: int | None = None
    held: tuple[str, ...] = ()

    def step(self, stack: DemoStack, progress: float, now: float) -> str | None:
        if self.done or progress < self.at:
            return None
        victim = stack.workers[-1]
        held = stack.in_flight_of(victim)
        # Killing it while it holds nothing (between batches, held back by a 429, Redis
        # restarting) would show nothing: wait for a moment it holds some, over 40% of the
        # run (a fast drain polled every 0.2 s gives few such moments).
        if not held and progress < self.at + 0.4:
            return None
        self.exit_code = victim.kill()
        self.victim, self.held, self.killed_at, self.done = victim, tuple(held), now, True
        return f"t+{now:.1f} s  SIGKILL {victim.name} ({len(held):,} events in flight)"

    def account(self, count: EventCount, stats: StatsView) -> str:
        name = self.victim.name if self.victim is not None else "?"
        places = [count.places.get(job_id) for job_id in self.held]
        # Some events the demo sends are refused by the API on purpose: those come back to
        # the dead-letter queue, not to the API.
        delivered, dead = places.count("delivered"), places.count("dead")
        when = f"t+{self.killed_at or 0:.1f} s"
        return (
            f"{when:<{WHEN}} SIGKILL {name} ({len(self.held):,} in flight): {delivered:,} "
            f"delivered, {dead:,} dead-lettered after its {self.lease_seconds} s lease"
        )


@dataclass
class RestartRedis(Fault):
    """SIGKILL redis-server (a crash: nothing flushed), restart it ``down_for`` s later on
    the same port from its append-only file."""

    at: float = 0.6
    down_for: float = 1.5
    killed_at: float | None = None
    restarted_at: float | None = None
    old_pid: int | None = None
    new_pid: int | None = None

    def step(self, stack: DemoStack, progress: float, now: float) -> str | None:
        server = stack.redis_server
        if self.killed_at is None:
            if progress < self.at:
                return None
            self.old_pid = server.pid
            server.kill()
            self.killed_at = now
            return f"t+{now:.1f} s  SIGKILL redis-server (pid {self.old_pid})"
        if self.restarted_at is None and now >= self.killed_at + self.down_for:
            server.restart()
            self.new_pid = server.pid
            self.restarted_at = now
            self.done = True
            return f"t+{now:.1f} s  redis-server restarted (pid {self.new_pid})"
        return None

    def account(self, count: EventCount, stats: StatsView) -> str:
        when = f"t+{self.killed_at or 0:.1f} s"
        down = (self.restarted_at or 0) - (self.killed_at or 0)
        return (
            f"{when:<{WHEN}} redis-server killed, restarted {down:.1f} s later from its "
            "append-only file"
        )


def chaos_faults() -> list[Fault]:
    """The faults of ``--chaos``, in the order they happen."""
    return [ErrorAnswers(), ThrottleWindow(), KillWorker(), RestartRedis()]

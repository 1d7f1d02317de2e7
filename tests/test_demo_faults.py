"""When each ``ingest demo --chaos`` fault fires, against a stand-in stack (no processes).

The run itself, with a real redis-server, sandbox and workers, is in ``test_demo.py``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from ingest.demo.chaos import KillWorker, RestartRedis, ThrottleWindow
from ingest.demo.run import _step_faults


@dataclass
class FakeSandbox:
    changes: list[dict[str, Any]] = field(default_factory=list)

    def set_faults(self, **changes: Any) -> None:
        self.changes.append(changes)


@dataclass
class FakeWorker:
    name: str
    killed: bool = False

    def kill(self) -> int:
        self.killed = True
        return -signal.SIGKILL


@dataclass
class FakeRedisServer:
    pid: int = 100
    events: list[str] = field(default_factory=list)

    def kill(self) -> None:
        self.events.append("kill")

    def restart(self) -> None:
        self.events.append("restart")
        self.pid += 1


@dataclass
class FakeStack:
    held: list[str] = field(default_factory=list)
    sandbox: FakeSandbox = field(default_factory=FakeSandbox)
    redis_server: FakeRedisServer = field(default_factory=FakeRedisServer)
    workers: list[FakeWorker] = field(
        default_factory=lambda: [FakeWorker("demo-1"), FakeWorker("demo-2")]
    )
    now: float = 0.0

    def in_flight_of(self, worker: FakeWorker) -> list[str]:
        return list(self.held)

    def since_start(self) -> float:
        return self.now


def test_throttle_window_opens_at_its_share_with_retry_after() -> None:
    stack = FakeStack()
    window = ThrottleWindow(at=0.15, seconds=2.0, rate=0.3, retry_after=1)

    assert window.step(stack, 0.10, 1.0) is None
    assert window.step(stack, 0.15, 1.5) is not None
    assert stack.sandbox.changes == [{"rate_429": 0.3, "retry_after": 1}]


def test_throttle_window_closes_after_its_seconds() -> None:
    stack = FakeStack()
    window = ThrottleWindow(at=0.15, seconds=2.0)
    window.step(stack, 0.2, 1.0)

    assert window.step(stack, 0.5, 2.9) is None
    assert not window.done
    window.step(stack, 0.5, 3.0)
    assert window.done
    assert stack.sandbox.changes[-1] == {"rate_429": 0.0}


def test_kill_worker_waits_until_the_worker_holds_events() -> None:
    stack = FakeStack(held=[])
    kill = KillWorker(at=0.35)

    assert kill.step(stack, 0.40, 5.0) is None
    stack.held = ["job1", "job2"]
    line = kill.step(stack, 0.41, 5.2)

    assert line is not None
    assert "2 events in flight" in line
    assert stack.workers[-1].killed
    assert not stack.workers[0].killed
    assert kill.held == ("job1", "job2")


def test_kill_worker_waits_for_held_events_over_a_further_40_percent() -> None:
    stack = FakeStack(held=[])
    kill = KillWorker(at=0.35)

    kill.step(stack, 0.74, 5.0)

    assert not kill.done


def test_kill_worker_kills_anyway_past_a_further_40_percent() -> None:
    stack = FakeStack(held=[])
    kill = KillWorker(at=0.35)

    kill.step(stack, 0.75, 5.0)

    assert kill.done
    assert kill.exit_code == -signal.SIGKILL


def test_restart_redis_restarts_after_it_was_down_for_its_seconds() -> None:
    stack = FakeStack()
    restart = RestartRedis(at=0.6, down_for=1.5)

    restart.step(stack, 0.6, 10.0)
    restart.step(stack, 0.6, 11.4)
    assert stack.redis_server.events == ["kill"]
    restart.step(stack, 0.6, 11.5)

    assert stack.redis_server.events == ["kill", "restart"]
    assert (restart.old_pid, restart.new_pid) == (100, 101)
    assert restart.done


def test_faults_happen_one_after_another_never_two_at_once() -> None:
    # Past every fault's share at once (a small run): only the first one not done acts.
    stack = FakeStack(held=["job1"], now=1.0)
    faults = [ThrottleWindow(at=0.15, seconds=2.0), KillWorker(at=0.35), RestartRedis(at=0.6)]

    _step_faults(stack, faults, 0.9)

    assert stack.sandbox.changes  # the 429 window opened
    assert not stack.workers[-1].killed
    assert stack.redis_server.events == []

"""A model of the whole lifecycle, driven by hypothesis: what users and operators do.

Rules: enqueue a payment or a refund from any process and into any queue; a Redis outage
(events spooled by short-lived processes) and a flush; a worker claims and acknowledges with
API answers drawn from 200, 422, 503, 429 and timeout; a worker SIGKILLed mid-request (its
leases expire); ``dlq replay`` and ``dlq purge``; erasure by visitor; ``rq info``.

After every step, against a real redis-server: the accounting identity holds in every queue;
the API never recorded a refund before its payment; nothing is deferred whose payment is
gone. The worker is its own scripts (``claim``, ``ack``, ``reclaim``) and :func:`decide`, with
the API's answer scripted, so a step takes milliseconds instead of a process's start.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from click.testing import CliRunner
from conftest import run_on
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ingest import keys
from ingest.deadletter import DeadLetterStore
from ingest.delivery import classify
from ingest.embedded import free_port
from ingest.erasure import build_request, erase_local
from ingest.models import Payment, validate_payment
from ingest.producer import Producer
from ingest.retry import RetryPolicy
from ingest.scripts import PAYMENT_ERASED, PAYMENT_PURGED, ack, claim, reclaim, waiting
from ingest.settings import Settings
from ingest.stats import read_accounting
from ingest.worker import decide

pytestmark = pytest.mark.integration

T = TypeVar("T")
QUEUES = ("payments", "refunds")
TRANSACTIONS = [f"tx{i}" for i in range(4)]
VISITORS = ("visitor-a", "visitor-b")
LEASE = 30.0
POLICY = RetryPolicy(max_attempts=3, base=1.0, cap=5.0)
EVENTS = st.tuples(st.sampled_from(TRANSACTIONS), st.booleans())
ANSWERS = ("200", "422", "503", "429", "timeout", "timeout-after-recording")
# (200 first: hypothesis draws the first choices more often, and most answers are 200.)


def visitor_of(transaction_id: str) -> str | None:
    """tx0 and tx2 are visitor-a's, tx1 visitor-b's, tx3 has no visitor id."""
    return {"tx0": "visitor-a", "tx1": "visitor-b", "tx2": "visitor-a"}.get(transaction_id)


def event(transaction_id: str, *, refund: bool) -> Payment:
    # A payment carries its visitor; a refund does not (a back-office refund).
    return validate_payment(
        amount=Decimal("19.99"),
        currency="USD",
        transaction_id=transaction_id,
        refunded=refund,
        datafast_visitor_id=None if refund else visitor_of(transaction_id),
    )


@dataclass
class FakeApi:
    """The Payments API as far as ordering goes: which events it recorded, in order."""

    recorded: list[tuple[str, bool]] = field(default_factory=list)

    def record(self, transaction_id: str, refund: bool) -> None:
        if (transaction_id, refund) not in self.recorded:
            self.recorded.append((transaction_id, refund))

    def answer(self, kind: str, transaction_id: str, refund: bool) -> Any:
        if kind in ("200", "timeout-after-recording"):
            self.record(transaction_id, refund)
        if kind == "200":
            return classify(200, b'{"message":"Payment recorded"}')
        if kind == "422":
            return classify(422, b'{"error":"amount does not match"}')
        if kind in ("503", "429"):
            return classify(int(kind), b"{}", "0")
        return classify(None, error="request exceeded its deadline")


def rq_info(url: str) -> tuple[int, str]:
    """``rq info`` in this process (click's runner): its exit code and output."""
    from rq.cli import main

    result = CliRunner().invoke(main, ["info", "--url", url], catch_exceptions=True)
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


def lifecycle_machine(redis_url: str, workdir: Path) -> type[RuleBasedStateMachine]:
    examples = itertools.count()

    class Lifecycle(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.conn = redis.Redis.from_url(redis_url, socket_timeout=10)
            self.conn.flushall()
            self.spool_dir = workdir / f"spool-{next(examples)}"
            self.api = FakeApi()
            self.now = time.time()
            self.paid: set[str] = set()  # transactions whose payment was enqueued
            self.gone: set[str] = set()  # payment purged or erased: its refund may go alone
            self.killed = 0
            self.producers = {q: self._producer(redis_url, q) for q in QUEUES}

        def _producer(self, url: str, queue: str) -> Producer:
            return Producer(
                Settings(
                    redis_url=url,
                    queue=queue,
                    spool_dir=self.spool_dir,
                    producer_timeout=0.05,
                    breaker_cooldown=3600.0,  # no watchdog flushes behind the model's back
                )
            )

        def teardown(self) -> None:
            for producer in self.producers.values():
                producer.close()
            self.conn.close()
            self.conn.connection_pool.disconnect()

        # -- users ------------------------------------------------------------------------

        def _enqueue(self, transaction_id: str, refund: bool, queue: str) -> None:
            if refund and transaction_id not in self.paid:
                return  # a refund of a payment never made is not ours to order
            receipt = self.producers[queue].enqueue(event(transaction_id, refund=refund))
            self.paid |= {transaction_id} if not refund else set()
            if receipt.status == "spooled":
                self._watchdogs_flush()  # a refund behind spooled events

        def _watchdogs_flush(self) -> None:
            # What each live producer's watchdog does once Redis answers: flush, its own
            # file included. The first may hold refunds back while the other still writes.
            for producer in (*self.producers.values(), self.producers["payments"]):
                producer.flush_spool()

        @initialize(transaction_ids=st.sets(st.sampled_from(TRANSACTIONS), min_size=1))
        def payments_are_made(self, transaction_ids: set[str]) -> None:
            for transaction_id in sorted(transaction_ids):
                self._enqueue(transaction_id, False, "payments")

        @rule(
            transaction_id=st.sampled_from(TRANSACTIONS),
            refund=st.booleans(),
            queue=st.sampled_from(QUEUES),
        )
        def enqueue(self, transaction_id: str, refund: bool, queue: str) -> None:
            # Payments go to "payments"; a refund to either queue.
            self._enqueue(transaction_id, refund, queue if refund else "payments")

        @rule(during=st.lists(EVENTS, max_size=3), after=st.lists(EVENTS, max_size=3))
        def redis_outage_then_flush(
            self, during: list[tuple[str, bool]], after: list[tuple[str, bool]]
        ) -> None:
            # During the outage short-lived processes spool events and exit.
            for transaction_id, refund in during:
                if refund and transaction_id not in self.paid:
                    continue
                down = self._producer(f"redis://127.0.0.1:{free_port()}/0", "payments")
                try:
                    assert down.enqueue(event(transaction_id, refund=refund)).status == "spooled"
                finally:
                    down.close()
                self.paid |= {transaction_id} if not refund else set()
            # Redis is back: live processes enqueue before anyone flushes, then a flush.
            for transaction_id, refund in after:
                self._enqueue(transaction_id, refund, "payments")
            self._watchdogs_flush()

        # -- workers ----------------------------------------------------------------------

        def _claim(
            self, queue: str, worker: str, limit: int, *, lease_until: float | None = None
        ) -> list[Any]:
            k = keys.QueueKeys(queue)
            now = self.now
            until = now + LEASE if lease_until is None else lease_until
            return run_on(
                redis_url,
                lambda c: claim(c, k, now=now, lease_until=until, worker=worker, limit=limit),
            )

        @rule(
            answers=st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=4),
            order=st.permutations(QUEUES),
        )
        def worker_delivers(self, answers: list[str], order: list[str]) -> None:
            """One pass of a worker over each queue, in either order (workers of different
            queues run independently): everything queued is claimed and sent, the API's
            answers repeating over the batch."""
            # Time passes: retries fall due, leases of killed workers run out.
            self.now += 100.0
            now = self.now
            replies = itertools.cycle(answers)
            for queue in order:
                k = keys.QueueKeys(queue)
                run_on(redis_url, lambda c, k=k: reclaim(c, k, now=now))
                batch = []
                for claimed in self._claim(queue, "live", 20):
                    refund = claimed.job_id == event_id_of(claimed.transaction_id, refund=True)
                    outcome = self.api.answer(next(replies), claimed.transaction_id, refund)
                    batch.append(
                        decide(claimed, outcome, now=now, policy=POLICY, random=lambda: 0.5)
                    )
                stale = run_on(
                    redis_url,
                    lambda c, k=k, batch=batch: ack(
                        c, k, batch, now=now, worker="live", dedup_window=86400
                    ),
                )
                assert stale == 0

        @rule(recorded=st.booleans())
        def worker_is_sigkilled_mid_request(self, recorded: bool) -> None:
            self.killed += 1
            # Its leases have already run out by the wall clock, as RQ's own tools see it,
            # and no live worker has put the events back yet.
            for queue in QUEUES:
                worker = f"killed-{self.killed}"
                for claimed in self._claim(queue, worker, 2, lease_until=time.time() - 1):
                    if recorded:  # the API had it; the answer never came back
                        refund = claimed.job_id == event_id_of(claimed.transaction_id, refund=True)
                        self.api.record(claimed.transaction_id, refund)

        # -- operators --------------------------------------------------------------------

        # One rule for the three, so that hypothesis (which picks among rules) spends most
        # steps on users and workers, as a real system does.
        @rule(
            action=st.sampled_from(["dlq replay", "dlq purge", "erase"]),
            queue=st.sampled_from(QUEUES),
            data=st.data(),
        )
        def operator_acts(self, action: str, queue: str, data: st.DataObject) -> None:
            if action == "dlq replay":
                self._replay(queue)
            elif action == "dlq purge":
                self._purge(queue, data)
            else:
                self._erase(data.draw(st.sampled_from(VISITORS)))

        def _replay(self, queue: str) -> None:
            store = DeadLetterStore(self.conn, queue)
            # A refund dead-lettered because its payment left unsent is left to a person:
            # replaying it sends a refund alone, which is that person's explicit choice.
            ids = [
                d.job_id for d in store.iter() if d.reason not in (PAYMENT_PURGED, PAYMENT_ERASED)
            ]
            store.replay(ids)

        def _purge(self, queue: str, data: st.DataObject) -> None:
            store = DeadLetterStore(self.conn, queue)
            letters = list(store.iter())
            if not letters:
                return
            chosen = data.draw(st.lists(st.sampled_from(letters), unique_by=lambda d: d.job_id))
            for letter in chosen:
                if letter.job_id == event_id_of(letter.transaction_id, refund=False):
                    self.gone.add(letter.transaction_id)
            store.purge([d.job_id for d in chosen])

        def _erase(self, visitor: str) -> None:
            for transaction_id in self.paid:
                if visitor_of(transaction_id) == visitor and self._holds_payment(transaction_id):
                    self.gone.add(transaction_id)  # erased before it was sent
            for queue in QUEUES:
                erase_local(self.conn, queue, build_request(visitor_id=visitor, all_time=True))

        def _holds_payment(self, transaction_id: str) -> bool:
            payment_id = event_id_of(transaction_id, refund=False)
            return bool(self.conn.exists(keys.job_key(payment_id))) or any(
                self.conn.hexists(keys.QueueKeys(q).dead, payment_id) for q in QUEUES
            )

        @invariant()
        def rq_info_exits_0(self) -> None:
            # At every moment, expired leases of SIGKILLed workers included (issue 13 item 6).
            code, output = rq_info(redis_url)
            assert code == 0, output

        # -- after every step -------------------------------------------------------------

        @invariant()
        def accounting_identity_holds(self) -> None:
            for queue in QUEUES:
                accounting = read_accounting(self.conn, queue)
                assert accounting.lost == 0, (queue, accounting)

        @invariant()
        def no_refund_recorded_before_its_payment(self) -> None:
            seen: set[str] = set()
            for transaction_id, refund in self.api.recorded:
                if not refund:
                    seen.add(transaction_id)
                elif transaction_id not in self.gone:
                    assert transaction_id in seen, (
                        f"refund of {transaction_id} recorded before its payment: "
                        f"{self.api.recorded}"
                    )

        @invariant()
        def nothing_is_deferred_whose_payment_is_gone(self) -> None:
            for queue in QUEUES:
                waits = waiting(self.conn, keys.QueueKeys(queue))
                assert waits.orphaned == 0, (queue, waits)

    return Lifecycle


def event_id_of(transaction_id: str, *, refund: bool) -> str:
    return event(transaction_id, refund=refund).job_id


_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def test_lifecycle_model_keeps_every_rule(redis_url: str, tmp_path: Path) -> None:
    run_state_machine_as_test(
        lifecycle_machine(redis_url, tmp_path),
        settings=settings(
            max_examples=15,
            stateful_step_count=15,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=_FIXTURES,
        ),
    )


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_lifecycle_model_keeps_every_rule_soak(redis_url: str, tmp_path: Path) -> None:
    run_state_machine_as_test(
        lifecycle_machine(redis_url, tmp_path),
        settings=settings(
            max_examples=400,
            stateful_step_count=50,
            deadline=None,
            database=None,
            suppress_health_check=_FIXTURES,
        ),
    )

"""What a plain ``rq worker`` does with our jobs: deliver one event, settle it in our keys.

Our jobs name :func:`ingest.delivery.deliver_payment` (see :mod:`ingest.jobs`), so RQ's own
``rq worker --serializer json payments`` can process the queue one job at a time. Run that
way, the function does not leave the outcome to RQ's bookkeeping (which would count a
delivery nowhere, put a refusal in ``rq:failed`` and crash releasing a deferred refund):
it decides the outcome exactly as our worker does (:func:`ingest.worker.decide`) and settles
it through the same ``ACK`` script, for the lease RQ's execution holds in the started
registry (``{id}:{execution}``):

* delivered: counted delivered, its deferred refund released, the job gone;
* refused for good, or out of attempts: into our dead letters with the reason;
* a transient failure or an auth refusal: our attempts and history are recorded and the job
  returns RQ's :class:`rq.Retry`, so RQ itself schedules it in ``rq:scheduled:{q}``, where
  any worker (ours or RQ's with ``--with-scheduler``) picks it up when due.

Then RQ finishes the job as it does any job with ``result_ttl`` 0: it reads its status and
deletes what is left of the hash, which ``ACK`` already settled.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import TYPE_CHECKING

import redis.asyncio
from rq import Retry as RQRetry

from . import keys
from .delivery import Outcome
from .jobs import Claimed
from .keys import LEASE_SCORE_OFFSET, text
from .logs import get_logger
from .retry import RetryPolicy
from .scripts import Dead, Delivered, Park, Retry, ack
from .settings import Settings

if TYPE_CHECKING:
    from rq.job import Job

_log = get_logger(component="rqjob")
# RQ counts the retries a job asked for and fails it past Retry.max; ours are counted by our
# own policy (INGEST_MAX_ATTEMPTS), which dead-letters first, so RQ's count must never bind.
_RQ_RETRY_MAX = 1_000_000
# RQ keeps a record of each retry (rq:results:{id}) for the job's failure_ttl: a day is
# plenty for an operator to look, and keeps them from piling up.
_RQ_RESULT_TTL = 86_400


def settle_in_rq(job: Job, settings: Settings, outcome: Outcome) -> str | RQRetry:
    """Settle ``job``'s outcome in our keys; RQ's :class:`rq.Retry` to have RQ schedule it.

    ``job`` is the job RQ is running (``rq.get_current_job()``); ``outcome`` its request's
    classified answer.
    """
    from .worker import decide  # the worker module is the one that decides, for both

    queue_keys = keys.QueueKeys(job.origin)
    conn = job.connection
    now = time.time()
    fields = conn.hmget(keys.job_key(job.id), ["data", "website", "attempts", "history"])
    data, website, attempts, history = (_as_bytes(f) for f in fields)
    claimed = Claimed.from_fields(job.id.encode(), data, website, attempts, history)
    policy = RetryPolicy(settings.max_attempts, settings.backoff_base, settings.backoff_max)
    decision = decide(claimed, outcome, now=now, policy=policy, random=random.random)
    match decision:
        case Delivered() | Dead():
            execution = _execution_of(conn, queue_keys, job.id)
            if execution is None:
                # Not ours to settle: our worker took the event over (a reclaim).
                _log.warning("event no longer held by this rq worker", job_id=job.id)
                return "skipped"
            asyncio.run(_ack(settings, queue_keys, decision, now=now, execution=execution))
            # ACK deleted the hash; RQ reads the job's status once more before deleting what
            # is left of it. HSETNX: a hash recreated meanwhile (a replay) keeps its own.
            conn.hsetnx(keys.job_key(job.id), "status", "finished")
            return "delivered" if isinstance(decision, Delivered) else "dead-lettered"
        case Retry(due=due, attempts=made, history=tried):
            conn.hset(
                keys.job_key(job.id), mapping={"attempts": made, "history": json.dumps(tried)}
            )
            return _rq_retry(job, max(1.0, due - now))
        case Park():
            # Our worker parks it and pauses the website when it next claims it.
            return _rq_retry(job, max(1.0, settings.auth_probe_interval))
        case _:
            raise AssertionError(f"unexpected decision {decision!r}")


def _as_bytes(value: bytes | str | None) -> bytes:
    # RQ's connection answers bytes (RQ refuses decode_responses); None for a missing field.
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()


def _rq_retry(job: Job, delay: float) -> RQRetry:
    job.failure_ttl = _RQ_RESULT_TTL
    return RQRetry(max=_RQ_RETRY_MAX, interval=math.ceil(delay))


def _execution_of(conn: redis.Redis, queue_keys: keys.QueueKeys, job_id: str) -> str | None:
    """The id of RQ's execution holding ``job_id`` in the started registry (its member is
    ``{id}:{execution}``, scored below our leases' offset), or None."""
    for member, score in conn.zscan_iter(queue_keys.started, match=f"{job_id}:*"):
        if float(score) < LEASE_SCORE_OFFSET:
            return text(member).split(":", 1)[1]
    return None


async def _ack(
    settings: Settings,
    queue_keys: keys.QueueKeys,
    decision: Delivered | Dead,
    *,
    now: float,
    execution: str,
) -> None:
    aconn = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        await ack(
            aconn,
            queue_keys,
            [decision],
            now=now,
            worker=execution,
            dedup_window=settings.dedup_window,
        )
    finally:
        await aconn.aclose()

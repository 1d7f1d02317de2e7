"""Every Redis key this package reads or writes, and what it means.

We keep to RQ's own keys wherever RQ has the concept, so ``rq info``, rq-dashboard and RQ's
registries see our queue, jobs and workers:

=================================  ======  ====================================================
key                                type    meaning
=================================  ======  ====================================================
``rq:queues``                      set     RQ's set of queue keys (so ``rq info`` lists ours)
``rq:workers``                     set     RQ's set of worker keys (``rq:worker:{name}``); a
                                           SIGKILLed worker stays in it, so a worker is alive
                                           only while its own key (heartbeat TTL) exists
``rq:queue:{q}``                   list    job ids waiting to be sent, oldest at the left
``rq:job:{id}``                    hash    one payment event in RQ's job layout (``data`` is
                                           RQ's JSON-serialised call tuple), plus our fields
                                           ``website``, ``attempts``, ``first_attempt_at``,
                                           ``last_status``, ``last_error``, and for a refund
                                           ``payment_id``, the payment it waits for
``rq:wip:{q}``                     zset    RQ's StartedJobRegistry: ``{id}:{worker}`` scored by
                                           the lease expiry plus ``LEASE_SCORE_OFFSET``; an
                                           expired entry is an event whose worker died, and is
                                           put back on the queue. (A plain ``rq worker``'s own
                                           entries, ``{id}:{execution}``, are scored by RQ.)
``rq:scheduled:{q}``               zset    RQ's ScheduledJobRegistry: job id scored by the time
                                           its retry is due
``rq:deferred:{q}``                zset    RQ's DeferredJobRegistry: refunds waiting for their
                                           payment to be delivered (a dead payment's wait
                                           for an operator's replay or purge)
``rq:job:{id}:dependents``         set     RQ's dependents set: the refund waiting on ``id``,
                                           in any queue; it outlives the job hash while the
                                           payment is dead
``ingest:{q}:done:{id}``           string  a delivered event's id, kept ``INGEST_DEDUP_WINDOW``
                                           seconds so a re-enqueue reports a duplicate
``ingest:{q}:dead``                hash    dead letters: job id -> JSON record (never expires)
``ingest:{q}:dead:index``          zset    dead-letter ids scored by the time they died
``ingest:{q}:stats``               hash    monotonic counters: enqueued, duplicates,
                                           delivered, api_duplicates, retried, dead_lettered,
                                           replayed, purged, erased
``ingest:{q}:paused``              hash    website -> JSON reason for an auth pause
``ingest:{q}:parked:{website}``    list    events of a paused website, set aside in order
``ingest:{q}:probe``               set     websites an operator asked to probe now
``ingest:{q}:rate``                hash    unix second -> deliveries, for "rate over 1 min"
``ingest:{q}:session:{h}``         string  one console login: ``h`` is the SHA-256 of the
                                           session id in the browser's cookie; expires after
                                           ``INGEST_CONSOLE_SESSION_LIFETIME``, deleted at logout
``ingest:{q}:minute:{m}``          hash    one minute of history for the console's charts
                                           (``m`` = unix time // 60), expiring
                                           :data:`MINUTE_TTL` (2 h) after its first write:
                                           ``delivered``, ``dead_lettered`` (counted by ACK
                                           per batch); ``depth``, ``oldest_age`` (the largest
                                           queue length and oldest queued event's age in
                                           seconds among the samples RECLAIM took that minute)
``ingest:{q}:send-rates``          set     credential ids this queue's workers send with
``ingest:send-rate:{credential}``  hash    one credential's shared send rate, for every queue
                                           and host (:mod:`ingest.ratelimit`): the token
                                           bucket (``tokens``, ``ts``), the learned ``rate``,
                                           ``hold_until``, the learner's ``learner`` state and
                                           the current answer window (``w_*``); expires a
                                           day after its last use
=================================  ======  ====================================================

``{credential}`` is :func:`ingest.ratelimit.credential_id`: a short hash of the key (and,
for a ``dft_`` token, the website), never the key itself.

The accounting identity every process can check from these keys alone::

    enqueued = delivered + dead + erased + purged
               + queued + in_flight + scheduled + deferred + parked

(``dead`` is the current size of the dead-letter store; a replay moves an event from
``dead`` back to ``queued``.)
"""

from __future__ import annotations

from dataclasses import dataclass

RQ_QUEUES = "rq:queues"
RQ_WORKERS = "rq:workers"  # members are the workers' own keys, rq:worker:{name}
JOB_PREFIX = "rq:job:"


# How long a minute of chart history (``ingest:{q}:minute:{m}``) is kept: the console draws
# the last hour, so at most ~120 such keys per queue exist at any time.
MINUTE_TTL = 2 * 3600


def minute_of(moment: float) -> int:
    """The unix minute (``m`` of ``ingest:{q}:minute:{m}``) that unix time ``moment`` is in."""
    return int(moment // 60)


# Added to a lease's expiry (unix seconds) to score it in RQ's started registry. RQ's own
# cleanup (``StartedJobRegistry.cleanup``, run by ``rq info``, RQ's workers and scheduler)
# takes the entries scored 0..now as executions whose worker died and moves their jobs to
# ``rq:failed``; our leases are scored past its reach (~year 2286 onwards), so only our
# ``RECLAIM`` returns them, to the queue.
LEASE_SCORE_OFFSET = 10_000_000_000


# The website of events sent with a df_ key (which names its own website): the value of a
# job's ``website`` field, and the name its auth pause and parked list go by.
DEFAULT_SITE = "-"


def text(value: bytes | str) -> str:
    """redis-py answers bytes or str depending on the client: narrow it here, once."""
    return value.decode() if isinstance(value, bytes) else value


def job_key(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def send_rate(credential: str) -> str:
    """One credential's shared send rate: not per queue, as the API limits the key."""
    return f"ingest:send-rate:{credential}"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one named queue."""

    name: str

    @property
    def queue(self) -> str:
        return f"rq:queue:{self.name}"

    @property
    def started(self) -> str:
        return f"rq:wip:{self.name}"

    @property
    def scheduled(self) -> str:
        return f"rq:scheduled:{self.name}"

    @property
    def deferred(self) -> str:
        return f"rq:deferred:{self.name}"

    def done(self, job_id: str) -> str:
        return f"ingest:{self.name}:done:{job_id}"

    @property
    def done_prefix(self) -> str:
        return f"ingest:{self.name}:done:"

    @property
    def dead(self) -> str:
        return f"ingest:{self.name}:dead"

    @property
    def dead_index(self) -> str:
        return f"ingest:{self.name}:dead:index"

    @property
    def stats(self) -> str:
        return f"ingest:{self.name}:stats"

    @property
    def paused(self) -> str:
        return f"ingest:{self.name}:paused"

    def parked(self, website: str) -> str:
        return f"ingest:{self.name}:parked:{website}"

    @property
    def parked_prefix(self) -> str:
        return f"ingest:{self.name}:parked:"

    @property
    def probe_requests(self) -> str:
        return f"ingest:{self.name}:probe"

    @property
    def rate(self) -> str:
        return f"ingest:{self.name}:rate"

    def console_session(self, session_hash: str) -> str:
        return f"ingest:{self.name}:session:{session_hash}"

    def minute(self, m: int) -> str:
        return f"ingest:{self.name}:minute:{m}"

    @property
    def minute_prefix(self) -> str:
        return f"ingest:{self.name}:minute:"

    @property
    def send_rates(self) -> str:
        return f"ingest:{self.name}:send-rates"

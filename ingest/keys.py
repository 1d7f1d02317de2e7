"""Every Redis key this package reads or writes, and what it means.

We keep to RQ's own keys wherever RQ has the concept, so ``rq info``, rq-dashboard and RQ's
registries see our queue, jobs and workers:

=================================  ======  ====================================================
key                                type    meaning
=================================  ======  ====================================================
``rq:queues``                      set     RQ's set of queue keys (so ``rq info`` lists ours)
``rq:queue:{q}``                   list    job ids waiting to be sent, oldest at the left
``rq:job:{id}``                    hash    one payment event in RQ's job layout (``data`` is
                                           RQ's JSON-serialised call tuple), plus our fields
                                           ``website``, ``attempts``, ``first_attempt_at``,
                                           ``last_status``, ``last_error``, and for a refund
                                           ``payment_id``, the payment it waits for
``rq:wip:{q}``                     zset    RQ's StartedJobRegistry: ``{id}:{worker}`` scored by
                                           the lease expiry; an expired entry is an event whose
                                           worker died, and is put back on the queue
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
``ingest:dead-in``                 hash    dead-letter id -> the queue whose dead letters hold
                                           it: a refund in any queue sees its payment died
``ingest:{q}:stats``               hash    monotonic counters: enqueued, duplicates,
                                           delivered, api_duplicates, retried, dead_lettered,
                                           replayed, purged, erased
``ingest:{q}:paused``              hash    website -> JSON reason for an auth pause
``ingest:{q}:parked:{website}``    list    events of a paused website, set aside in order
``ingest:{q}:probe``               set     websites an operator asked to probe now
``ingest:{q}:rate``                hash    unix second -> deliveries, for "rate over 1 min"
=================================  ======  ====================================================

The accounting identity every process can check from these keys alone::

    enqueued = delivered + dead + erased + purged
               + queued + in_flight + scheduled + deferred + parked

(``dead`` is the current size of the dead-letter store; a replay moves an event from
``dead`` back to ``queued``.)
"""

from __future__ import annotations

from dataclasses import dataclass

RQ_QUEUES = "rq:queues"
JOB_PREFIX = "rq:job:"
DEAD_IN = "ingest:dead-in"


# The website of events sent with a df_ key (which names its own website): the value of a
# job's ``website`` field, and the name its auth pause and parked list go by.
DEFAULT_SITE = "-"


def text(value: bytes | str) -> str:
    """redis-py answers bytes or str depending on the client: narrow it here, once."""
    return value.decode() if isinstance(value, bytes) else value


def job_key(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


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

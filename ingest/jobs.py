"""The job format: how a payment event is written into, and read back from, RQ's job hash.

An event is an RQ job (``rq:job:{id}``, see :mod:`ingest.keys`) whose ``data`` is RQ's
JSON-serialised call tuple ``[function, instance, args, kwargs]``: a stock ``rq worker``
can run it (:data:`DELIVER_FUNCTION`), and our worker reads the same fields. Everything
that writes ``data`` or reads it back goes through here.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .keys import DEFAULT_SITE

if TYPE_CHECKING:
    from .models import Payment

DELIVER_FUNCTION = "ingest.delivery.deliver_payment"
_RQ_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # what timestamps.utc_iso writes with RQ_TIMESPEC


class JobArgs(NamedTuple):
    """The arguments of :data:`DELIVER_FUNCTION`: what the worker sends."""

    body: str  # the exact JSON body of the POST (Payment.wire_body)
    website_id: str | None  # the event's own website, for an account token


# What json.dumps([DELIVER_FUNCTION, None, [body, website], {}], ensure_ascii=False,
# separators=(",", ":")) writes, put together from pieces: this runs on every enqueue, and
# json.dumps with options builds a new encoder per call (tests/test_delivery.py holds the two
# equal).
_DATA_HEAD = '["' + DELIVER_FUNCTION + '",null,['
_DATA_TAIL = "],{}]"
# What json.dumps(..., ensure_ascii=False) writes for a str: the C function it calls.
_encode_text = json.encoder.encode_basestring


def job_data(payment: Payment) -> str:
    """RQ's job ``data``: the call tuple a plain RQ worker could run, JSON-serialised."""
    website = payment.website_id
    return (
        _DATA_HEAD
        + _encode_text(payment.wire_body())
        + ("," + _encode_text(website) if website is not None else ",null")
        + _DATA_TAIL
    )


def job_data_text(data: bytes | str) -> str:
    """A job's ``data`` as the JSON text we wrote.

    RQ writes ``data`` zlib-compressed whenever it saves a job itself (a plain ``rq worker``
    scheduling a retry, ``rq requeue``); ours is plain JSON, which always starts with ``[``.
    """
    if isinstance(data, bytes):
        if not data.startswith(b"["):
            with contextlib.suppress(zlib.error):
                data = zlib.decompress(data)
        return data.decode()
    return data


def job_args(data: bytes | str) -> JobArgs:
    """The arguments back from a job's ``data`` (or a dead letter's copy of it)."""
    _function, _instance, args, _kwargs = json.loads(job_data_text(data))
    # deliver_payment's website is optional: a job may carry the body alone.
    return JobArgs(args[0], args[1] if len(args) > 1 else None)


def job_description(payment: Payment) -> str:
    """RQ's job ``description``, what ``rq info`` and rq-dashboard show for the event."""
    return ("refund " if payment.refunded else "payment ") + payment.transaction_id


def parse_rq_time(value: bytes | str) -> float:
    """Unix seconds of a job's ``created_at`` or ``enqueued_at`` (RQ's timestamp format)."""
    text = value.decode() if isinstance(value, bytes) else value
    return datetime.strptime(text, _RQ_TIME_FORMAT).replace(tzinfo=UTC).timestamp()


@dataclass(slots=True)
class Claimed:
    """One event a worker holds a lease on: the job's fields as the ``CLAIM`` script read them."""

    job_id: str
    data: str
    website: str
    attempts: int
    history: list[dict[str, Any]]  # earlier failed attempts, oldest first
    body: str
    website_id: str | None

    @classmethod
    def from_fields(
        cls, job_id: bytes, data: bytes, website: bytes, attempts: bytes, history: bytes
    ) -> Claimed:
        text = job_data_text(data)
        args = job_args(text)
        history_raw = history.decode() if history else ""
        return cls(
            job_id=job_id.decode(),
            data=text,
            website=website.decode() or DEFAULT_SITE,
            attempts=int(attempts or 0),
            history=json.loads(history_raw) if history_raw else [],
            body=args.body,
            website_id=args.website_id,
        )

    @property
    def transaction_id(self) -> str:
        try:
            return str(json.loads(self.body).get("transaction_id", ""))
        except ValueError:
            return ""

"""Deleting payments: the API's DELETE call, plus erasing matching events we still hold.

An erasure request ("delete everything about visitor X") must also stop us from sending X's
events later: so :func:`delete_payments` first erases matching events from our queue, retry
schedule, deferred and parked lists and the dead-letter store (each atomically, counted as
``erased``), then sends the DELETE. An event a worker is sending at that very moment cannot be
recalled; it is reported as ``in_flight`` so the caller can repeat the delete. A refund
waiting (deferred) on an erased payment is dead-lettered with the reason ``payment_erased``:
its payment will never be sent, and it does not itself match the request, so a person decides.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import redis

from . import keys
from .delivery import PAYMENTS_PATH, USER_AGENT, Credentials, classify, describe_transport_error
from .errors import DeliveryError, UnsafeDeleteError, ValidationError
from .jobs import job_args
from .models import parse_timestamp
from .scripts import erase
from .settings import Settings
from .timestamps import utc_iso

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """What will be asked of the API. Printable: it carries no credentials."""

    transaction_id: str | None = None
    visitor_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    website_id: str | None = None

    def params(self, *, account_token: bool, default_website: str | None) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.transaction_id:
            params["transaction_id"] = self.transaction_id
        if self.visitor_id:
            params["datafast_visitor_id"] = self.visitor_id
        if self.start:
            params["startAt"] = utc_iso(self.start)
        if self.end:
            params["endAt"] = utc_iso(self.end)
        site = self.website_id or default_website
        if account_token and site:
            params["websiteId"] = site
        return params

    def describe(self, settings: Settings) -> str:
        params = self.params(
            account_token=settings.is_account_token, default_website=settings.website_id
        )
        return f"DELETE {settings.api_url}{PAYMENTS_PATH}?{urlencode(params)}"

    def matches(self, body: dict[str, Any], website: str | None) -> bool:
        if self.website_id and website not in (None, keys.DEFAULT_SITE, self.website_id):
            return False
        if self.transaction_id and body.get("transaction_id") != self.transaction_id:
            return False
        if self.visitor_id and body.get("datafast_visitor_id") != self.visitor_id:
            return False
        if self.start or self.end:
            stamp = body.get("timestamp")
            if not isinstance(stamp, str):
                return False
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if self.start and moment < self.start:
                return False
            if self.end and moment > self.end:
                return False
        return True


@dataclass(slots=True)
class DeleteResult:
    request: str
    sent: bool
    api_status: int | None = None
    api_message: str = ""
    erased: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0

    @property
    def erased_total(self) -> int:
        return sum(self.erased.values())


def build_request(
    *,
    transaction_id: str | None = None,
    visitor_id: str | None = None,
    start: Any = None,
    end: Any = None,
    all_time: bool = False,
    website_id: str | None = None,
) -> DeleteRequest:
    """Validate a delete. Without a date range it spans all time: that needs ``all_time``."""
    if not transaction_id and not visitor_id:
        raise ValidationError({"transaction_id": "give a transaction id or a visitor id"})
    bounds: dict[str, datetime | None] = {}
    for name, value in (("start", start), ("end", end)):
        if value is None:
            bounds[name] = None
            continue
        bounds[name] = parse_timestamp(value, field=name)
    if bounds["start"] and bounds["end"] and bounds["start"] > bounds["end"]:
        raise ValidationError({"start": "is after end"})
    spans_all_time = not (bounds["start"] or bounds["end"])
    if visitor_id and not transaction_id and spans_all_time and not all_time:
        raise UnsafeDeleteError(
            "a delete by visitor id without --start/--end removes that visitor's payments "
            "across ALL TIME; pass --all-time (all_time=True) if that is what you want"
        )
    return DeleteRequest(transaction_id, visitor_id, bounds["start"], bounds["end"], website_id)


def erase_local(connection: redis.Redis, queue: str, request: DeleteRequest) -> DeleteResult:
    """Erase matching events from everywhere we hold them; see the module docstring."""
    k = keys.QueueKeys(queue)
    result = DeleteResult(request="", sent=False)
    for job_id in set(_candidates(connection, k, request)):
        place = erase(connection, k, job_id, now=datetime.now(UTC))
        if place is None:
            continue
        if place == "in_flight":
            result.in_flight += 1
        else:
            result.erased[place] = result.erased.get(place, 0) + 1
    return result


def _candidates(
    connection: redis.Redis, k: keys.QueueKeys, request: DeleteRequest
) -> Iterator[str]:
    def matching(ids: list[Any]) -> Iterator[str]:
        if not ids:
            return
        names = [keys.text(i) for i in ids]
        with connection.pipeline(transaction=False) as pipe:
            for job_id in names:
                pipe.hmget(keys.job_key(job_id), "data", "website")
            rows = pipe.execute()
        for job_id, (data, website) in zip(names, rows, strict=True):
            if data is None:
                continue
            body = json.loads(job_args(data).body)
            if request.matches(body, keys.text(website) if website else None):
                yield job_id

    length = int(connection.llen(k.queue))
    for start in range(0, length, _CHUNK):
        yield from matching(list(connection.lrange(k.queue, start, start + _CHUNK - 1)))
    for zkey in (k.scheduled, k.deferred):
        yield from matching(list(connection.zrange(zkey, 0, -1)))
    # In flight: "{id}:{worker}" members; found so that they can be reported, not recalled.
    members: list[Any] = list(connection.zrange(k.started, 0, -1))
    in_flight = [keys.text(m).split(":", 1)[0] for m in members]
    yield from matching(list(in_flight))
    for parked in connection.scan_iter(match=k.parked_prefix + "*", count=1000):
        yield from matching(list(connection.lrange(parked, 0, -1)))
    cursor = 0
    while True:
        cursor, entries = connection.hscan(k.dead, cursor, count=_CHUNK)
        assert isinstance(entries, dict)
        for dead_id, raw in entries.items():
            record = json.loads(raw)
            if request.matches(json.loads(job_args(record["data"]).body), record.get("website")):
                yield keys.text(dead_id)
        if cursor == 0:
            break


def delete_payments(
    *,
    transaction_id: str | None = None,
    visitor_id: str | None = None,
    start: Any = None,
    end: Any = None,
    all_time: bool = False,
    website_id: str | None = None,
    dry_run: bool = False,
    settings: Settings | None = None,
    connection: redis.Redis | None = None,
) -> DeleteResult:
    """Delete payment events at DataFast and erase matching events we still hold.

    Raises :class:`UnsafeDeleteError` for a visitor delete without a date range unless
    ``all_time=True``; :class:`ValidationError` for bad arguments; :class:`DeliveryError`
    when the API refuses (the local erasure has happened by then and is reported in the
    error's message). ``dry_run`` returns the request without erasing or sending anything.
    """
    settings = settings or Settings()
    request = build_request(
        transaction_id=transaction_id,
        visitor_id=visitor_id,
        start=start,
        end=end,
        all_time=all_time,
        website_id=website_id,
    )
    described = request.describe(settings)
    if dry_run:
        return DeleteResult(request=described, sent=False)
    credentials = Credentials(settings)
    own = connection is None
    if connection is None:
        from .connection import connect

        connection = connect(settings.redis_url, socket_timeout=10)
    try:
        result = erase_local(connection, settings.queue, request)
    finally:
        if own:
            connection.close()
    result.request = described
    params = request.params(
        account_token=credentials.account_token, default_website=settings.website_id
    )
    try:
        with httpx.Client(base_url=settings.api_url, timeout=settings.request_timeout) as client:
            response = client.delete(
                PAYMENTS_PATH,
                params=params,
                headers={**credentials.headers, "User-Agent": USER_AGENT},
            )
        outcome = classify(response.status_code, response.content)
    except httpx.HTTPError as exc:
        outcome = classify(None, error=describe_transport_error(exc))
    result.sent = True
    result.api_status = outcome.status
    result.api_message = outcome.message
    if outcome.status is None or not 200 <= outcome.status < 300:
        raise DeliveryError(
            f"the API did not delete ({outcome.status}: {outcome.message}); erased locally: "
            f"{result.erased_total}",
            status=outcome.status,
            api_message=outcome.message,
        )
    return result

"""The HTTP client for the Payments API. Every answer is classified here, and only here.

:func:`classify` turns a status, body and headers into a :class:`Verdict`; the worker, the
dead-letter replay and the CLI react to the verdict and never look at status codes again.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .errors import AuthenticationError, ConfigurationError, DeliveryError
from .ratelearner import allowed_rate
from .retry import parse_retry_after
from .settings import Settings
from .transport import HttpTransport, Request

PAYMENTS_PATH = "/api/v1/payments"
USER_AGENT = "datafast-ingest/0.1"


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # delivered earlier: the API counted it once
    PERMANENT = "permanent"  # the API will never accept this body: dead-letter it
    AUTH = "auth"  # the key is wrong: pause this website, keep its events
    TRANSIENT = "transient"  # try again later

    @property
    def delivered(self) -> bool:
        return self in (Verdict.DELIVERED, Verdict.DUPLICATE)


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    status: int | None
    message: str
    retry_after: float | None = None
    allowed_rate: float | None = None
    """Requests/s the answer's ``RateLimit`` fields allow, when it had them."""

    @property
    def throttled(self) -> bool:
        return self.status == 429


_PERMANENT = frozenset({400, 404, 405, 409, 410, 413, 415, 422})
_AUTH = frozenset({401, 403})
_MAX_MESSAGE = 500


def classify(
    status: int | None,
    body: bytes = b"",
    retry_after_header: str | None = None,
    *,
    now: float | None = None,
    error: str | None = None,
    header: Callable[[str], str | None] | None = None,
) -> Outcome:
    """The one place that decides what an answer means (table in the spec, section 1).

    ``status`` is ``None`` for a transport failure (timeout, refused or dropped connection),
    described by ``error``. A status we do not know is transient: retried, never dropped.
    ``header`` looks up the answer's other fields by lower-case name (its ``RateLimit``
    fields give :attr:`Outcome.allowed_rate`).
    """
    outcome = _classify(status, body, retry_after_header, now=now, error=error)
    rate = None if header is None else allowed_rate(header)
    return outcome if rate is None else dataclasses.replace(outcome, allowed_rate=rate)


def _classify(
    status: int | None,
    body: bytes,
    retry_after_header: str | None,
    *,
    now: float | None,
    error: str | None,
) -> Outcome:
    if status is None:
        return Outcome(Verdict.TRANSIENT, None, error or "transport error")
    message = _api_message(body)
    if 200 <= status < 300:
        if "duplicate" in message.lower():
            return Outcome(Verdict.DUPLICATE, status, message)
        return Outcome(Verdict.DELIVERED, status, message)
    if status == 409 and "duplicate" in message.lower():
        return Outcome(Verdict.DUPLICATE, status, message)
    if status in _AUTH:
        return Outcome(Verdict.AUTH, status, message)
    if status in _PERMANENT:
        return Outcome(Verdict.PERMANENT, status, message)
    retry_after = parse_retry_after(retry_after_header, now=time.time() if now is None else now)
    return Outcome(Verdict.TRANSIENT, status, message, retry_after)


def _api_message(body: bytes) -> str:
    """The API's own message, from either answer shape, cut to a sane length."""
    if not body:
        return ""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return body[:_MAX_MESSAGE].decode("utf-8", "replace")
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_MESSAGE]
        if isinstance(parsed.get("message"), str):
            return str(parsed["message"])[:_MAX_MESSAGE]
    return body[:_MAX_MESSAGE].decode("utf-8", "replace")


def describe_transport_error(exc: BaseException) -> str:
    """A message for a failed request that never includes the request's headers."""
    kind = type(exc).__name__
    detail = str(exc).split("\n", 1)[0][:200]
    return f"{kind}: {detail}" if detail else kind


class Credentials:
    """How requests authenticate: the bearer header and, for ``dft_`` tokens, ``websiteId``.

    The key lives in a ``SecretStr`` until the moment a header is built; ``repr`` hides it.
    """

    def __init__(self, settings: Settings) -> None:
        settings.require_delivery_credentials()
        assert settings.api_key is not None
        self._header = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}
        self.account_token = settings.is_account_token
        self.default_website = settings.website_id

    def __repr__(self) -> str:
        return f"Credentials(account_token={self.account_token}, key=**********)"

    @property
    def headers(self) -> dict[str, str]:
        return self._header

    def params(self, website: str | None) -> str:
        """The query string for one request.

        A ``df_`` website key names its own website: an event without a website id goes
        without ``websiteId``. An event that names one is sent with it even then, so that
        the API refuses (403, which pauses that website) an event meant for another website
        instead of recording it under the key's own.
        """
        if not self.account_token:
            return "" if website is None else f"?websiteId={quote(website)}"
        site = website or self.default_website
        if site is None:
            raise ConfigurationError(
                "a dft_ account token needs a website id (INGEST_WEBSITE_ID or website_id=)",
                setting="INGEST_WEBSITE_ID",
            )
        return f"?websiteId={quote(site)}"


def build_session(settings: Settings, *, concurrency: int) -> HttpTransport:
    """One pooled HTTP transport per worker process: at most ``concurrency`` keep-alive
    connections, ~1 per request in flight. Built anywhere; it binds to the event loop of
    its first request.

    ``INGEST_REQUEST_TIMEOUT`` bounds each request as a whole, connecting and waiting for a
    pooled connection included (:mod:`ingest.transport`).
    """
    return HttpTransport(settings.api_url, limit=concurrency, timeout=settings.request_timeout)


class PaymentsClient:
    """Sends one payment per request and classifies the answer. Never raises for HTTP.

    Over :class:`ingest.transport.HttpTransport`: one request head per website is built once
    and completed by each body; an answer is a status, headers and bytes. A general client
    cost ~2.5x the CPU per POST (aiohttp; httpx more: bench/http_clients.py). The transport
    is built on the first :meth:`send` unless one is given.
    """

    def __init__(self, settings: Settings, session: HttpTransport | None = None) -> None:
        self._credentials = Credentials(settings)
        self._settings = settings
        self._session = session
        self._requests: dict[str | None, Request] = {}
        self._headers = {
            **self._credentials.headers,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
        }

    def __repr__(self) -> str:
        return f"PaymentsClient({self._credentials!r}, {self._session!r})"

    def _transport(self) -> HttpTransport:
        session = self._session
        if session is None:
            session = self._session = build_session(
                self._settings, concurrency=self._settings.concurrency
            )
        return session

    def _request(self, website: str | None) -> Request:
        request = self._requests.get(website)
        if request is None:
            target = PAYMENTS_PATH + self._credentials.params(website)
            request = self._transport().prepare("POST", target, self._headers)
            self._requests[website] = request
        return request

    async def send(self, body: str | bytes, website: str | None) -> Outcome:
        content = body.encode() if isinstance(body, str) else body
        try:
            request = self._request(website)
        except ConfigurationError as exc:
            return Outcome(Verdict.AUTH, None, str(exc))
        try:
            response = await self._transport().send(request, content)
        except (OSError, TimeoutError) as exc:
            return classify(None, error=describe_transport_error(exc))
        headers = response.headers  # lower-case names
        return classify(
            response.status, response.body, headers.get("retry-after"), header=headers.get
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.aclose()


@functools.lru_cache(maxsize=4)
def _sync_client(pid: int, settings: Settings) -> tuple[Credentials, httpx.Client]:
    # One per process and configuration (a forked RQ work horse must not share the parent's
    # sockets): building an httpx.Client costs ~30 ms of CPU, more than the request.
    client = httpx.Client(base_url=settings.api_url, timeout=settings.request_timeout)
    return Credentials(settings), client


def send_payment(settings: Settings, body: str, website: str | None = None) -> Outcome:
    """Send one event synchronously and classify the answer. Never raises for HTTP."""
    credentials, client = _sync_client(os.getpid(), settings)
    try:
        params = credentials.params(website)
    except ConfigurationError as exc:
        return Outcome(Verdict.AUTH, None, str(exc))
    try:
        response = client.post(
            PAYMENTS_PATH + params,
            content=body.encode(),
            headers={**credentials.headers, "Content-Type": "application/json"},
        )
    except httpx.HTTPError as exc:
        return classify(None, error=describe_transport_error(exc))
    return classify(response.status_code, response.content, response.headers.get("retry-after"))


def deliver_payment(body: str, website: str | None = None) -> Any:
    """Deliver one event synchronously: what a plain ``rq worker`` runs for our jobs.

    Our own worker never calls this (it sends many events at once). Run by RQ, the outcome
    is settled in our keys as our worker would (:mod:`ingest.rqjob`): delivered, dead-lettered,
    or handed back to RQ as an ``rq.Retry``. Called directly, it returns the API's message,
    and raises :class:`DeliveryError` on anything but a delivery.
    """
    from rq import get_current_job

    settings = Settings()
    outcome = send_payment(settings, body, website)
    job = get_current_job()
    if job is not None:
        from .rqjob import settle_in_rq

        return settle_in_rq(job, settings, outcome)
    if outcome.verdict.delivered:
        return outcome.message
    error_class = AuthenticationError if outcome.verdict is Verdict.AUTH else DeliveryError
    raise error_class(
        f"payment not delivered ({outcome.verdict.value}): {outcome.message}",
        status=outcome.status,
        api_message=outcome.message,
    )

"""The aiohttp application: the two Payments API endpoints and the ``/_sandbox`` admin API.

API (as ``shared/spec/payments-api.md`` describes it)::

    POST   /api/v1/payments     record a payment or refund; 200 also for a duplicate
    DELETE /api/v1/payments     ?transaction_id= / ?datafast_visitor_id= [&startAt=&endAt=]

Auth: ``Bearer df_...`` acts for its own website (a foreign ``websiteId`` is 403);
``Bearer dft_...`` needs the ``payments:write`` scope and ``?websiteId=`` of a website it
reaches, else 403 (a missing ``websiteId`` is 403 too, not 400: see ``keys.py``).
Unknown or revoked keys are 401. A POST goes: latency, ``fail_all_status``, auth, the
credential's rate limit (429 at once when its token bucket is empty), random fault draw
(429/500/503 answer here, before anything is recorded), JSON parse, ``fail_ids``,
validation, record, then the slow or dropped answer if one was drawn.

Admin (no auth, not counted in the stats)::

    GET  /_sandbox/health              {"status": "ok"}
    GET  /_sandbox/faults              the current Faults as JSON
    POST /_sandbox/faults              partial update, e.g. {"rate_503": 0.2}; returns all
    GET  /_sandbox/keys                website_keys, account_tokens, revoked
    POST /_sandbox/keys                {"website_keys": {...}, "account_tokens": {...},
                                        "revoke": [...], "restore": [...], "defaults": true}
    GET  /_sandbox/records             {"records": [...]}; ?transaction_id= &website= filter
    GET  /_sandbox/stats               requests, by_status, recorded, duplicates, deleted, ...
    POST /_sandbox/reset               records and counters cleared, faults and keys back
                                       to the configured ones

Hot path rules (benchmarks push thousands of requests a second through here): no
per-request logging, no models, one ``json.loads`` and one encode per request, and the
fault draw skipped entirely when no random fault is set. aiohttp sets TCP_NODELAY on
every accepted socket and writes a small response's headers and body with a single
``transport.write`` (checked with strace: one ``sendto`` per answer), so keep-alive
clients never meet Nagle's delay.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from .faults import retry_after_header
from .keys import AuthFailure
from .ratelimit import headers as rate_limit_headers
from .state import SandboxState
from .validation import Payment, describe_errors, parse_iso8601, validate_payment

PAYMENTS_PATH: Final = "/api/v1/payments"
ADMIN_PREFIX: Final = "/_sandbox"

STATE_KEY: Final = web.AppKey("sandbox_state", SandboxState)

MSG_RECORDED: Final = "Payment recorded"
MSG_ATTRIBUTED: Final = "Payment recorded and attributed to visitor"
MSG_REFUND: Final = "Refund recorded"
MSG_DUPLICATE: Final = "Duplicate payment skipped: transaction_id already recorded"

_JSON: Final = "application/json"
_NORMAL, _SLOW, _DROP = 0, 1, 2


# One encoder for every answer: json.dumps with non-default arguments builds a new
# encoder per call, a measurable share of this server's per-request cost.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _dumps(payload: Mapping[str, Any]) -> bytes:
    return _encode(payload).encode()


def _response(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=_dumps(payload), status=status, content_type=_JSON, headers=headers)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _response(
        status, {"status": "error", "error": {"code": status, "message": message}}, headers
    )


def make_app(state: SandboxState) -> web.Application:
    """A new application serving ``state`` (one per start: an app runs under one runner)."""
    app = web.Application()
    app[STATE_KEY] = state
    api = _PaymentsApi(state)
    admin = _AdminApi(state)
    router = app.router
    router.add_post(PAYMENTS_PATH, api.post)
    router.add_delete(PAYMENTS_PATH, api.delete)
    # Registered after POST and DELETE, so it only catches the other methods.
    router.add_route("*", PAYMENTS_PATH, _method_not_allowed)
    router.add_get(f"{ADMIN_PREFIX}/health", admin.health)
    router.add_get(f"{ADMIN_PREFIX}/faults", admin.get_faults)
    router.add_post(f"{ADMIN_PREFIX}/faults", admin.post_faults)
    router.add_get(f"{ADMIN_PREFIX}/keys", admin.get_keys)
    router.add_post(f"{ADMIN_PREFIX}/keys", admin.post_keys)
    router.add_get(f"{ADMIN_PREFIX}/records", admin.get_records)
    router.add_get(f"{ADMIN_PREFIX}/stats", admin.get_stats)
    router.add_post(f"{ADMIN_PREFIX}/reset", admin.post_reset)
    router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def _method_not_allowed(request: web.Request) -> web.Response:
    return _error(405, f"{request.method} is not allowed here; use POST or DELETE")


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"no such endpoint: {request.path}")


class _PaymentsApi:
    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._store = state.store

    def _retry_after(self, status: int) -> dict[str, str] | None:
        if status != 429:
            return None
        value = retry_after_header(self._state.faults.retry_after, time.time())
        return None if value is None else {"Retry-After": value}

    async def _delay(self) -> None:
        faults = self._state.faults
        if faults.has_latency:
            jitter = faults.latency_jitter_ms
            extra = self._state.rng.random() * jitter if jitter else 0.0
            await asyncio.sleep((faults.latency_ms + extra) / 1000)

    def _counted(self, generation: int, response: web.Response | None) -> web.Response:
        # Counted here, once the answer is final: a slow answer counts when it goes out,
        # and a dropped connection counts as dropped rather than under some status.
        if response is None:
            self._store.count_dropped(generation)
            # aiohttp finds the transport closed when it writes this, and discards it.
            return web.Response(status=204)
        self._store.count(generation, response.status)
        return response

    async def post(self, request: web.Request) -> web.Response:
        generation = self._store.generation
        # The rate-limit fields _post finds, added here to whatever its answer turns out to be.
        fields: dict[str, str] = {}
        try:
            response = await self._post(request, generation, fields)
        except ConnectionResetError:
            # The client went away before its body was read (it timed out, or was killed):
            # nothing to record and nobody to answer. aiohttp logged each as an error with a
            # traceback, which buried real errors in every benchmark's sandbox log.
            return web.Response(status=204)
        if fields and response is not None:
            response.headers.update(fields)
        return self._counted(generation, response)

    def _rate_limited(
        self, request: web.Request, website: str, fields: dict[str, str]
    ) -> web.Response | None:
        """The 429 when the credential's bucket is empty; else None, its token taken.
        Puts the answer's rate-limit fields (if the faults ask for them) in ``fields``."""
        buckets = self._state.buckets
        if buckets is None:
            return None
        faults = self._state.faults
        credential = (request.headers.get("Authorization", ""), website)
        decision = buckets.take(credential, time.monotonic())
        if faults.rate_limit_headers != "none":
            fields.update(
                rate_limit_headers(faults.rate_limit_headers, buckets.rate, buckets.size, decision)
            )
        if decision.allowed:
            return None
        return _error(
            429,
            "rate limit exceeded: slow down",
            {"Retry-After": str(decision.retry_after)},
        )

    async def delete(self, request: web.Request) -> web.Response:
        generation = self._store.generation
        return self._counted(generation, await self._delete(request, generation))

    async def _post(
        self, request: web.Request, generation: int, fields: dict[str, str]
    ) -> web.Response | None:
        """The answer to a POST, or None when the connection was dropped instead."""
        state = self._state
        faults = state.faults
        await self._delay()

        forced = faults.fail_all_status
        if forced is not None:
            return _error(
                forced, f"sandbox fault: every POST answers {forced}", self._retry_after(forced)
            )

        website = state.keys.authorize(
            request.headers.get("Authorization"), request.query.get("websiteId")
        )
        if isinstance(website, AuthFailure):
            return _error(website.status, website.message)
        limited = self._rate_limited(request, website, fields)
        if limited is not None:
            return limited

        mode = _NORMAL
        if faults.has_random_faults:
            draw = state.rng.random()
            for status, rate in ((429, faults.rate_429), (500, faults.rate_500)):
                if draw < rate:
                    return _error(
                        status, f"sandbox fault: injected {status}", self._retry_after(status)
                    )
                draw -= rate
            if draw < faults.rate_503:
                return _error(503, "sandbox fault: injected 503")
            draw -= faults.rate_503
            if draw < faults.rate_timeout:
                mode = _SLOW
                state.store.count_slow(generation)
            elif draw - faults.rate_timeout < faults.rate_drop:
                mode = _DROP

        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return await self._finish(
                request, mode, _error(400, "invalid payment: the body is not valid JSON")
            )
        if type(body) is not dict:
            return await self._finish(
                request, mode, _error(400, "invalid payment: the body must be a JSON object")
            )

        if faults.fail_ids:
            transaction_id = body.get("transaction_id")
            spec = faults.fail_ids.get(transaction_id) if type(transaction_id) is str else None
            if spec is not None:
                answer = _error(spec.status, spec.message, self._retry_after(spec.status))
                return await self._finish(request, mode, answer)

        checked = validate_payment(body)
        if isinstance(checked, dict):
            return await self._finish(request, mode, _error(400, describe_errors(checked)))

        if mode == _SLOW and not faults.record_before_slow:
            await asyncio.sleep(faults.slow_ms / 1000)
            return self._record(generation, website, body, checked)
        if mode == _DROP and not faults.record_before_drop:
            self._drop(request)
            return None
        answer = self._record(generation, website, body, checked)
        return await self._finish(request, mode, answer)

    def _record(
        self, generation: int, website: str, body: dict[str, Any], payment: Payment
    ) -> web.Response:
        new = self._store.record(
            generation,
            website,
            payment.transaction_id,
            payment.refunded,
            body,
            payment.visitor_id,
            payment.event_time,
            payment.is_free_trial,
            time.time(),
        )
        if not new:
            message = MSG_DUPLICATE
        elif payment.refunded:
            message = MSG_REFUND
        elif payment.visitor_id:
            message = MSG_ATTRIBUTED
        else:
            message = MSG_RECORDED
        return _response(200, {"message": message, "transaction_id": payment.transaction_id})

    async def _finish(
        self, request: web.Request, mode: int, response: web.Response
    ) -> web.Response | None:
        if mode == _DROP:
            self._drop(request)
            return None
        if mode == _SLOW:
            await asyncio.sleep(self._state.faults.slow_ms / 1000)
        return response

    def _drop(self, request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()

    async def _delete(self, request: web.Request, generation: int) -> web.Response:
        state = self._state
        await self._delay()
        query = request.query
        website = state.keys.authorize(request.headers.get("Authorization"), query.get("websiteId"))
        if isinstance(website, AuthFailure):
            return _error(website.status, website.message)

        transaction_id = query.get("transaction_id") or None
        visitor_id = query.get("datafast_visitor_id") or None
        if transaction_id is None and visitor_id is None:
            return _error(400, "transaction_id or datafast_visitor_id is required")
        bounds: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        for name in ("startAt", "endAt"):
            value = query.get(name) or None
            try:
                bounds[name] = None if value is None else parse_iso8601(value)
            except (ValueError, OverflowError, OSError):
                errors[name] = "must be an ISO 8601 timestamp"
        if errors:
            return _error(
                400, "invalid delete: " + "; ".join(f"{k} {v}" for k, v in errors.items())
            )
        start, end = bounds["startAt"], bounds["endAt"]
        if start is not None and end is not None and start > end:
            return _error(400, "invalid delete: startAt is after endAt")

        deleted = state.store.delete(
            generation,
            website,
            transaction_id=transaction_id,
            visitor_id=visitor_id,
            start=start,
            end=end,
            now=time.time(),
        )
        return _response(200, {"message": f"Deleted {deleted} payment events", "deleted": deleted})


class _AdminApi:
    """``/_sandbox/*``: unauthenticated (the sandbox listens on loopback) and uncounted."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state

    async def health(self, request: web.Request) -> web.Response:
        return _response(200, {"status": "ok"})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _response(200, self._state.faults.to_json())

    async def post_faults(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if isinstance(changes, web.Response):
            return changes
        try:
            faults = self._state.set_faults(**changes)
        except (ValueError, TypeError) as exc:
            return _error(400, f"invalid faults: {exc}")
        return _response(200, faults.to_json())

    async def get_keys(self, request: web.Request) -> web.Response:
        return _response(200, self._state.keys.to_json())

    async def post_keys(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if isinstance(changes, web.Response):
            return changes
        unknown = set(changes) - {"website_keys", "account_tokens", "revoke", "restore", "defaults"}
        if unknown:
            return _error(400, f"invalid keys: unknown fields {', '.join(sorted(unknown))}")
        defaults = changes.get("defaults", False)
        if not isinstance(defaults, bool):
            return _error(400, "invalid keys: defaults must be true or false")
        for name in ("revoke", "restore"):
            if not isinstance(changes.get(name, []), list):
                return _error(400, f"invalid keys: {name} must be a list of keys")
        try:
            keys = self._state.set_keys(
                website_keys=changes.get("website_keys"),
                account_tokens=changes.get("account_tokens"),
                revoke=changes.get("revoke", ()),
                restore=changes.get("restore", ()),
                defaults=defaults,
            )
        except (ValueError, TypeError) as exc:
            return _error(400, f"invalid keys: {exc}")
        return _response(200, keys)

    async def get_records(self, request: web.Request) -> web.Response:
        query = request.query
        records = self._state.store.views(
            transaction_id=query.get("transaction_id"), website=query.get("website")
        )
        return _response(200, {"records": records})

    async def get_stats(self, request: web.Request) -> web.Response:
        return _response(200, self._state.store.stats())

    async def post_reset(self, request: web.Request) -> web.Response:
        self._state.reset()
        return _response(200, {"message": "sandbox reset"})


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        data = json.loads(await request.read() or b"{}")
    except (ValueError, RecursionError):
        return _error(400, "the body is not valid JSON")
    if not isinstance(data, dict):
        return _error(400, "the body must be a JSON object")
    return data

"""ingest.delivery: one classification of every answer, credentials, the client on real HTTP.

``classify`` and ``Credentials`` are the unit lane; ``PaymentsClient`` and
``deliver_payment`` run against the real sandbox (integration lane).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ingest.delivery import (
    Credentials,
    Outcome,
    PaymentsClient,
    Verdict,
    build_session,
    classify,
    deliver_payment,
)
from ingest.errors import AuthenticationError, ConfigurationError, DeliveryError
from ingest.jobs import Claimed, job_args, job_data
from ingest.models import validate_payment
from ingest.retry import RetryPolicy
from ingest.sandbox import (
    DEFAULT_ACCOUNT_TOKEN,
    DEFAULT_WEBSITE_ID,
    DEFAULT_WEBSITE_KEY,
    FailSpec,
    SandboxServer,
)
from ingest.scripts import Acknowledgement, Dead, Delivered, Park, Retry
from ingest.settings import Settings
from ingest.worker import decide

WEBSITE = "0123456789abcdef01234567"
DUPLICATE_MESSAGE = b'{"message":"Duplicate payment skipped: transaction_id already recorded"}'
NOW = 1_800_000_000.0


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"status": "error", "error": {"code": status, "message": message}}).encode()


# -- classify: the spec's table, row by row --------------------------------------------------------


def test_200_is_delivered() -> None:
    outcome = classify(200, b'{"message":"Payment recorded","transaction_id":"pi_1"}')
    assert outcome == Outcome(Verdict.DELIVERED, 200, "Payment recorded")
    assert outcome.verdict.delivered


def test_200_reporting_a_duplicate_is_a_duplicate_and_counts_as_delivered() -> None:
    outcome = classify(200, DUPLICATE_MESSAGE)
    assert outcome.verdict is Verdict.DUPLICATE
    assert outcome.verdict.delivered


def test_409_reporting_a_duplicate_is_a_duplicate() -> None:
    outcome = classify(409, error_body(409, "Duplicate payment: transaction_id already recorded"))
    assert outcome.verdict is Verdict.DUPLICATE


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_client_errors_are_permanent(status: int) -> None:
    outcome = classify(status, error_body(status, "amount does not match the order"))
    assert outcome.verdict is Verdict.PERMANENT
    assert not outcome.verdict.delivered
    assert outcome.status == status


def test_permanent_outcome_carries_the_api_message() -> None:
    outcome = classify(400, error_body(400, "invalid payment: currency must be three letters"))
    assert outcome.message == "invalid payment: currency must be three letters"


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_an_auth_problem(status: int) -> None:
    assert classify(status, error_body(status, "invalid API key")).verdict is Verdict.AUTH


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_timeouts_throttling_and_server_errors_are_transient(status: int) -> None:
    outcome = classify(status, error_body(status, "try later"), now=NOW)
    assert outcome.verdict is Verdict.TRANSIENT
    assert outcome.status == status


def test_transport_error_is_transient_without_status() -> None:
    outcome = classify(None, error="ConnectError: connection refused")
    assert outcome == Outcome(Verdict.TRANSIENT, None, "ConnectError: connection refused")


@pytest.mark.parametrize("status", [302, 418, 451, 505, 599])
def test_unknown_status_is_transient_never_dropped(status: int) -> None:
    assert classify(status, b"", now=NOW).verdict is Verdict.TRANSIENT


def test_only_429_counts_as_throttled() -> None:
    assert classify(429, b"", now=NOW).throttled
    assert not classify(503, b"", now=NOW).throttled


def test_retry_after_in_seconds_is_parsed() -> None:
    assert classify(429, b"", "7", now=NOW).retry_after == 7.0


def test_retry_after_as_http_date_is_parsed() -> None:
    later = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    header = format_datetime(later, usegmt=True)
    assert classify(503, b"", header, now=NOW).retry_after == pytest.approx(90.0)


def test_missing_retry_after_is_none() -> None:
    assert classify(429, b"", None, now=NOW).retry_after is None


def test_non_json_body_becomes_the_message() -> None:
    assert classify(502, b"<html>Bad Gateway</html>", now=NOW).message == (
        "<html>Bad Gateway</html>"
    )


# -- credentials -----------------------------------------------------------------------------------

SECRET_KEY = "df_live_7f3a9c0e5b1d4c2a8e6f"
SECRET_TOKEN = "dft_live_0c9e8d7b6a5f4e3d2c1b"


@pytest.mark.parametrize(
    ("key", "website"), [(SECRET_KEY, None), (SECRET_TOKEN, WEBSITE)], ids=["df", "dft"]
)
def test_credentials_never_show_the_key(key: str, website: str | None) -> None:
    credentials = Credentials(Settings(api_key=key, website_id=website))
    for shown in (repr(credentials), str(credentials), f"{credentials}", f"{credentials!r}"):
        assert key not in shown
        assert key[4:] not in shown


def test_credentials_send_the_key_as_a_bearer_header() -> None:
    credentials = Credentials(Settings(api_key=SECRET_KEY))
    assert credentials.headers["Authorization"] == f"Bearer {SECRET_KEY}"


def test_account_token_adds_the_website_id_parameter() -> None:
    credentials = Credentials(Settings(api_key=SECRET_TOKEN, website_id=WEBSITE))
    assert credentials.params(None) == f"?websiteId={WEBSITE}"


def test_account_token_uses_the_events_own_website_id() -> None:
    credentials = Credentials(Settings(api_key=SECRET_TOKEN, website_id=WEBSITE))
    assert credentials.params(DEFAULT_WEBSITE_ID) == f"?websiteId={DEFAULT_WEBSITE_ID}"


def test_website_key_adds_no_parameter() -> None:
    assert Credentials(Settings(api_key=SECRET_KEY)).params(None) == ""


def test_credentials_without_a_key_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Credentials(Settings(api_key=None))


# -- decide: what the worker does with each classified answer, row by row --------------------------

AT = "2027-01-15T08:00:00.000Z"  # NOW, as the worker writes it
POLICY = RetryPolicy(max_attempts=3, base=2.0, cap=60.0)
EARLIER = {"at": "2027-01-15T07:59:00.000Z", "status": 503, "error": "busy"}


def claimed_event(attempts: int) -> Claimed:
    """An event that has failed ``attempts`` times before (the last time with EARLIER)."""
    payment = validate_payment(
        amount="29.99", currency="USD", transaction_id="pi_decide", timestamp=AT
    )
    data = job_data(payment)
    return Claimed(
        job_id=payment.job_id,
        data=data,
        website="-",
        attempts=attempts,
        history=[EARLIER] if attempts else [],
        body=job_args(data).body,
        website_id=None,
    )


def dead_letter(reason: str, status: int, error: str, attempts: int) -> Dead:
    claimed = claimed_event(attempts - 1)
    history = [*claimed.history, {"at": AT, "status": status, "error": error}]
    return Dead(
        claimed.job_id,
        {
            "job_id": claimed.job_id,
            "transaction_id": "pi_decide",
            "website": "-",
            "data": claimed.data,
            "reason": reason,
            "status": status,
            "error": error,
            "attempts": attempts,
            "first_attempt_at": history[0]["at"],
            "last_attempt_at": AT,
            "dead_at": AT,
            "history": history,
            "history_json": json.dumps(history),
        },
    )


JOB = claimed_event(0).job_id


@pytest.mark.parametrize(
    ("attempts_before", "outcome", "expected"),
    [
        pytest.param(
            0, Outcome(Verdict.DELIVERED, 200, "Payment recorded"), Delivered(JOB), id="delivered"
        ),
        pytest.param(
            1,
            Outcome(Verdict.DUPLICATE, 200, "Duplicate payment skipped"),
            Delivered(JOB, api_duplicate=True),
            id="duplicate",
        ),
        pytest.param(
            1,
            Outcome(Verdict.AUTH, 401, "Invalid API key"),
            Park(JOB, "-", {"status": 401, "error": "Invalid API key", "since": AT}),
            id="auth-parks-without-counting-an-attempt",
        ),
        pytest.param(
            1,
            Outcome(Verdict.TRANSIENT, 503, "unavailable"),
            # Second failure: jitter 0.5 of min(cap, base * 2**1) = 2 s.
            Retry(JOB, NOW + 2.0, 2, [EARLIER, {"at": AT, "status": 503, "error": "unavailable"}]),
            id="transient-retries",
        ),
        pytest.param(
            0,
            Outcome(Verdict.TRANSIENT, 429, "slow down", retry_after=30.0),
            # Retry-After is a floor, plus up to 10% (half of it with random() = 0.5).
            Retry(JOB, NOW + 31.5, 1, [{"at": AT, "status": 429, "error": "slow down"}]),
            id="transient-honours-retry-after",
        ),
        pytest.param(
            2,
            Outcome(Verdict.TRANSIENT, 503, "unavailable"),
            dead_letter("exhausted", 503, "unavailable", attempts=3),
            id="transient-out-of-attempts-is-dead",
        ),
        pytest.param(
            1,
            Outcome(Verdict.PERMANENT, 400, "invalid payment: amount"),
            dead_letter("rejected", 400, "invalid payment: amount", attempts=2),
            id="permanent-is-dead-at-once",
        ),
    ],
)
def test_decide_turns_each_outcome_into_its_acknowledgement(
    attempts_before: int, outcome: Outcome, expected: Acknowledgement
) -> None:
    claimed = claimed_event(attempts_before)
    assert decide(claimed, outcome, now=NOW, policy=POLICY, random=lambda: 0.5) == expected


def test_decide_stores_the_api_message_without_the_customers_name_or_email() -> None:
    payment = validate_payment(
        amount="29.99",
        currency="USD",
        transaction_id="pi_quoted",
        timestamp=AT,
        email="jane'secret@localhost",
        name="Carol Danvers",
    )
    data = job_data(payment)
    claimed = Claimed(payment.job_id, data, "-", 0, [], job_args(data).body, None)
    message = "customer Carol Danvers <jane'secret@localhost> is not valid (DANVERS)"
    dead = decide(
        claimed, Outcome(Verdict.PERMANENT, 400, message), now=NOW, policy=POLICY, random=lambda: 0
    )
    assert isinstance(dead, Dead)
    expected = "customer [redacted] <[redacted]> is not valid ([redacted])"
    assert dead.record["error"] == expected
    assert dead.record["history"][-1]["error"] == expected
    parked = decide(
        claimed, Outcome(Verdict.AUTH, 401, message), now=NOW, policy=POLICY, random=lambda: 0
    )
    assert isinstance(parked, Park)
    assert parked.reason["error"] == expected


# -- PaymentsClient against the sandbox (integration) ----------------------------------------------


def body(transaction_id: str = "pi_1", **fields: object) -> str:
    return validate_payment(
        amount="29.99", currency="USD", transaction_id=transaction_id, **fields
    ).wire_body()


def send_all(settings: Settings, requests: Sequence[tuple[str, str | None]]) -> list[Outcome]:
    """Send each (body, website) in turn over one pooled client, as a worker does."""

    async def run() -> list[Outcome]:
        client = PaymentsClient(settings, build_session(settings, concurrency=4))
        try:
            return [await client.send(b, website) for b, website in requests]
        finally:
            await client.aclose()

    return asyncio.run(run())


def send(settings: Settings, payload: str, website: str | None = None) -> Outcome:
    return send_all(settings, [(payload, website)])[0]


def sandbox_settings(sandbox: SandboxServer, **changes: object) -> Settings:
    fields: dict[str, object] = {"api_url": sandbox.url, "api_key": DEFAULT_WEBSITE_KEY}
    fields.update(changes)
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.mark.integration
def test_client_delivers_the_exact_body_to_the_sandbox(sandbox: SandboxServer) -> None:
    payload = body("pi_exact", datafast_visitor_id="visitor-1")
    outcome = send(sandbox_settings(sandbox), payload)
    assert (outcome.verdict, outcome.status) == (Verdict.DELIVERED, 200)
    [record] = sandbox.records(transaction_id="pi_exact")
    assert record["body"] == json.loads(payload)
    assert record["website"] == DEFAULT_WEBSITE_ID


@pytest.mark.integration
def test_client_sees_a_resent_payment_as_a_duplicate(sandbox: SandboxServer) -> None:
    payload = body("pi_resent")
    first, second = send_all(sandbox_settings(sandbox), [(payload, None), (payload, None)])
    assert first.verdict is Verdict.DELIVERED
    assert second.verdict is Verdict.DUPLICATE
    assert sandbox.stats()["recorded"] == 1


@pytest.mark.integration
def test_client_with_account_token_delivers_for_the_configured_website(
    sandbox: SandboxServer,
) -> None:
    settings = sandbox_settings(
        sandbox, api_key=DEFAULT_ACCOUNT_TOKEN, website_id=DEFAULT_WEBSITE_ID
    )
    assert send(settings, body("pi_token")).verdict is Verdict.DELIVERED
    assert sandbox.records(transaction_id="pi_token")[0]["website"] == DEFAULT_WEBSITE_ID


@pytest.mark.integration
def test_client_with_account_token_for_an_unreachable_website_is_an_auth_problem(
    sandbox: SandboxServer,
) -> None:
    settings = sandbox_settings(
        sandbox, api_key=DEFAULT_ACCOUNT_TOKEN, website_id=DEFAULT_WEBSITE_ID
    )
    outcome = send(settings, body("pi_elsewhere"), WEBSITE)
    assert (outcome.verdict, outcome.status) == (Verdict.AUTH, 403)


@pytest.mark.integration
def test_client_with_a_wrong_key_is_an_auth_problem(sandbox: SandboxServer) -> None:
    outcome = send(sandbox_settings(sandbox, api_key="df_not_a_real_key"), body("pi_badkey"))
    assert (outcome.verdict, outcome.status) == (Verdict.AUTH, 401)
    assert sandbox.records() == []


@pytest.mark.integration
def test_client_sees_a_body_the_api_refuses_as_permanent(sandbox: SandboxServer) -> None:
    outcome = send(sandbox_settings(sandbox), '{"amount":"lots","currency":"USD"}')
    assert (outcome.verdict, outcome.status) == (Verdict.PERMANENT, 400)
    assert "amount" in outcome.message


@pytest.mark.integration
def test_client_sees_a_409_conflict_as_permanent(sandbox: SandboxServer) -> None:
    sandbox.set_faults(fail_ids={"pi_conflict": FailSpec(409, "order already refunded")})
    outcome = send(sandbox_settings(sandbox), body("pi_conflict"))
    assert (outcome.verdict, outcome.status) == (Verdict.PERMANENT, 409)
    assert outcome.message == "order already refunded"


@pytest.mark.integration
def test_client_sees_429_as_transient_with_its_retry_after(sandbox: SandboxServer) -> None:
    sandbox.set_faults(rate_429=1.0, retry_after=3)
    outcome = send(sandbox_settings(sandbox), body("pi_throttled"))
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, 429)
    assert outcome.retry_after == 3.0
    assert outcome.throttled


@pytest.mark.integration
def test_client_sees_503_as_transient(sandbox: SandboxServer) -> None:
    sandbox.set_faults(fail_all_status=503)
    outcome = send(sandbox_settings(sandbox), body("pi_unavailable"))
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, 503)


@pytest.mark.integration
def test_client_sees_a_slow_answer_as_a_transient_transport_error(sandbox: SandboxServer) -> None:
    sandbox.set_faults(latency_ms=2000)
    outcome = send(sandbox_settings(sandbox, request_timeout=0.2), body("pi_slow"))
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, None)


@pytest.mark.integration
def test_client_sees_a_refused_connection_as_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(api_url=f"http://127.0.0.1:{port}", api_key=DEFAULT_WEBSITE_KEY)
    outcome = send(settings, body("pi_nobody_home"))
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, None)


# -- deliver_payment: what a stock `rq worker` would run (integration) -----------------------------


@pytest.fixture
def rq_env(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> SandboxServer:
    monkeypatch.setenv("INGEST_API_URL", sandbox.url)
    monkeypatch.setenv("INGEST_API_KEY", DEFAULT_WEBSITE_KEY)
    monkeypatch.delenv("INGEST_WEBSITE_ID", raising=False)
    return sandbox


@pytest.mark.integration
def test_deliver_payment_returns_the_api_message(rq_env: SandboxServer) -> None:
    assert deliver_payment(body("pi_rq_ok")) == "Payment recorded"
    assert len(rq_env.records(transaction_id="pi_rq_ok")) == 1


@pytest.mark.integration
def test_deliver_payment_raises_delivery_error_on_a_refusal(rq_env: SandboxServer) -> None:
    rq_env.set_faults(fail_ids={"pi_rq_refused": FailSpec(422, "amount does not match")})
    with pytest.raises(DeliveryError) as caught:
        deliver_payment(body("pi_rq_refused"))
    assert caught.value.status == 422
    assert caught.value.api_message == "amount does not match"


@pytest.mark.integration
def test_deliver_payment_raises_authentication_error_without_showing_the_key(
    rq_env: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_API_KEY", SECRET_KEY)
    with pytest.raises(AuthenticationError) as caught:
        deliver_payment(body("pi_rq_auth"))
    assert caught.value.status == 401
    assert SECRET_KEY not in str(caught.value)
    assert SECRET_KEY not in repr(caught.value)

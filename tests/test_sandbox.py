"""ingest.sandbox: the local stand-in for the Payments API, tested over real HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.sandbox import (
    DEFAULT_ACCOUNT_TOKEN,
    DEFAULT_WEBSITE_ID,
    DEFAULT_WEBSITE_KEY,
    FailSpec,
    Faults,
    SandboxConfig,
    SandboxProcess,
    SandboxServer,
    main,
)
from ingest.sandbox.cli import OPEN_FILES_WANTED

PAYMENTS = "/api/v1/payments"
AUTH = {"Authorization": f"Bearer {DEFAULT_WEBSITE_KEY}"}
OTHER_WEBSITE_ID = "0123456789abcdef01234567"


def payment(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"amount": 29.99, "currency": "USD", "transaction_id": "tx_1"}
    body.update(fields)
    return body


def error_message(response: httpx.Response) -> str:
    data = response.json()
    assert data["status"] == "error"
    assert data["error"]["code"] == response.status_code
    message = data["error"]["message"]
    assert isinstance(message, str)
    return message


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


@pytest.fixture
def sandbox(shared_sandbox: SandboxServer) -> SandboxServer:
    """The module's server, reset: no records, no faults, the demo keys."""
    shared_sandbox.reset()
    return shared_sandbox


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers=AUTH, timeout=5.0) as http:
        yield http


@pytest.fixture
def anonymous(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5.0) as http:
        yield http


# --- authentication ---------------------------------------------------------------------


def test_post_without_authorization_is_401(anonymous: httpx.Client) -> None:
    response = anonymous.post(PAYMENTS, json=payment())
    assert response.status_code == 401
    assert "key" in error_message(response)


def test_post_with_unknown_key_is_401(anonymous: httpx.Client) -> None:
    response = anonymous.post(
        PAYMENTS, json=payment(), headers={"Authorization": "Bearer df_not_a_key"}
    )
    assert response.status_code == 401


def test_website_key_with_another_website_id_is_403(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    response = client.post(PAYMENTS, params={"websiteId": OTHER_WEBSITE_ID}, json=payment())
    assert response.status_code == 403
    assert sandbox.records() == []


def test_website_key_with_its_own_website_id_is_accepted(client: httpx.Client) -> None:
    response = client.post(PAYMENTS, params={"websiteId": DEFAULT_WEBSITE_ID}, json=payment())
    assert response.status_code == 200


def test_account_token_with_website_id_records_for_that_website(
    anonymous: httpx.Client, sandbox: SandboxServer
) -> None:
    response = anonymous.post(
        PAYMENTS,
        params={"websiteId": DEFAULT_WEBSITE_ID},
        json=payment(),
        headers={"Authorization": f"Bearer {DEFAULT_ACCOUNT_TOKEN}"},
    )
    assert response.status_code == 200
    assert [r["website"] for r in sandbox.records()] == [DEFAULT_WEBSITE_ID]


def test_account_token_without_website_id_is_403(anonymous: httpx.Client) -> None:
    response = anonymous.post(
        PAYMENTS, json=payment(), headers={"Authorization": f"Bearer {DEFAULT_ACCOUNT_TOKEN}"}
    )
    assert response.status_code == 403
    assert "websiteId" in error_message(response)


def test_account_token_for_a_website_it_cannot_reach_is_403(anonymous: httpx.Client) -> None:
    response = anonymous.post(
        PAYMENTS,
        params={"websiteId": OTHER_WEBSITE_ID},
        json=payment(),
        headers={"Authorization": f"Bearer {DEFAULT_ACCOUNT_TOKEN}"},
    )
    assert response.status_code == 403


def test_account_token_without_payments_write_scope_is_403(
    anonymous: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_keys(
        account_tokens={"dft_reader": {"scopes": ["payments:read"], "websites": ["*"]}}
    )
    response = anonymous.post(
        PAYMENTS,
        params={"websiteId": DEFAULT_WEBSITE_ID},
        json=payment(),
        headers={"Authorization": "Bearer dft_reader"},
    )
    assert response.status_code == 403
    assert "payments:write" in error_message(response)


def test_revoked_key_is_401_until_restored(client: httpx.Client, sandbox: SandboxServer) -> None:
    sandbox.set_keys(revoke=[DEFAULT_WEBSITE_KEY])
    assert client.post(PAYMENTS, json=payment()).status_code == 401
    sandbox.set_keys(restore=[DEFAULT_WEBSITE_KEY])
    assert client.post(PAYMENTS, json=payment()).status_code == 200


def test_admin_keys_endpoint_revokes_and_restores_a_key(client: httpx.Client) -> None:
    revoked = client.post("/_sandbox/keys", json={"revoke": [DEFAULT_WEBSITE_KEY]})
    assert revoked.json()["revoked"] == [DEFAULT_WEBSITE_KEY]
    assert client.post(PAYMENTS, json=payment()).status_code == 401
    client.post("/_sandbox/keys", json={"restore": [DEFAULT_WEBSITE_KEY]})
    assert client.post(PAYMENTS, json=payment()).status_code == 200


# --- validation -------------------------------------------------------------------------

_MISSING = object()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", -1),
        ("amount", True),
        ("amount", "29.99"),
        ("amount", _MISSING),
        ("currency", "US"),
        ("currency", 840),
        ("currency", _MISSING),
        ("transaction_id", ""),
        ("transaction_id", 42),
        ("transaction_id", _MISSING),
        ("datafast_visitor_id", 7),
        ("email", ["a@example.com"]),
        ("customer_name", False),
        ("renewal", "yes"),
        ("refunded", 1),
        ("is_free_trial", "no"),
        ("timestamp", "last tuesday"),
        ("timestamp", 1_700_000_000),
    ],
)
def test_invalid_field_is_400_naming_the_field(
    client: httpx.Client, sandbox: SandboxServer, field: str, value: object
) -> None:
    body = payment()
    if value is _MISSING:
        del body[field]
    else:
        body[field] = value
    response = client.post(PAYMENTS, json=body)
    assert response.status_code == 400
    assert field in error_message(response)
    assert sandbox.records() == []


def test_body_that_is_not_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        PAYMENTS, content=b"amount=1", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON" in error_message(response)


def test_non_finite_amount_is_400(client: httpx.Client) -> None:
    body = b'{"amount": NaN, "currency": "USD", "transaction_id": "tx_1"}'
    response = client.post(PAYMENTS, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "amount" in error_message(response)


def test_body_that_is_not_an_object_is_400(client: httpx.Client) -> None:
    assert client.post(PAYMENTS, json=[payment()]).status_code == 400


# --- recording and idempotency ----------------------------------------------------------


def test_first_post_is_recorded(client: httpx.Client, sandbox: SandboxServer) -> None:
    response = client.post(PAYMENTS, json=payment())
    assert response.status_code == 200
    assert response.json() == {"message": "Payment recorded", "transaction_id": "tx_1"}
    [record] = sandbox.records()
    assert (record["transaction_id"], record["status"], record["attempts"]) == (
        "tx_1",
        "recorded",
        1,
    )


def test_payment_with_visitor_id_is_reported_as_attributed(client: httpx.Client) -> None:
    response = client.post(PAYMENTS, json=payment(datafast_visitor_id="visitor-1"))
    assert response.json()["message"] == "Payment recorded and attributed to visitor"


def test_second_post_of_same_transaction_is_reported_as_duplicate(client: httpx.Client) -> None:
    client.post(PAYMENTS, json=payment())
    response = client.post(PAYMENTS, json=payment())
    assert response.status_code == 200
    assert "duplicate" in response.json()["message"].lower()
    assert response.json()["transaction_id"] == "tx_1"


def test_duplicate_counts_an_attempt_on_the_one_record(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    for _ in range(3):
        client.post(PAYMENTS, json=payment())
    [record] = sandbox.records()
    assert record["attempts"] == 3
    stats = sandbox.stats()
    assert (stats["recorded"], stats["duplicates"]) == (1, 2)


def test_refund_is_a_separate_event_from_its_payment(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    client.post(PAYMENTS, json=payment())
    refund = client.post(PAYMENTS, json=payment(refunded=True))
    assert refund.json()["message"] == "Refund recorded"
    assert sorted(r["refunded"] for r in sandbox.records()) == [False, True]
    again = client.post(PAYMENTS, json=payment(refunded=True))
    assert "duplicate" in again.json()["message"].lower()


def test_same_transaction_id_on_another_website_is_not_a_duplicate(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_keys(
        website_keys={DEFAULT_WEBSITE_KEY: DEFAULT_WEBSITE_ID, "df_other": OTHER_WEBSITE_ID}
    )
    client.post(PAYMENTS, json=payment())
    other = client.post(PAYMENTS, json=payment(), headers={"Authorization": "Bearer df_other"})
    assert other.json()["message"] == "Payment recorded"
    assert len(sandbox.records()) == 2


def test_customer_email_and_name_aliases_are_accepted(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    body = payment(customer_email="a@example.com", customer_name="Ada")
    assert client.post(PAYMENTS, json=body).status_code == 200
    assert sandbox.records()[0]["body"]["customer_email"] == "a@example.com"


def test_zero_amount_is_inferred_as_free_trial(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    client.post(PAYMENTS, json=payment(amount=0, transaction_id="trial"))
    client.post(PAYMENTS, json=payment(amount=0, transaction_id="free", is_free_trial=False))
    trials = {r["transaction_id"]: r["is_free_trial"] for r in sandbox.records()}
    assert trials == {"trial": True, "free": False}


def test_record_keeps_the_body_exactly_as_received(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    body = payment(
        datafast_visitor_id="v-1",
        timestamp="2026-05-01T12:00:00Z",
        renewal=True,
        metadata={"plan": "pro"},
    )
    client.post(PAYMENTS, json=body)
    assert sandbox.records()[0]["body"] == body


# --- delete -----------------------------------------------------------------------------


def test_delete_by_transaction_id_deletes_its_payment_and_refund(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    client.post(PAYMENTS, json=payment())
    client.post(PAYMENTS, json=payment(refunded=True))
    client.post(PAYMENTS, json=payment(transaction_id="tx_2"))
    response = client.delete(PAYMENTS, params={"transaction_id": "tx_1"})
    assert response.status_code == 200
    assert response.json() == {"message": "Deleted 2 payment events", "deleted": 2}
    live = [r["transaction_id"] for r in sandbox.records() if r["status"] == "recorded"]
    assert live == ["tx_2"]


def test_delete_by_visitor_id_deletes_only_that_visitors_payments(client: httpx.Client) -> None:
    client.post(PAYMENTS, json=payment(transaction_id="a", datafast_visitor_id="v1"))
    client.post(PAYMENTS, json=payment(transaction_id="b", datafast_visitor_id="v1"))
    client.post(PAYMENTS, json=payment(transaction_id="c", datafast_visitor_id="v2"))
    response = client.delete(PAYMENTS, params={"datafast_visitor_id": "v1"})
    assert response.json()["deleted"] == 2


def test_delete_with_date_range_uses_the_payment_timestamp(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    for tid, when in [("may1", "2026-05-01T00:00:00Z"), ("may10", "2026-05-10T08:00:00Z")]:
        client.post(
            PAYMENTS, json=payment(transaction_id=tid, datafast_visitor_id="v", timestamp=when)
        )
    response = client.delete(
        PAYMENTS,
        params={
            "datafast_visitor_id": "v",
            "startAt": "2026-05-05T00:00:00Z",
            "endAt": "2026-05-19T23:59:59Z",
        },
    )
    assert response.json()["deleted"] == 1
    assert [r["transaction_id"] for r in sandbox.records(transaction_id="may10")] == ["may10"]
    assert sandbox.records(transaction_id="may10")[0]["status"] == "deleted"


def test_delete_with_date_range_uses_receive_time_without_timestamp(
    client: httpx.Client,
) -> None:
    client.post(PAYMENTS, json=payment())
    past = client.delete(
        PAYMENTS,
        params={"transaction_id": "tx_1", "startAt": "2020-01-01", "endAt": "2020-12-31"},
    )
    assert past.json()["deleted"] == 0
    today = client.delete(
        PAYMENTS,
        params={"transaction_id": "tx_1", "startAt": "2020-01-01", "endAt": "2100-01-01"},
    )
    assert today.json()["deleted"] == 1


def test_delete_without_transaction_or_visitor_is_400(client: httpx.Client) -> None:
    response = client.delete(PAYMENTS, params={"startAt": "2026-05-01T00:00:00Z"})
    assert response.status_code == 400
    assert "transaction_id" in error_message(response)


def test_delete_with_unparseable_date_is_400_naming_it(client: httpx.Client) -> None:
    response = client.delete(PAYMENTS, params={"transaction_id": "tx_1", "endAt": "soon"})
    assert response.status_code == 400
    assert "endAt" in error_message(response)


def test_payment_sent_again_after_deletion_is_recorded_afresh(client: httpx.Client) -> None:
    client.post(PAYMENTS, json=payment())
    client.delete(PAYMENTS, params={"transaction_id": "tx_1"})
    assert client.post(PAYMENTS, json=payment()).json()["message"] == "Payment recorded"


def test_delete_needs_authorization(anonymous: httpx.Client) -> None:
    assert anonymous.delete(PAYMENTS, params={"transaction_id": "tx_1"}).status_code == 401


# --- faults -----------------------------------------------------------------------------


def test_429_carries_retry_after_in_seconds(client: httpx.Client, sandbox: SandboxServer) -> None:
    sandbox.set_faults(rate_429=1.0, retry_after=7)
    response = client.post(PAYMENTS, json=payment())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert sandbox.records() == []


def test_429_can_carry_retry_after_as_an_http_date(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_429=1.0, retry_after="http-date:2")
    response = client.post(PAYMENTS, json=payment())
    wait = parsedate_to_datetime(response.headers["Retry-After"]).timestamp() - time.time()
    assert 0 < wait <= 3


def test_429_without_retry_after_when_set_to_none(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_429=1.0, retry_after=None)
    response = client.post(PAYMENTS, json=payment())
    assert response.status_code == 429
    assert "Retry-After" not in response.headers


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_fault_answers_before_recording(
    client: httpx.Client, sandbox: SandboxServer, status: int
) -> None:
    sandbox.set_faults(**{f"rate_{status}": 1.0})
    response = client.post(PAYMENTS, json=payment())
    assert response.status_code == status
    error_message(response)
    assert sandbox.records() == []


def test_slow_answer_exceeds_client_timeout_but_payment_is_recorded(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_timeout=1.0, slow_ms=1500)
    with pytest.raises(httpx.ReadTimeout):
        client.post(PAYMENTS, json=payment(), timeout=0.3)
    assert [r["transaction_id"] for r in sandbox.records()] == ["tx_1"]
    assert sandbox.stats()["slow"] == 1


def test_slow_answer_without_record_before_slow_records_only_after_the_delay(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_timeout=1.0, slow_ms=1000, record_before_slow=False)
    with pytest.raises(httpx.ReadTimeout):
        client.post(PAYMENTS, json=payment(), timeout=0.2)
    assert sandbox.records() == []
    deadline = time.monotonic() + 3
    while not sandbox.records() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sandbox.records()) == 1


def test_slow_answer_within_client_timeout_arrives_late(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_timeout=1.0, slow_ms=300)
    started = time.monotonic()
    response = client.post(PAYMENTS, json=payment())
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_dropped_connection_gets_no_response_but_payment_is_recorded(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_drop=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(PAYMENTS, json=payment())
    assert len(sandbox.records()) == 1
    stats = sandbox.stats()
    assert (stats["dropped"], stats["by_status"]) == (1, {})


def test_dropped_connection_without_record_before_drop_records_nothing(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_drop=1.0, record_before_drop=False)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(PAYMENTS, json=payment())
    assert sandbox.records() == []


def test_fail_ids_answer_chosen_transactions_until_removed(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(fail_ids={"tx_bad": {"status": 422, "message": "card unknown"}})
    for _ in range(2):
        response = client.post(PAYMENTS, json=payment(transaction_id="tx_bad"))
        assert response.status_code == 422
        assert error_message(response) == "card unknown"
    assert client.post(PAYMENTS, json=payment(transaction_id="tx_ok")).status_code == 200
    sandbox.set_faults(fail_ids={})
    assert client.post(PAYMENTS, json=payment(transaction_id="tx_bad")).status_code == 200


def test_fail_all_status_forces_one_status_for_every_post(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(fail_all_status=401)
    assert [client.post(PAYMENTS, json=payment()).status_code for _ in range(3)] == [401] * 3
    sandbox.set_faults(fail_all_status=None)
    assert client.post(PAYMENTS, json=payment()).status_code == 200


def test_latency_delays_every_answer(client: httpx.Client, sandbox: SandboxServer) -> None:
    sandbox.set_faults(latency_ms=200)
    started = time.monotonic()
    client.post(PAYMENTS, json=payment())
    assert time.monotonic() - started >= 0.2


def test_a_client_gone_before_its_body_is_read_is_no_error_and_no_record(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.set_faults(latency_ms=300)
    host, port = sandbox.url.removeprefix("http://").split(":")
    body = b'{"amount": 1, "currency": "USD", "transaction_id": "tx_gone"}'
    head = (
        f"POST {PAYMENTS} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {AUTH['Authorization']}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as gone:
        gone.sendall(head.encode() + body)
        time.sleep(0.05)  # the sandbox is waiting out its latency when the client leaves
    time.sleep(0.5)
    assert sandbox.records(transaction_id="tx_gone") == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_seed_makes_random_faults_reproducible(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    def statuses() -> list[int]:
        sandbox.set_faults(rate_500=0.5, seed=1234)
        return [
            client.post(PAYMENTS, json=payment(transaction_id=f"t{i}")).status_code
            for i in range(20)
        ]

    first = statuses()
    assert set(first) == {200, 500}
    assert statuses() == first


def test_faults_reject_rates_adding_up_to_more_than_one() -> None:
    with pytest.raises(ValueError, match="add up"):
        Faults(rate_500=0.6, rate_503=0.6)


def test_set_faults_rejects_an_unknown_setting(sandbox: SandboxServer) -> None:
    with pytest.raises(ValueError, match="rate_418"):
        sandbox.set_faults(rate_418=1.0)


# --- admin API --------------------------------------------------------------------------


def test_admin_faults_endpoint_changes_faults_while_running(client: httpx.Client) -> None:
    assert client.post(PAYMENTS, json=payment(transaction_id="a")).status_code == 200
    updated = client.post("/_sandbox/faults", json={"rate_503": 1.0})
    assert updated.json()["rate_503"] == 1.0
    assert client.post(PAYMENTS, json=payment(transaction_id="b")).status_code == 503
    client.post("/_sandbox/faults", json={"rate_503": 0})
    assert client.post(PAYMENTS, json=payment(transaction_id="b")).status_code == 200


def test_admin_faults_update_is_partial(client: httpx.Client) -> None:
    client.post("/_sandbox/faults", json={"latency_ms": 1, "retry_after": 9})
    client.post("/_sandbox/faults", json={"latency_ms": 2})
    current = client.get("/_sandbox/faults").json()
    assert (current["latency_ms"], current["retry_after"]) == (2, 9)


def test_admin_faults_endpoint_rejects_a_bad_value_with_400(client: httpx.Client) -> None:
    response = client.post("/_sandbox/faults", json={"rate_429": 2})
    assert response.status_code == 400
    assert "rate_429" in error_message(response)


def test_admin_records_and_stats_endpoints_report_over_http(client: httpx.Client) -> None:
    client.post(PAYMENTS, json=payment())
    client.post(PAYMENTS, json=payment())
    records = client.get("/_sandbox/records").json()["records"]
    assert [(r["transaction_id"], r["attempts"]) for r in records] == [("tx_1", 2)]
    stats = client.get("/_sandbox/stats").json()
    assert (stats["by_status"], stats["recorded"], stats["duplicates"]) == ({"200": 2}, 1, 1)


def test_stats_count_requests_by_status(
    client: httpx.Client, anonymous: httpx.Client, sandbox: SandboxServer
) -> None:
    client.post(PAYMENTS, json=payment())
    client.post(PAYMENTS, json=payment(amount=-5))
    anonymous.post(PAYMENTS, json=payment())
    stats = sandbox.stats()
    assert stats["by_status"] == {"200": 1, "400": 1, "401": 1}
    assert stats["requests"] == 3


def test_admin_reset_clears_records_counters_and_faults(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    client.post(PAYMENTS, json=payment())
    sandbox.set_faults(rate_503=1.0)
    sandbox.set_keys(revoke=[DEFAULT_WEBSITE_KEY])
    assert client.post("/_sandbox/reset").status_code == 200
    assert sandbox.records() == []
    assert sandbox.stats()["requests"] == 0
    assert sandbox.faults() == Faults()
    assert client.post(PAYMENTS, json=payment()).status_code == 200


def test_reset_ignores_requests_still_in_flight_from_before_it(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_timeout=1.0, slow_ms=400, record_before_slow=False)
    with pytest.raises(httpx.ReadTimeout):
        client.post(PAYMENTS, json=payment(), timeout=0.1)
    sandbox.reset()
    time.sleep(0.7)
    assert sandbox.records() == []
    assert sandbox.stats()["requests"] == 0


def test_unknown_path_is_404_in_the_api_error_shape(client: httpx.Client) -> None:
    response = client.get("/api/v1/nothing")
    assert response.status_code == 404
    error_message(response)


def test_other_method_on_payments_is_405(client: httpx.Client) -> None:
    response = client.get(PAYMENTS)
    assert response.status_code == 405
    error_message(response)


# --- the transport ----------------------------------------------------------------------


def test_keep_alive_answers_are_not_held_back_by_nagle(sandbox: SandboxServer) -> None:
    """A response written in pieces without TCP_NODELAY stalls ~40 ms on delayed ACKs."""
    body = b'{"amount": 1, "currency": "USD", "transaction_id": "nagle"}'
    request = (
        f"POST {PAYMENTS} HTTP/1.1\r\nHost: sandbox\r\n"
        f"Authorization: Bearer {DEFAULT_WEBSITE_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as sock:
        started = time.monotonic()
        for _ in range(40):
            sock.sendall(request)
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            head, rest = received.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += sock.recv(65536)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"40 keep-alive requests took {elapsed:.2f}s"


def test_server_restarts_on_the_same_port_keeping_records() -> None:
    with SandboxServer() as server, httpx.Client(headers=AUTH, timeout=5.0) as http:
        url = server.url
        assert http.post(url + PAYMENTS, json=payment()).status_code == 200
        server.stop()
        with pytest.raises(httpx.ConnectError):
            http.post(url + PAYMENTS, json=payment())
        server.start()
        assert server.url == url
        response = http.post(url + PAYMENTS, json=payment())
        assert "duplicate" in response.json()["message"].lower()


def test_server_start_on_a_taken_port_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = SandboxServer(port=taken.getsockname()[1])
        with pytest.raises(OSError):
            server.start()
        assert not server.running


def test_stop_does_not_wait_for_slow_answers_in_flight() -> None:
    with SandboxServer(SandboxConfig(faults=Faults(rate_timeout=1.0, slow_ms=10_000))) as server:
        with httpx.Client(headers=AUTH) as http, pytest.raises(httpx.ReadTimeout):
            http.post(server.url + PAYMENTS, json=payment(), timeout=0.2)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2


def test_sandbox_process_starts_serves_and_stops_cleanly() -> None:
    with SandboxProcess() as sandbox, httpx.Client(headers=AUTH, timeout=5.0) as http:
        assert sandbox.url.startswith("http://127.0.0.1:")
        assert http.post(sandbox.payments_url, json=payment()).status_code == 200
        assert [r["transaction_id"] for r in sandbox.records()] == ["tx_1"]
        sandbox.set_faults(rate_503=1.0)
        assert http.post(sandbox.payments_url, json=payment()).status_code == 503
        assert sandbox.stats()["by_status"] == {"200": 1, "503": 1}
    assert sandbox.returncode == 0


def test_sandbox_process_reset_returns_to_its_config() -> None:
    config = SandboxConfig(
        website_keys={"df_custom": OTHER_WEBSITE_ID},
        faults=Faults(fail_ids={"tx_bad": FailSpec(409, "conflict")}),
    )
    with SandboxProcess(config) as sandbox, httpx.Client(timeout=5.0) as http:
        sandbox.set_faults(fail_ids={})
        sandbox.reset()
        response = http.post(
            sandbox.payments_url,
            json=payment(transaction_id="tx_bad"),
            headers={"Authorization": "Bearer df_custom"},
        )
        assert response.status_code == 409


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/<pid>/limits")
def test_sandbox_process_lifts_its_open_file_limit_for_many_worker_connections() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the child inherits it
    try:
        with SandboxProcess() as sandbox:
            limits = Path(f"/proc/{sandbox.pid}/limits").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
    child_soft = line.split()[3]
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    assert child_soft == str(wanted)


# --- the command line -------------------------------------------------------------------


def test_main_rejects_a_rate_above_one_as_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rate-429", "2"]) == 2
    assert "--rate-429" in capsys.readouterr().err


def test_main_exits_1_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--quiet"]) == 1
    assert "cannot listen" in capsys.readouterr().err


# --- the rate limit ---------------------------------------------------------------------


def post_many(client: httpx.Client, count: int, **headers: str) -> list[httpx.Response]:
    return [
        client.post(PAYMENTS, json=payment(transaction_id=f"rl_{i}"), headers=headers)
        for i in range(count)
    ]


def test_rate_limit_answers_429_with_retry_after_once_the_burst_is_spent(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_limit=1, rate_limit_burst=3)
    statuses = [r.status_code for r in post_many(client, 5)]
    assert statuses == [200, 200, 200, 429, 429]
    response = client.post(PAYMENTS, json=payment(transaction_id="late"))
    assert response.headers["Retry-After"] == "1"
    assert len(sandbox.records()) == 3


def test_rate_limit_refills_at_its_rate(client: httpx.Client, sandbox: SandboxServer) -> None:
    sandbox.set_faults(rate_limit=20, rate_limit_burst=1)
    assert [r.status_code for r in post_many(client, 2)] == [200, 429]
    time.sleep(0.06)
    assert client.post(PAYMENTS, json=payment(transaction_id="refilled")).status_code == 200


def test_rate_limit_is_per_credential(client: httpx.Client, sandbox: SandboxServer) -> None:
    sandbox.set_keys(
        website_keys={DEFAULT_WEBSITE_KEY: DEFAULT_WEBSITE_ID, "df_other": OTHER_WEBSITE_ID}
    )
    sandbox.set_faults(rate_limit=1, rate_limit_burst=1)
    assert [r.status_code for r in post_many(client, 2)] == [200, 429]
    other = post_many(client, 1, Authorization="Bearer df_other")
    assert other[0].status_code == 200


def test_rate_limit_without_headers_option_sends_no_ratelimit_fields(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_limit=5)
    names = {name.lower() for name in client.post(PAYMENTS, json=payment()).headers}
    assert not any("ratelimit" in name for name in names)


def test_rate_limit_ietf_headers_show_policy_remaining_and_reset(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_limit=5, rate_limit_burst=2, rate_limit_headers="ietf")
    first, second, third = post_many(client, 3)
    assert first.headers["RateLimit-Policy"] == "5;w=1;burst=2"
    assert first.headers["RateLimit-Limit"] == "5"
    assert (first.headers["RateLimit-Remaining"], second.headers["RateLimit-Remaining"]) == (
        "1",
        "0",
    )
    assert third.status_code == 429
    assert third.headers["RateLimit-Reset"] == "1"
    assert "X-RateLimit-Remaining" not in third.headers


def test_rate_limit_x_headers_use_the_x_prefix(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_limit=5, rate_limit_burst=2, rate_limit_headers="x")
    response = client.post(PAYMENTS, json=payment())
    assert (response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]) == (
        "5",
        "1",
    )
    assert "X-RateLimit-Reset" in response.headers
    assert "RateLimit-Remaining" not in response.headers


def test_rate_limit_headers_both_sends_both_sets(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    sandbox.set_faults(rate_limit=5, rate_limit_headers="both")
    headers = client.post(PAYMENTS, json=payment()).headers
    assert "RateLimit-Remaining" in headers
    assert "X-RateLimit-Remaining" in headers


def test_rate_limit_rejects_an_unknown_headers_style(sandbox: SandboxServer) -> None:
    with pytest.raises(ValueError, match="rate_limit_headers"):
        sandbox.set_faults(rate_limit=5, rate_limit_headers="draft-7")


def test_main_reads_the_rate_limit_flags() -> None:
    from ingest.sandbox.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--rate-limit", "500", "--rate-limit-burst", "50", "--rate-limit-headers", "both"]
    )
    faults = config_from_args(args).faults
    assert (faults.rate_limit, faults.rate_limit_burst, faults.rate_limit_headers) == (
        500,
        50,
        "both",
    )

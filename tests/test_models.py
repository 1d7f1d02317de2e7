"""ingest.models: validation rules, aliases, free-trial inference, the wire body, job ids.

Unit lane: pure functions, no Redis, no HTTP.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import IngestError, ValidationError
from ingest.jobs import DELIVER_FUNCTION, job_data
from ingest.models import Payment, event_id, validate_payment

NOW = datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
WEBSITE = "5f0c0ffee0c0ffee0c0ffee0"


def valid(**changes: Any) -> Payment:
    fields: dict[str, Any] = {"amount": 10, "currency": "USD", "transaction_id": "pi_1"}
    fields.update(changes)
    return validate_payment(**fields, now=NOW)


def rejected(**changes: Any) -> ValidationError:
    """The ValidationError of an event with ``changes``; also checks the exception's kind."""
    with pytest.raises(ValidationError) as caught:
        valid(**changes)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, IngestError)
    return caught.value


# -- amount ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_amount", "expected"),
    [
        (10, Decimal(10)),
        (29.99, Decimal("29.99")),
        (Decimal("29.99"), Decimal("29.99")),
        ("29.99", Decimal("29.99")),
        (" 5 ", Decimal(5)),
        (0, Decimal(0)),
    ],
    ids=["int", "float", "decimal", "numeric-string", "padded-string", "zero"],
)
def test_amount_accepts_numbers_and_numeric_strings(given_amount: Any, expected: Decimal) -> None:
    assert valid(amount=given_amount).amount == expected


@pytest.mark.parametrize("bad", [True, False], ids=["true", "false"])
def test_amount_rejects_a_boolean(bad: bool) -> None:
    assert set(rejected(amount=bad).errors) == {"amount"}


@pytest.mark.parametrize(
    "bad",
    [float("nan"), Decimal("NaN"), "NaN"],
    ids=["float", "decimal", "string"],
)
def test_amount_rejects_nan(bad: Any) -> None:
    assert set(rejected(amount=bad).errors) == {"amount"}


@pytest.mark.parametrize(
    "bad",
    [float("inf"), float("-inf"), Decimal("Infinity"), "inf"],
    ids=["float", "negative-float", "decimal", "string"],
)
def test_amount_rejects_infinity(bad: Any) -> None:
    assert set(rejected(amount=bad).errors) == {"amount"}


@pytest.mark.parametrize(
    "bad", [-1, -0.01, Decimal("-5"), "-3"], ids=["int", "float", "dec", "str"]
)
def test_amount_rejects_a_negative_number(bad: Any) -> None:
    error = rejected(amount=bad)
    assert set(error.errors) == {"amount"}
    assert "refund" in error.errors["amount"]


@pytest.mark.parametrize("bad", ["abc", "", "12,50", "1.2.3"])
def test_amount_rejects_a_non_numeric_string(bad: str) -> None:
    assert set(rejected(amount=bad).errors) == {"amount"}


def test_amount_is_required() -> None:
    assert set(rejected(amount=None).errors) == {"amount"}


def test_float_29_99_is_sent_as_29_99_exactly() -> None:
    payment = valid(amount=29.99, transaction_id="pi_2999")
    assert payment.wire_body() == (
        '{"amount":29.99,"currency":"USD","transaction_id":"pi_2999","renewal":false,'
        '"refunded":false,"is_free_trial":false,"timestamp":"2026-05-01T12:00:00.123Z"}'
    )


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="required-only"),
        pytest.param(
            {
                "transaction_id": 'pi_"quoted"_ü\\',
                "datafast_visitor_id": "v\u2028x",
                "email": "zoë@example.com",
                "name": 'Zoë "Q" O\'Brien',
                "customer_id": "cus_1",
                "renewal": True,
                "refunded": True,
                "is_free_trial": True,
            },
            id="every-field-and-escapes",
        ),
    ],
)
def test_wire_body_is_exactly_what_json_dumps_writes(changes: dict[str, Any]) -> None:
    payment = valid(**changes)
    fields = {
        "currency": payment.currency,
        "transaction_id": payment.transaction_id,
        "datafast_visitor_id": payment.datafast_visitor_id,
        "email": payment.email,
        "name": payment.name,
        "customer_id": payment.customer_id,
    }
    rest = {k: v for k, v in fields.items() if v is not None}
    rest |= {
        "renewal": payment.renewal,
        "refunded": payment.refunded,
        "is_free_trial": payment.is_free_trial,
        "timestamp": "2026-05-01T12:00:00.123Z",
    }
    expected = json.dumps(rest, ensure_ascii=False, separators=(",", ":"))
    assert payment.wire_body() == '{"amount":10,' + expected[1:]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="valid"),
        pytest.param({"name": "  Ada  ", "email": " ", "website_id": "5F1C2A4E3B2D1C0A9F8E7D6C"}),
        pytest.param({"amount": "-1", "currency": "US", "renewal": "no"}, id="invalid"),
    ],
)
def test_a_blank_alias_changes_neither_the_payment_nor_the_errors(changes: dict[str, Any]) -> None:
    def outcome(**aliases: Any) -> Payment | dict[str, str]:
        try:
            return valid(**changes, **aliases)
        except ValidationError as exc:
            return exc.errors

    assert outcome(customer_name="", customer_email="") == outcome()


@pytest.mark.parametrize(
    ("given_amount", "text"),
    [(Decimal("29.990"), "29.99"), (Decimal("1E+2"), "100"), (0.1, "0.1"), ("0.000", "0")],
)
def test_amount_is_written_as_plain_decimal_text(given_amount: Any, text: str) -> None:
    assert valid(amount=given_amount).wire_body().startswith('{"amount":' + text + ",")


# -- currency --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["usd", "Eur", "GBP"])
def test_currency_of_three_letters_is_upper_cased(code: str) -> None:
    assert valid(currency=code).currency == code.upper()


@pytest.mark.parametrize("bad", ["US", "USDT", "U$D", "12A", "", "ÄBC", 840, None])
def test_currency_other_than_three_letters_is_rejected(bad: Any) -> None:
    assert set(rejected(currency=bad).errors) == {"currency"}


# -- transaction_id --------------------------------------------------------------------------------


@pytest.mark.parametrize("tid", ["a", "pi_3MtwBwLkdIwHu7ix28a3tqPa", "x" * 255, "ch_é€"])
def test_transaction_id_of_1_to_255_printable_characters_is_kept(tid: str) -> None:
    assert valid(transaction_id=tid).transaction_id == tid


def test_transaction_id_of_256_characters_is_rejected() -> None:
    assert set(rejected(transaction_id="x" * 256).errors) == {"transaction_id"}


@pytest.mark.parametrize("bad", ["", "   "], ids=["empty", "blank"])
def test_empty_transaction_id_is_rejected(bad: str) -> None:
    assert set(rejected(transaction_id=bad).errors) == {"transaction_id"}


@pytest.mark.parametrize("bad", ["pi\x00", "pi\n1", "pi\t1", "pi\x7f", "pi\x1f1", "pi\u200b"])
def test_transaction_id_with_control_or_unprintable_characters_is_rejected(bad: str) -> None:
    assert set(rejected(transaction_id=bad).errors) == {"transaction_id"}


@pytest.mark.parametrize("bad", [None, 123])
def test_transaction_id_must_be_a_string(bad: Any) -> None:
    assert set(rejected(transaction_id=bad).errors) == {"transaction_id"}


# -- optional strings ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["name", "customer_id"])
def test_optional_text_is_trimmed(field: str) -> None:
    assert getattr(valid(**{field: "  Ada Lovelace \t"}), field) == "Ada Lovelace"


def test_email_is_trimmed() -> None:
    assert valid(email="  ada@example.com ").email == "ada@example.com"


@pytest.mark.parametrize("field", ["name", "customer_id", "email"])
def test_blank_optional_text_is_absent(field: str) -> None:
    payment = valid(**{field: "   "})
    assert getattr(payment, field) is None
    assert field not in json.loads(payment.wire_body())


@pytest.mark.parametrize(("field", "limit"), [("name", 255), ("customer_id", 255)])
def test_optional_text_longer_than_its_limit_is_rejected(field: str, limit: int) -> None:
    assert getattr(valid(**{field: "n" * limit}), field) == "n" * limit
    assert set(rejected(**{field: "n" * (limit + 1)}).errors) == {field}


def test_email_longer_than_320_characters_is_rejected() -> None:
    address = "a" * 300 + "@example.com"
    assert valid(email=address).email == address
    assert set(rejected(email="a" * 320 + "@example.com").errors) == {"email"}


@pytest.mark.parametrize("field", ["name", "customer_id", "email", "datafast_visitor_id"])
def test_optional_text_with_control_characters_is_rejected(field: str) -> None:
    assert set(rejected(**{field: "ada\x00@example.com"}).errors) == {field}


@pytest.mark.parametrize("field", ["name", "customer_id", "email", "datafast_visitor_id"])
def test_optional_text_must_be_a_string(field: str) -> None:
    assert set(rejected(**{field: 42}).errors) == {field}


@pytest.mark.parametrize("field", ["name", "customer_id", "email", "datafast_visitor_id"])
def test_optional_text_that_utf8_cannot_encode_is_rejected(field: str) -> None:
    # A lone surrogate is not printable text: the request body could not be encoded as
    # UTF-8 and the event would fail on every delivery attempt (or at enqueue) instead of
    # being refused here, at the boundary.
    assert set(rejected(**{field: "ada\ud800@example.com"}).errors) == {field}


def test_email_without_an_at_sign_is_rejected() -> None:
    assert set(rejected(email="Ada Lovelace").errors) == {"email"}


@pytest.mark.parametrize(
    "visitor",
    ["3f1c2a4e-1b2c-4c1b-9b7e-0123456789AB", " padded-visitor ", "MiXeD"],
    ids=["uuid", "padded", "mixed-case"],
)
def test_datafast_visitor_id_is_kept_exactly_as_given(visitor: str) -> None:
    payment = valid(datafast_visitor_id=visitor)
    assert payment.datafast_visitor_id == visitor
    assert json.loads(payment.wire_body())["datafast_visitor_id"] == visitor


def test_datafast_visitor_id_longer_than_255_is_rejected() -> None:
    assert set(rejected(datafast_visitor_id="v" * 256).errors) == {"datafast_visitor_id"}


# -- aliases ---------------------------------------------------------------------------------------


def test_customer_email_is_accepted_as_email() -> None:
    payment = valid(customer_email="ada@example.com")
    assert payment.email == "ada@example.com"
    assert json.loads(payment.wire_body())["email"] == "ada@example.com"


def test_customer_name_is_accepted_as_name() -> None:
    payment = valid(customer_name="Ada")
    assert payment.name == "Ada"
    assert json.loads(payment.wire_body())["name"] == "Ada"


def test_email_and_customer_email_with_different_values_are_rejected() -> None:
    error = rejected(email="ada@example.com", customer_email="bob@example.com")
    assert set(error.errors) == {"email"}
    assert "customer_email" in error.errors["email"]


def test_name_and_customer_name_with_different_values_are_rejected() -> None:
    error = rejected(name="Ada", customer_name="Bob")
    assert set(error.errors) == {"name"}
    assert "customer_name" in error.errors["name"]


def test_email_and_customer_email_with_the_same_value_are_fine() -> None:
    assert valid(email="ada@example.com", customer_email="ada@example.com").email == (
        "ada@example.com"
    )


def test_name_and_customer_name_with_the_same_value_are_fine() -> None:
    assert valid(name="Ada", customer_name="Ada").name == "Ada"


# -- booleans --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["renewal", "refunded", "is_free_trial"])
@pytest.mark.parametrize("bad", ["false", 0, 1, "yes"])
def test_flags_must_be_true_or_false(field: str, bad: Any) -> None:
    assert set(rejected(**{field: bad}).errors) == {field}


# -- timestamp -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01T10:00:00Z", datetime(2026, 5, 1, 10, tzinfo=UTC)),
        ("2026-05-01T12:00:00+02:00", datetime(2026, 5, 1, 10, tzinfo=UTC)),
        ("2026-05-01T10:00:00.250Z", datetime(2026, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_timestamp_as_iso_string_is_accepted(text: str, expected: datetime) -> None:
    assert valid(timestamp=text).timestamp == expected


def test_timestamp_as_aware_datetime_is_accepted() -> None:
    moment = datetime(2026, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    payment = valid(timestamp=moment)
    assert payment.timestamp == moment
    assert json.loads(payment.wire_body())["timestamp"] == "2026-05-01T12:30:00.000Z"


@pytest.mark.parametrize(
    "naive", [datetime(2026, 5, 1, 12), "2026-05-01T12:00:00"], ids=["datetime", "string"]
)
def test_naive_timestamp_is_rejected_with_a_message_about_the_timezone(naive: Any) -> None:
    error = rejected(timestamp=naive)
    assert set(error.errors) == {"timestamp"}
    assert "timezone" in error.errors["timestamp"]


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", 1714560000])
def test_timestamp_that_is_not_a_date_time_is_rejected(bad: Any) -> None:
    assert set(rejected(timestamp=bad).errors) == {"timestamp"}


def test_absent_timestamp_is_stamped_with_the_enqueue_time() -> None:
    payment = valid()
    assert payment.timestamp == NOW
    assert json.loads(payment.wire_body())["timestamp"] == "2026-05-01T12:00:00.123Z"


def test_absent_timestamp_without_now_is_stamped_with_the_current_time() -> None:
    before = datetime.now(UTC)
    payment = validate_payment(amount=1, currency="USD", transaction_id="pi_now")
    assert before <= payment.timestamp <= datetime.now(UTC)


# -- free trials -----------------------------------------------------------------------------------


def test_zero_amount_without_is_free_trial_is_a_free_trial() -> None:
    payment = valid(amount=0)
    assert payment.is_free_trial is True
    assert json.loads(payment.wire_body())["is_free_trial"] is True


def test_zero_amount_with_explicit_is_free_trial_false_stays_false() -> None:
    assert valid(amount=0, is_free_trial=False).is_free_trial is False


def test_paid_amount_without_is_free_trial_is_not_a_free_trial() -> None:
    assert valid(amount="0.01").is_free_trial is False


# -- website id ------------------------------------------------------------------------------------


def test_website_id_is_lower_cased() -> None:
    assert valid(website_id=WEBSITE.upper()).website_id == WEBSITE


@pytest.mark.parametrize("bad", ["abc", "g" * 24, WEBSITE + "0"])
def test_website_id_that_is_not_24_hex_is_rejected(bad: str) -> None:
    assert set(rejected(website_id=bad).errors) == {"website_id"}


# -- all errors at once ----------------------------------------------------------------------------


def test_every_bad_field_is_reported_at_once() -> None:
    error = rejected(
        amount=-1,
        currency="DOLLARS",
        transaction_id="",
        timestamp="2026-05-01T12:00:00",
        renewal="no",
        email="not-an-email",
    )
    assert set(error.errors) == {
        "amount",
        "currency",
        "transaction_id",
        "timestamp",
        "renewal",
        "email",
    }
    assert error.fields == list(error.errors)
    for field in error.errors:
        assert field in str(error)


# -- properties: the wire body and the job id ------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40
).filter(lambda s: s.strip() != "")
_amounts = st.one_of(
    st.integers(min_value=0, max_value=10**9),
    st.decimals(min_value=0, max_value=10**9, allow_nan=False, allow_infinity=False, places=4),
    st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
)
_moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), UTC]),
)
_transaction_ids = st.text(
    alphabet=string.ascii_letters + string.digits + "_-:.é ", min_size=1, max_size=255
).filter(lambda s: s.strip() != "")
_websites = st.one_of(
    st.none(), st.text(alphabet="0123456789abcdefABCDEF", min_size=24, max_size=24)
)


def _expected_timestamp(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@settings(max_examples=150, deadline=None)
@given(
    amount=_amounts,
    currency=st.text(alphabet=string.ascii_letters, min_size=3, max_size=3),
    transaction_id=_transaction_ids,
    visitor=st.one_of(st.none(), _text),
    email=st.one_of(st.none(), st.emails()),
    name=st.one_of(st.none(), _text),
    customer_id=st.one_of(st.none(), _text),
    renewal=st.booleans(),
    refunded=st.booleans(),
    is_free_trial=st.one_of(st.none(), st.booleans()),
    timestamp=st.one_of(st.none(), _moments),
    website=_websites,
)
def test_valid_event_round_trips_to_the_exact_body_the_api_receives(
    amount: Any,
    currency: str,
    transaction_id: str,
    visitor: str | None,
    email: str | None,
    name: str | None,
    customer_id: str | None,
    renewal: bool,
    refunded: bool,
    is_free_trial: bool | None,
    timestamp: datetime | None,
    website: str | None,
) -> None:
    payment = validate_payment(
        amount=amount,
        currency=currency,
        transaction_id=transaction_id,
        datafast_visitor_id=visitor,
        email=email,
        name=name,
        customer_id=customer_id,
        renewal=renewal,
        refunded=refunded,
        is_free_trial=is_free_trial,
        timestamp=timestamp,
        website_id=website,
        now=NOW,
    )
    decimal_amount = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
    expected: dict[str, Any] = {
        "amount": decimal_amount,
        "currency": currency.upper(),
        "transaction_id": transaction_id,
    }
    if visitor is not None:
        expected["datafast_visitor_id"] = visitor
    if email is not None:
        expected["email"] = email.strip()
    if name is not None:
        expected["name"] = name.strip()
    if customer_id is not None:
        expected["customer_id"] = customer_id.strip()
    expected["renewal"] = renewal
    expected["refunded"] = refunded
    expected["is_free_trial"] = decimal_amount == 0 if is_free_trial is None else is_free_trial
    expected["timestamp"] = _expected_timestamp(timestamp or NOW)

    body = payment.wire_body()
    received = json.loads(body.encode("utf-8"), parse_float=Decimal)
    assert received == expected
    # Numbers are compared by value above; the API must also get a JSON number, not a string.
    assert isinstance(received["amount"], int | Decimal)


_identity = st.tuples(_websites, _transaction_ids, st.booleans())


@settings(max_examples=150, deadline=None)
@given(identity=_identity, amount_a=_amounts, amount_b=_amounts, name=st.one_of(st.none(), _text))
def test_job_id_depends_only_on_website_transaction_and_kind(
    identity: tuple[str | None, str, bool], amount_a: Any, amount_b: Any, name: str | None
) -> None:
    website, transaction_id, refunded = identity
    common = {"transaction_id": transaction_id, "refunded": refunded, "website_id": website}
    first = validate_payment(amount=amount_a, currency="usd", now=NOW, **common)
    second = validate_payment(
        amount=amount_b,
        currency="EUR",
        name=name,
        renewal=True,
        timestamp=NOW - timedelta(days=3),
        now=NOW + timedelta(hours=1),
        **common,
    )
    assert first.job_id == second.job_id
    assert first.job_id == event_id(website and website.lower(), transaction_id, refunded=refunded)


@settings(max_examples=150, deadline=None)
@given(a=_identity, b=_identity)
def test_different_website_transaction_or_kind_give_different_job_ids(
    a: tuple[str | None, str, bool], b: tuple[str | None, str, bool]
) -> None:
    def normalised(identity: tuple[str | None, str, bool]) -> tuple[str | None, str, bool]:
        website, transaction_id, refunded = identity
        return (website.lower() if website else None, transaction_id, refunded)

    def job_id(identity: tuple[str | None, str, bool]) -> str:
        website, transaction_id, refunded = identity
        return validate_payment(
            amount=1,
            currency="USD",
            transaction_id=transaction_id,
            refunded=refunded,
            website_id=website,
            now=NOW,
        ).job_id

    assert (job_id(a) == job_id(b)) == (normalised(a) == normalised(b))


def test_a_refund_has_its_own_job_id_and_knows_its_payments() -> None:
    payment = valid(transaction_id="pi_9")
    refund = valid(transaction_id="pi_9", refunded=True)
    assert refund.job_id != payment.job_id
    assert refund.payment_job_id == payment.job_id


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="no-website"),
        pytest.param({"website_id": "5f1c2a4e3b2d1c0a9f8e7d6c"}, id="website"),
        pytest.param(
            {"name": 'Zoë "Q" \\ O\'Brien\u2028\t', "email": "zoë@example.com"}, id="escapes"
        ),
    ],
)
def test_job_data_is_exactly_what_json_dumps_writes_for_rqs_call_tuple(
    fields: dict[str, str],
) -> None:
    payment = valid(transaction_id='pi_"quoted"_ü', **fields)
    expected = json.dumps(
        [DELIVER_FUNCTION, None, [payment.wire_body(), payment.website_id], {}],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert job_data(payment) == expected

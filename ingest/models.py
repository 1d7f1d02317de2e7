"""The payment event: validation, aliases, free-trial inference and the wire format.

Everything after :func:`validate_payment` trusts a :class:`Payment`: it is always valid, and
:meth:`Payment.wire_body` is exactly the JSON the Payments API receives.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ValidationError
from .timestamps import utc_iso

MAX_TRANSACTION_ID = 255
MAX_TEXT = 255
MAX_EMAIL = 320
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_WEBSITE_ID = re.compile(r"^[0-9a-fA-F]{24}$")
# Control characters, and lone surrogates (valid in a Python str, not encodable as UTF-8).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Amounts above this are far more likely a unit bug (cents sent as units) than a payment.
MAX_AMOUNT = Decimal(10) ** 12

_FIELDS = (
    "amount",
    "currency",
    "transaction_id",
    "datafast_visitor_id",
    "email",
    "name",
    "customer_id",
    "renewal",
    "refunded",
    "is_free_trial",
    "timestamp",
    "website_id",
)


@dataclass(frozen=True, slots=True)
class Payment:
    """A validated payment or refund, ready to be queued."""

    amount: Decimal
    currency: str
    transaction_id: str
    timestamp: datetime
    is_free_trial: bool
    datafast_visitor_id: str | None = None
    email: str | None = None
    name: str | None = None
    customer_id: str | None = None
    renewal: bool = False
    refunded: bool = False
    website_id: str | None = None

    @property
    def job_id(self) -> str:
        return event_id(self.website_id, self.transaction_id, refunded=self.refunded)

    @property
    def payment_job_id(self) -> str:
        """The id of the payment this event refunds (its own id when it is a payment)."""
        return event_id(self.website_id, self.transaction_id, refunded=False)

    def wire_body(self) -> str:
        """The exact JSON body for ``POST /api/v1/payments``.

        ``amount`` is written from its decimal text, so 29.99 is sent as ``29.99``, never
        as a binary float approximation. The rest is what ``json.dumps`` with
        ``ensure_ascii=False`` and compact separators writes for the same fields, put
        together from pieces: this runs on every enqueue, and the encoder's dict walk cost
        more than the rest of the job's data (tests/test_models.py holds the two equal).
        """
        parts = [
            '{"amount":',
            format_amount(self.amount),
            ',"currency":',
            _json_text(self.currency),
            ',"transaction_id":',
            _json_text(self.transaction_id),
        ]
        if self.datafast_visitor_id is not None:
            parts += (',"datafast_visitor_id":', _json_text(self.datafast_visitor_id))
        if self.email is not None:
            parts += (',"email":', _json_text(self.email))
        if self.name is not None:
            parts += (',"name":', _json_text(self.name))
        if self.customer_id is not None:
            parts += (',"customer_id":', _json_text(self.customer_id))
        parts += (
            ',"renewal":',
            _json_flag(self.renewal),
            ',"refunded":',
            _json_flag(self.refunded),
            ',"is_free_trial":',
            _json_flag(self.is_free_trial),
            ',"timestamp":',
            _json_text(utc_iso(self.timestamp)),
            "}",
        )
        return "".join(parts)


# What json.dumps(..., ensure_ascii=False) writes for a str (the C function it calls).
_json_text: Callable[[str], str] = json.encoder.encode_basestring
_encode_wire = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json_flag(value: bool) -> str:
    # Validation makes these bools; anything else a hand-built Payment holds is encoded as
    # json.dumps would.
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _encode_wire(value)


def event_id(website_id: str | None, transaction_id: str, *, refunded: bool) -> str:
    """The deterministic job id of an event: same website, transaction and kind, same id.

    Deterministic ids are what make a retried or repeated enqueue idempotent.
    """
    raw = f"{(website_id or '').lower()}\x1f{transaction_id}\x1f{int(refunded)}"
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def format_amount(amount: Decimal) -> str:
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def validate_payment(
    *,
    amount: Any,
    currency: Any,
    transaction_id: Any,
    datafast_visitor_id: Any = None,
    email: Any = None,
    name: Any = None,
    customer_id: Any = None,
    renewal: Any = False,
    refunded: Any = False,
    is_free_trial: Any = None,
    timestamp: Any = None,
    website_id: Any = None,
    customer_email: Any = None,
    customer_name: Any = None,
    now: datetime | None = None,
) -> Payment:
    """Check every field and build a :class:`Payment`.

    Raises :class:`ingest.ValidationError` naming every bad field and why, all at once.
    ``now`` stamps events without a timestamp (the enqueue time, so a late delivery still
    records when the payment happened).
    """
    if customer_email is None and customer_name is None:
        # The common case, without the error bookkeeping: the same parsers, called directly.
        # Any bad field falls through to the full pass below, which names every one of them.
        # (With no alias given, merging an alias returns the field as it was.)
        try:
            amount_value = _parse_amount(amount)
            trial_value = _parse_optional_bool(is_free_trial)
            timestamp_value = _parse_timestamp(timestamp)
            return Payment(
                amount=amount_value,
                currency=_parse_currency(currency),
                transaction_id=_parse_transaction_id(transaction_id),
                timestamp=_stamp(timestamp_value, now),
                is_free_trial=amount_value == 0 if trial_value is None else trial_value,
                datafast_visitor_id=_parse_visitor_id(datafast_visitor_id),
                email=_parse_email(email),
                name=_parse_text(name),
                customer_id=_parse_text(customer_id),
                renewal=_parse_bool(renewal),
                refunded=_parse_bool(refunded),
                website_id=_parse_website_id(website_id),
            )
        except _Invalid:
            pass

    errors: dict[str, str] = {}

    def check(field: str, parse: Any, value: Any) -> Any:
        try:
            return parse(value)
        except _Invalid as exc:
            errors[field] = str(exc)
            return None

    amount_value = check("amount", _parse_amount, amount)
    currency_value = check("currency", _parse_currency, currency)
    transaction_value = check("transaction_id", _parse_transaction_id, transaction_id)
    visitor_value = check("datafast_visitor_id", _parse_visitor_id, datafast_visitor_id)
    email_value = _merge_alias(errors, "email", "customer_email", email, customer_email)
    email_value = check("email", _parse_email, email_value) if "email" not in errors else None
    name_value = _merge_alias(errors, "name", "customer_name", name, customer_name)
    name_value = check("name", _parse_text, name_value) if "name" not in errors else None
    customer_value = check("customer_id", _parse_text, customer_id)
    renewal_value = check("renewal", _parse_bool, renewal)
    refunded_value = check("refunded", _parse_bool, refunded)
    trial_value = check("is_free_trial", _parse_optional_bool, is_free_trial)
    timestamp_value = check("timestamp", _parse_timestamp, timestamp)
    website_value = check("website_id", _parse_website_id, website_id)

    if errors:
        raise ValidationError(errors)

    if trial_value is None:
        trial_value = amount_value == 0

    return Payment(
        amount=amount_value,
        currency=currency_value,
        transaction_id=transaction_value,
        timestamp=_stamp(timestamp_value, now),
        is_free_trial=trial_value,
        datafast_visitor_id=visitor_value,
        email=email_value,
        name=name_value,
        customer_id=customer_value,
        renewal=renewal_value,
        refunded=refunded_value,
        website_id=website_value,
    )


def _stamp(timestamp: datetime | None, now: datetime | None) -> datetime:
    if timestamp is not None:
        return timestamp
    return now if now is not None else datetime.now(UTC)


# The fields a mapping (a CSV header, a JSON object) may name, and those it must.
FIELD_NAMES = (*_FIELDS, "customer_email", "customer_name")
REQUIRED_FIELDS = ("amount", "currency", "transaction_id")


def payment_from_mapping(data: dict[str, Any], *, now: datetime | None = None) -> Payment:
    """Validate a mapping that uses the API's field names (CSV rows, JSON lines).

    Unknown fields are an error: a typo such as ``ammount`` must not be silently dropped.
    Like :func:`validate_payment`, every bad, missing and unknown field is reported at once.
    """
    errors = {field: "unknown field" for field in sorted(set(data) - set(FIELD_NAMES))}
    known = {k: v for k, v in data.items() if k in FIELD_NAMES}
    missing = {field: "is required" for field in REQUIRED_FIELDS if field not in known}
    try:
        payment = validate_payment(**{**dict.fromkeys(REQUIRED_FIELDS), **known}, now=now)
    except ValidationError as exc:
        raise ValidationError({**exc.errors, **missing, **errors}) from None
    if errors:
        raise ValidationError(errors)
    return payment


class _Invalid(Exception):
    pass


def parse_timestamp(value: Any, *, field: str = "timestamp") -> datetime:
    """An aware UTC datetime from an ISO 8601 string or a datetime, by the events' rules."""
    try:
        moment = _parse_timestamp(value)
    except _Invalid as exc:
        raise ValidationError({field: str(exc)}) from None
    if moment is None:
        raise ValidationError({field: "is required"})
    return moment


def _parse_amount(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise _Invalid("must be a number, not a boolean")
    if value is None:
        raise _Invalid("is required")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"must be a finite number, got {value!r}")
        # repr() is the shortest text that round-trips: 29.99 stays 29.99.
        result = Decimal(repr(value))
    elif isinstance(value, int | Decimal):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise _Invalid(f"must be a number, got {value!r}") from None
    else:
        raise _Invalid(f"must be a number, got {type(value).__name__}")
    if not result.is_finite():
        raise _Invalid(f"must be a finite number, got {value!r}")
    if result < 0:
        raise _Invalid("must be >= 0 (record a refund with refunded=True, not a negative amount)")
    if result >= MAX_AMOUNT:
        raise _Invalid(f"must be below {MAX_AMOUNT:,.0f}")
    return result


def _parse_currency(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a three-letter ISO 4217 code such as 'USD'")
    stripped = value.strip()
    if not _CURRENCY.match(stripped):
        raise _Invalid(f"must be a three-letter ISO 4217 code such as 'USD', got {value!r}")
    return stripped.upper()


def _parse_transaction_id(value: Any) -> str:
    if not isinstance(value, str):
        if value is None:
            raise _Invalid("is required")
        raise _Invalid(f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Invalid("must not be empty")
    if len(value) > MAX_TRANSACTION_ID:
        raise _Invalid(f"must be at most {MAX_TRANSACTION_ID} characters, got {len(value)}")
    if _CONTROL.search(value) or not value.isprintable():
        raise _Invalid("must not contain control or non-printable characters")
    return value


def _parse_visitor_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {type(value).__name__}")
    if value == "":
        return None
    if len(value) > MAX_TEXT:
        raise _Invalid(f"must be at most {MAX_TEXT} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise _Invalid("must not contain control characters")
    return value


def _text_parser(limit: int) -> Any:
    def parse(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {type(value).__name__}")
        stripped = value.strip()
        if not stripped:
            return None
        if len(stripped) > limit:
            raise _Invalid(f"must be at most {limit} characters, got {len(stripped)}")
        if _CONTROL.search(stripped):
            raise _Invalid("must not contain control characters")
        return stripped

    return parse


_parse_text = _text_parser(MAX_TEXT)
_parse_text_email = _text_parser(MAX_EMAIL)


def _parse_email(value: Any) -> str | None:
    parsed: str | None = _parse_text_email(value)
    if parsed is not None and ("@" not in parsed or parsed.startswith("@") or " " in parsed):
        # Not an RFC 5322 check: only a guard against a name or id passed as an email.
        raise _Invalid("must look like an email address (name@domain)")
    return parsed


def _merge_alias(
    errors: dict[str, str], field: str, alias: str, value: Any, alias_value: Any
) -> Any:
    # An empty cell (CSV exports often carry both columns) counts as not given.
    if value is None or (isinstance(value, str) and not value.strip()):
        return alias_value
    if alias_value is None or (isinstance(alias_value, str) and not alias_value.strip()):
        return value
    if (
        isinstance(value, str)
        and isinstance(alias_value, str)
        and value.strip() == alias_value.strip()
    ):
        return value
    errors[field] = f"given as both {field} and {alias} with different values; pass one"
    return None


def _parse_bool(value: Any) -> bool:
    # Strict on purpose: "false" or 0 from a form would otherwise flip a refund flag.
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {value!r}")
    return value


def _parse_optional_bool(value: Any) -> bool | None:
    return None if value is None else _parse_bool(value)


def _parse_timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(
                text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
            )
        except ValueError:
            raise _Invalid(
                f"must be an ISO 8601 date-time such as 2026-05-01T12:00:00Z, got {value!r}"
            ) from None
    else:
        raise _Invalid(f"must be an ISO 8601 string or a datetime, got {type(value).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _Invalid(
            "must be timezone-aware (add 'Z' or an offset such as +02:00, or pass "
            "datetime.now(timezone.utc)); a naive time is ambiguous"
        )
    return moment.astimezone(UTC)


def _parse_website_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _WEBSITE_ID.match(value):
        raise _Invalid("must be a 24-character hex website id")
    return value.lower()

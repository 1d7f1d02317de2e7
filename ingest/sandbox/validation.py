"""The POST body checks the Payments API makes, written for the hot path.

Plain ``type() is`` checks rather than a model: this runs on every request of a benchmark,
and ``type(x) is bool`` also keeps ``True`` from passing as the number 1.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, NamedTuple

OPTIONAL_STRINGS = (
    "datafast_visitor_id",
    "email",
    "customer_email",
    "name",
    "customer_name",
    "customer_id",
)
OPTIONAL_BOOLEANS = ("renewal", "refunded", "is_free_trial")
_OPTIONAL_TYPES: dict[str, type] = {
    **dict.fromkeys(OPTIONAL_STRINGS, str),
    **dict.fromkeys(OPTIONAL_BOOLEANS, bool),
}


class Payment(NamedTuple):
    """What the store needs from a valid body."""

    transaction_id: str
    refunded: bool
    visitor_id: str | None
    event_time: float | None
    """The body's timestamp as epoch seconds, None when the body has none."""
    is_free_trial: bool


def parse_iso8601(value: str) -> float:
    """Epoch seconds of an ISO 8601 timestamp; one without an offset is taken as UTC."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def validate_payment(body: dict[str, Any]) -> Payment | dict[str, str]:
    """The payment in ``body``, or field name -> reason for every bad field."""
    errors: dict[str, str] = {}

    amount = body.get("amount")
    if amount is None:
        errors["amount"] = "is required"
    elif not (
        (type(amount) is int and amount >= 0)
        # JSON allows neither, but Python's parser reads NaN and Infinity (and 1e999).
        or (type(amount) is float and math.isfinite(amount) and amount >= 0)
    ):
        errors["amount"] = "must be a number >= 0 (send refunded: true for a refund)"

    currency = body.get("currency")
    if currency is None:
        errors["currency"] = "is required"
    elif type(currency) is not str or not (
        len(currency) == 3 and currency.isascii() and currency.isalpha()
    ):
        errors["currency"] = "must be a three-letter currency code such as USD"

    transaction_id = body.get("transaction_id")
    if transaction_id is None:
        errors["transaction_id"] = "is required"
    elif type(transaction_id) is not str or not transaction_id.strip():
        errors["transaction_id"] = "must be a non-empty string"

    # Over the body's own keys, not the list of optional fields: a typical body has a
    # handful of keys, and unknown ones are ignored as the API ignores them.
    for name, value in body.items():
        kind = _OPTIONAL_TYPES.get(name)
        if kind is not None and value is not None and type(value) is not kind:
            errors[name] = "must be a string" if kind is str else "must be true or false"

    event_time: float | None = None
    timestamp = body.get("timestamp")
    if timestamp is not None:
        if type(timestamp) is not str:
            errors["timestamp"] = "must be an ISO 8601 string"
        else:
            try:
                event_time = parse_iso8601(timestamp)
            except (ValueError, OverflowError, OSError):
                errors["timestamp"] = "must be an ISO 8601 timestamp"

    if errors or type(transaction_id) is not str:
        return errors
    is_free_trial = body.get("is_free_trial")
    return Payment(
        transaction_id=transaction_id,
        refunded=body.get("refunded") is True,
        visitor_id=body.get("datafast_visitor_id"),
        event_time=event_time,
        is_free_trial=amount == 0 if is_free_trial is None else is_free_trial,
    )


def describe_errors(errors: dict[str, str]) -> str:
    return "invalid payment: " + "; ".join(f"{name} {why}" for name, why in errors.items())

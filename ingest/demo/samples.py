"""The demo's sample payments: a realistic mix, plus a few the API refuses and a few
that validation rejects before they reach the queue."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

# Sample ids the sandbox is told to refuse with a 400, to show dead-lettering with a reason.
REFUSED_IDS = ("demo_refused_1", "demo_refused_2")


def sample_events(count: int, *, rng: random.Random) -> list[dict[str, Any]]:
    """A realistic mix: mostly new payments, some renewals, refunds of earlier payments and a
    free trial. Deterministic for a given ``rng``."""
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    payments: list[dict[str, Any]] = []  # not refunded yet
    for i in range(count):
        roll = rng.random()
        base: dict[str, Any] = {
            "amount": Decimal(rng.choice(["9.99", "19.00", "29.99", "49.5", "99.00", "249.99"])),
            "currency": rng.choice(["USD", "EUR", "gbp"]),
            "transaction_id": f"demo_{i:06d}",
            "datafast_visitor_id": f"3f1c2a4e-{i:04x}-4c1b-9b7e-{rng.getrandbits(48):012x}",
            "customer_id": f"cus_{rng.getrandbits(32):08x}",
            "timestamp": now - timedelta(seconds=count - i),
        }
        if roll < 0.15:
            base["renewal"] = True
        events.append(base)
        payments.append(base)
        if roll > 0.95 and i > 0:
            # A refund of an earlier payment not refunded yet: a second refund of the same
            # payment would be refused at enqueue as a duplicate, which is not the point here.
            refund_of = payments.pop(rng.randrange(len(payments)))
            events.append({**refund_of, "refunded": True})
    events.append(
        {
            "amount": 0,
            "currency": "USD",
            "transaction_id": "demo_trial_1",
            "datafast_visitor_id": "3f1c2a4e-ffff-4c1b-9b7e-000000000001",
        }
    )
    for tid in REFUSED_IDS:
        events.append({"amount": 5, "currency": "USD", "transaction_id": tid})
    return events


INVALID_EVENTS: list[dict[str, Any]] = [
    {"amount": -10, "currency": "USD", "transaction_id": "demo_bad_amount"},
    {"amount": 10, "currency": "DOLLARS", "transaction_id": "demo_bad_currency"},
    {
        "amount": 10,
        "currency": "USD",
        "transaction_id": "demo_naive_time",
        "timestamp": "2026-05-01T12:00:00",
    },
    {"amount": 10, "currency": "USD", "transaction_id": ""},
]

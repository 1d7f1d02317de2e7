"""The one way this package writes a moment as text: ISO 8601 in UTC with a ``Z``.

Dead letters, auth pauses and the payment's wire body use milliseconds; RQ's job hash
(``created_at``, ``enqueued_at``) uses microseconds, RQ's own format (``rq.utils.utcformat``),
so that RQ parses our jobs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

RQ_TIMESPEC: Literal["microseconds"] = "microseconds"


def utc_iso(
    moment: datetime | float,
    *,
    timespec: Literal["milliseconds", "microseconds"] = "milliseconds",
) -> str:
    """``moment`` (an aware datetime, or unix seconds) as ``2026-05-01T12:00:00.000Z``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    # isoformat: several times cheaper than strftime, and this runs on every enqueue.
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")

"""The console's JSON shapes: what /api/ answers and what /openapi.json describes.

The HTML pages render these same objects, so what a page shows and what the API answers
are masked and computed the same way.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Reason = Literal["rejected", "exhausted"]
Status = Annotated[int, Field(ge=100, le=599)]
Text = Annotated[str, Field(max_length=255)]


def as_unix(value: datetime | None) -> float | None:
    """Unix time of ``value``; a time without a zone is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class Problem(BaseModel):
    """An error answer."""

    detail: str


class Selection(BaseModel):
    """Which dead letters: the filters of ``ingest dlq`` (empty fields match everything)."""

    model_config = ConfigDict(extra="forbid")

    reasons: list[Reason] = Field(default_factory=list, max_length=2)
    statuses: list[Status] = Field(default_factory=list, max_length=50)
    websites: list[Text] = Field(default_factory=list, max_length=50)
    ids: list[Text] = Field(
        default_factory=list, max_length=500, description="Dead-letter ids or transaction ids."
    )
    search: Annotated[str, Field(max_length=255)] | None = Field(
        default=None, description="Transaction id contains this text (case-insensitive)."
    )
    since: datetime | None = Field(default=None, description="Died at or after (ISO 8601).")
    until: datetime | None = Field(default=None, description="Died at or before (ISO 8601).")

    @field_validator("since", "until")
    @classmethod
    def _representable(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            stamp = as_unix(value)
        except (OverflowError, ValueError, OSError) as exc:
            raise ValueError("time out of range") from exc
        if stamp is None or not math.isfinite(stamp):
            raise ValueError("time out of range")
        return value


class Identity(BaseModel):
    """enqueued = delivered + dead + purged + erased + queued + in_flight + scheduled +
    deferred + parked; ``lost`` is what is missing from it and must be 0."""

    enqueued: int
    delivered: int
    dead: int
    purged: int
    erased: int
    queued: int
    in_flight: int
    scheduled: int
    deferred: int
    parked: int
    lost: int
    holds: bool


class Rates(BaseModel):
    """Events per second over the last minute.

    ``delivered`` is counted by the workers in Redis; ``enqueued`` and ``dead_lettered``
    are measured by this console from the counters it has seen (``null`` until it has
    watched for a few seconds).
    """

    delivered: float
    enqueued: float | None = None
    dead_lettered: float | None = None
    window_seconds: float = 60.0


class PausedWebsite(BaseModel):
    """A website whose deliveries stopped after the API refused our credentials."""

    website: str
    status: int | None = None
    error: str = ""
    since: str | None = None
    last_probe_at: str | None = None
    next_probe_after: str | None = None
    parked: int = 0
    probe_requested: bool = False


class SendRate(BaseModel):
    """One credential's send rate, learned and shared by every worker."""

    credential: str = Field(description="A short hash of the key, never the key.")
    rate: float = Field(description="Requests/s.")
    hold_seconds: float = Field(description="Seconds left of a hold after a run of 429s.")


class Overview(BaseModel):
    queue: str
    identity: Identity
    duplicates: int
    api_duplicates: int
    retried: int
    replayed: int
    dead_lettered_total: int
    rates: Rates
    oldest_queued_age_seconds: float | None
    workers: int
    paused: list[PausedWebsite]
    send_rates: list[SendRate] = []
    read_at: datetime


class Attempt(BaseModel):
    at: str = ""
    status: int | None = None
    error: str = ""


class DeadLetterSummary(BaseModel):
    id: str
    transaction_id: str
    website: str
    reason: str
    status: int | None
    attempts: int
    dead_at: str
    error: str


class DeadLetterDetail(DeadLetterSummary):
    first_attempt_at: str
    last_attempt_at: str
    history: list[Attempt]
    event: dict[str, Any] = Field(description="The event as it would be sent again.")
    revealed: bool = Field(description="False: emails and names are masked.")


class ReasonStatusCount(BaseModel):
    reason: str
    status: int | None
    count: int


class WebsiteCount(BaseModel):
    website: str
    count: int


class Counts(BaseModel):
    total: int
    by_reason: dict[str, int]
    by_reason_status: list[ReasonStatusCount]
    by_website: list[WebsiteCount]


class DeadLetterPage(BaseModel):
    total: int = Field(description="Dead letters in the store.")
    matched: int = Field(description="Dead letters matching the selection.")
    offset: int
    limit: int
    items: list[DeadLetterSummary]
    counts: Counts | None = Field(
        default=None, description="Per reason over the whole store (null while first counted)."
    )


class ActionRequest(BaseModel):
    """Choose dead letters by ``selection`` (``all`` for an empty one) or by ``ids``.

    Without ``confirm`` nothing changes: the answer is the dry run (how many, which).
    With ``confirm``, pass the dry run's ``as_of`` so that letters which died after it
    are left alone.
    """

    model_config = ConfigDict(extra="forbid")

    selection: Selection | None = None
    all: bool = Field(default=False, description="Allow an empty selection (every letter).")
    ids: list[Text] = Field(default_factory=list, max_length=1000)
    confirm: bool = False
    as_of: float | None = Field(default=None, ge=0, le=1e11)


class Operation(BaseModel):
    id: str
    action: Literal["replay", "purge"]
    state: Literal["running", "done", "failed"]
    description: str
    selected: int
    processed: int
    requeued: int
    purged: int
    skipped: int
    rate: float | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None


class Preview(BaseModel):
    action: Literal["replay", "purge"]
    description: str
    count: int
    as_of: float
    sample: list[DeadLetterSummary]


class ActionResult(BaseModel):
    """A dry run (``preview``) or the started action (``operation``)."""

    dry_run: bool
    preview: Preview | None = None
    operation: Operation | None = None


class ProbeResult(BaseModel):
    website: str
    requested: bool


class Session(BaseModel):
    csrf_token: str = Field(description="Send as X-CSRF-Token on every POST.")
    read_only: bool
    token_required: bool

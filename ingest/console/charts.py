"""The overview's charts: the last hour, minute by minute, drawn as SVG on the server.

The history is what the workers' scripts keep in Redis (``ingest:{q}:minute:{m}``, see
:mod:`ingest.keys`): ``ACK`` counts each batch's deliveries and dead letters into the minute
it ran in, and ``RECLAIM`` (every worker's housekeeping, every ``INGEST_LEASE_SECONDS / 4``)
samples the queue's depth and its oldest event's age. So every worker's activity counts, and
a console started a minute ago draws the whole hour.

The SVG is part of the page: no script draws it and nothing in it is styled inline
(``static/charts.css``), so the console's Content-Security-Policy stays as it is. Every text
in it is escaped; every number is formatted here.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from markupsafe import Markup, escape

from ingest.keys import QueueKeys, minute_of

HOUR = 60  # minutes drawn
# The current minute is drawn once this much of it has passed, as its rate so far: earlier,
# a handful of events would look like a spike (or a lull).
PARTIAL_MINUTE = 10.0

_FIELDS = ("delivered", "dead_lettered", "depth", "oldest_age")
_SLUG = re.compile(r"^[a-z][a-z0-9-]*$")

# Geometry of one chart, in SVG user units (the CSS scales it to its box).
_WIDTH, _HEIGHT = 480, 150
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 10, 24


@dataclass(frozen=True, slots=True)
class History:
    """The last ``len(delivered)`` minutes, oldest first; ``None`` where nothing is known.

    Counters are per second over each minute (a minute without a batch delivered nothing:
    0); gauges are the largest sample of each minute (a minute without a sample, because no
    worker ran, is ``None``).
    """

    first_minute: int  # unix minute of the first value
    delivered: list[float | None]
    dead_lettered: list[float | None]
    depth: list[float | None]
    oldest_age: list[float | None]


def _number(raw: bytes | str | None) -> float | None:
    """A stored value as a finite float, or None (absent, or not a number: never trusted)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def read_history(
    connection: redis.Redis, keys: QueueKeys, *, now: float, minutes: int = HOUR
) -> History:
    """The ``minutes`` minutes up to and including the one ``now`` is in: one round trip."""
    current = minute_of(now)
    first = current - minutes + 1
    with connection.pipeline(transaction=False) as pipe:
        for m in range(first, current + 1):
            pipe.hmget(keys.minute(m), _FIELDS)
        rows: list[list[bytes | None]] = pipe.execute()
    series: dict[str, list[float | None]] = {name: [] for name in _FIELDS}
    partial = now - current * 60
    for m, row in zip(range(first, current + 1), rows, strict=True):
        seconds = 60.0 if m < current else partial
        for name, raw in zip(_FIELDS[:2], row[:2], strict=True):
            count = _number(raw) or 0.0
            series[name].append(count / seconds if seconds >= PARTIAL_MINUTE else None)
        for name, raw in zip(_FIELDS[2:], row[2:], strict=True):
            series[name].append(_number(raw))
    return History(first, **series)


# -- formatting --------------------------------------------------------------------------------


def per_second(value: float) -> str:
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.3g}/s"


def count(value: float) -> str:
    return f"{value:,.0f}"


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.2g} min"
    return f"{seconds / 3600:.3g} h"


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (1 for nothing to show)."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    return next(step * scale for step in (1, 2, 2.5, 5, 10) if value <= step * scale * 1.000001)


# Axis tops for durations: whole seconds, minutes and hours, so that half of each is one too.
_DURATION_TOPS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


def duration_ceiling(seconds: float) -> float:
    """The smallest of :data:`_DURATION_TOPS` at or above ``seconds`` (past 4 h: by hours)."""
    tops = (top for top in _DURATION_TOPS if seconds <= top)
    return float(next(tops, 3600 * math.ceil(seconds / 3600)))


def _clock(minute: int) -> str:
    return time.strftime("%H:%M", time.gmtime(minute * 60))


# -- one chart ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chart:
    """One series and how to show it; :attr:`svg` draws it."""

    slug: str  # names the chart in element ids and CSS classes: [a-z][a-z0-9-]*
    title: str
    note: str
    values: Sequence[float | None]
    first_minute: int
    unit: Callable[[float], str]
    ceiling: Callable[[float], float] = _nice_ceiling  # the axis's top for the largest value

    def __post_init__(self) -> None:
        if not _SLUG.match(self.slug):
            raise ValueError(f"a chart's slug is [a-z][a-z0-9-]*, not {self.slug!r}")

    @property
    def known(self) -> list[float]:
        return [v for v in self.values if v is not None and math.isfinite(v)]

    @property
    def latest(self) -> str:
        known = self.known
        return self.unit(known[-1]) if known else "\N{EN DASH}"

    @property
    def peak(self) -> str:
        known = self.known
        return self.unit(max(known)) if known else "\N{EN DASH}"

    @property
    def svg(self) -> Markup:
        return render_svg(self)


def _segments(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Runs of consecutive known values: a gap (no sample) breaks the line."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, value in enumerate(values):
        if value is None or not math.isfinite(value):
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, value))
    if current:
        runs.append(current)
    return runs


def render_svg(chart: Chart) -> Markup:
    """``chart`` as an inline ``<svg>``: axes, a line (with the area under it) per run of
    known minutes, a dot for a minute on its own and for the latest; or a note that there is
    nothing to draw."""
    n = len(chart.values)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    bottom = _TOP + plot_h
    known = chart.known
    top_value = chart.ceiling(max(known, default=0.0))

    def x(i: int) -> float:
        return _LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(value: float) -> float:
        return bottom - plot_h * min(value, top_value) / top_value

    slug = chart.slug
    desc = (
        f"{chart.note}. Latest {chart.latest}, peak {chart.peak}."
        if known
        else f"{chart.note}. No samples in the last hour."
    )
    parts = [
        f'<svg class="chart-svg chart-{slug}" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-labelledby="chart-{slug}-title chart-{slug}-desc" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-{slug}-title">{escape(chart.title)}</title>',
        f'<desc id="chart-{slug}-desc">{escape(desc)}</desc>',
    ]
    labels = [chart.unit(top_value * fraction) for fraction in (0.0, 0.5, 1.0)]
    for fraction, label in zip((0.0, 0.5, 1.0), labels, strict=True):
        gy = bottom - plot_h * fraction
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{gy:.1f}" x2="{_WIDTH - _RIGHT}" y2="{gy:.1f}"/>'
        )
        if fraction != 0.5 or labels.count(label) == 1:  # "0, 0, 1" for a count says nothing
            parts.append(
                f'<text class="axis" x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">'
                f"{escape(label)}</text>"
            )
    for i in range(n):  # the quarter hours
        if (chart.first_minute + i) % 15 == 0:
            anchor = "start" if i < 3 else "end" if i > n - 4 else "middle"
            parts.append(
                f'<text class="axis" x="{x(i):.1f}" y="{_HEIGHT - 6}" text-anchor="{anchor}">'
                f"{escape(_clock(chart.first_minute + i))}</text>"
            )
    for run in _segments(chart.values):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
        if len(run) == 1:
            i, v = run[0]
            parts.append(f'<circle class="dot" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3"/>')
            continue
        first_x, last_x = x(run[0][0]), x(run[-1][0])
        parts.append(
            f'<polygon class="area" points="{first_x:.1f},{bottom:.1f} {points} '
            f'{last_x:.1f},{bottom:.1f}"/>'
        )
        parts.append(f'<polyline class="line" points="{points}"/>')
        i, v = run[-1]
        parts.append(f'<circle class="dot" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5"/>')
    if not known:
        parts.append(
            f'<text class="empty" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2 + 4:.1f}" '
            f'text-anchor="middle">No samples in the last hour</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above went through escape()


# -- the overview's four -----------------------------------------------------------------------


def overview_charts(connection: redis.Redis, keys: QueueKeys, *, now: float) -> list[Chart]:
    """Delivered/s, dead-lettered/s, queue depth and the oldest event's age, last hour."""
    h = read_history(connection, keys, now=now)
    return [
        Chart(
            "delivered",
            "Delivered per second",
            "Per second, averaged over each minute, all workers",
            h.delivered,
            h.first_minute,
            per_second,
        ),
        Chart(
            "dead-lettered",
            "Dead-lettered per second",
            "Per second, averaged over each minute: refused or out of attempts",
            h.dead_lettered,
            h.first_minute,
            per_second,
        ),
        Chart(
            "depth",
            "Queue depth",
            "Events waiting to be sent: the largest sample of each minute (a gap: no worker ran)",
            h.depth,
            h.first_minute,
            count,
        ),
        Chart(
            "oldest-age",
            "Oldest queued event's age",
            "How long the oldest waiting event has waited: the largest sample of each minute "
            "(a gap: no worker ran)",
            h.oldest_age,
            h.first_minute,
            duration,
            duration_ceiling,
        ),
    ]

"""The overview's charts: the minute history read back from Redis, drawn as SVG, on the page.

The history is written here the way the scripts write it (``ingest:{q}:minute:{m}``);
``tests/test_minute_series.py`` shows the scripts writing it.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import redis

from ingest import keys
from ingest.console.charts import (
    Chart,
    count,
    duration,
    duration_ceiling,
    per_second,
    read_history,
    render_svg,
)

from .conftest import QUEUE

K = keys.QueueKeys(QUEUE)
MINUTE = 29_613_600  # 2026-04-22 00:00 UTC
SVG = "{http://www.w3.org/2000/svg}"
# The policy as it was before the charts: they must not need it changed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def chart(values: list[float | None], **changes: Any) -> Chart:
    fields: dict[str, Any] = {
        "slug": "depth",
        "title": "Queue depth",
        "note": "Events waiting",
        "values": values,
        "first_minute": MINUTE,
        "unit": count,
    }
    fields.update(changes)
    return Chart(**fields)


def parsed(svg: str) -> ET.Element:
    """The SVG as XML: it must be well-formed."""
    return ET.fromstring(svg)


def lines(svg: str) -> list[ET.Element]:
    return parsed(svg).findall(f"{SVG}polyline")


def dots(svg: str) -> list[ET.Element]:
    return parsed(svg).findall(f"{SVG}circle")


# -- drawing ---------------------------------------------------------------------------------------


def test_an_empty_hour_says_there_are_no_samples_and_draws_nothing() -> None:
    svg = render_svg(chart([None] * 60))
    assert "No samples in the last hour" in svg
    assert lines(svg) == []
    assert dots(svg) == []
    assert parsed(svg).find(f"{SVG}title").text == "Queue depth"  # type: ignore[union-attr]


def test_one_known_minute_is_drawn_as_a_dot() -> None:
    svg = render_svg(chart([None] * 59 + [4.0]))
    assert lines(svg) == []
    assert len(dots(svg)) == 1
    assert "No samples" not in svg


def test_a_full_hour_is_one_line_through_sixty_points() -> None:
    svg = render_svg(chart([float(i % 7) for i in range(60)]))
    (line,) = lines(svg)
    assert len(line.attrib["points"].split()) == 60


def test_a_minute_without_a_sample_breaks_the_line() -> None:
    svg = render_svg(chart([1.0] * 20 + [None] * 5 + [2.0] * 35))
    assert [len(line.attrib["points"].split()) for line in lines(svg)] == [20, 35]


def test_the_time_axis_marks_the_quarter_hours_in_utc() -> None:
    svg = render_svg(chart([1.0] * 60, first_minute=MINUTE - 10))
    labels = [t.text for t in parsed(svg).iter(f"{SVG}text") if ":" in (t.text or "")]
    assert labels == ["00:00", "00:15", "00:30", "00:45"]


def test_every_text_in_the_svg_is_escaped() -> None:
    svg = render_svg(
        chart(
            [1.0, 2.0],
            title="<script>alert(1)</script>",
            note='"><img src=x onerror=alert(2)>',
            unit=lambda v: f"<b>{v}</b>",
        )
    )
    assert "<script" not in svg
    assert "<img" not in svg
    assert "<b>" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    parsed(svg)


def test_the_svg_has_no_script_event_handler_or_inline_style() -> None:
    svg = render_svg(chart([None, 1.0, 3.0, None, 2.0]))
    assert "<script" not in svg
    assert not re.search(r"\son\w+=", svg)
    assert "style=" not in svg


def test_a_slug_outside_the_id_alphabet_is_refused() -> None:
    with pytest.raises(ValueError, match="slug"):
        chart([1.0], slug='x" onload="alert(1)')


def test_rates_are_labelled_per_second() -> None:
    svg = render_svg(chart([0.5, 2.25], slug="delivered", unit=per_second))
    labels = [t.text for t in parsed(svg).iter(f"{SVG}text") if "/s" in (t.text or "")]
    assert labels == ["0/s", "1.25/s", "2.5/s"]


def test_an_age_axis_is_marked_in_whole_seconds_minutes_or_hours() -> None:
    for peak, marks in [
        (155.3, ["0 s", "2.5 min", "5 min"]),
        (4000.0, ["0 s", "1 h", "2 h"]),
    ]:
        age = chart([1.0, peak], slug="oldest-age", unit=duration, ceiling=duration_ceiling)
        texts = [t.text for t in parsed(render_svg(age)).iter(f"{SVG}text")]
        assert texts[:3] == marks


# -- reading the history ---------------------------------------------------------------------------


def test_counters_are_read_per_second_and_gauges_as_sampled(redis_client: redis.Redis) -> None:
    now = MINUTE * 60 + 30
    redis_client.hset(
        K.minute(MINUTE - 1),
        mapping={"delivered": 120, "dead_lettered": 3, "depth": 7, "oldest_age": "12.5"},
    )
    h = read_history(redis_client, K, now=now)
    assert h.first_minute == MINUTE - 59
    assert (h.delivered[-2], h.dead_lettered[-2], h.depth[-2], h.oldest_age[-2]) == (
        2.0,
        0.05,
        7.0,
        12.5,
    )
    # A minute without a batch delivered nothing; without a sample, nothing is known.
    assert (h.delivered[0], h.depth[0]) == (0.0, None)


def test_the_current_minute_is_drawn_once_ten_seconds_of_it_have_passed(
    redis_client: redis.Redis,
) -> None:
    redis_client.hset(K.minute(MINUTE), mapping={"delivered": 15})
    assert read_history(redis_client, K, now=MINUTE * 60 + 5).delivered[-1] is None
    assert read_history(redis_client, K, now=MINUTE * 60 + 30).delivered[-1] == 0.5


@pytest.mark.parametrize("stored", ["nan", "1e999", "-3", "<script>"])
def test_a_stored_value_that_is_not_a_finite_count_is_not_drawn(
    redis_client: redis.Redis, stored: str
) -> None:
    redis_client.hset(K.minute(MINUTE - 1), mapping={"delivered": stored, "depth": stored})
    h = read_history(redis_client, K, now=MINUTE * 60 + 30)
    assert (h.delivered[-2], h.depth[-2]) == (0.0, None)


# -- on the overview -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_overview_draws_the_four_charts_from_the_minute_history(
    make_console: Any, redis_client: redis.Redis
) -> None:
    previous = keys.minute_of(time.time()) - 1
    redis_client.hset(
        K.minute(previous), mapping={"delivered": 150, "depth": 40, "oldest_age": "75.0"}
    )
    async with make_console() as console:
        page = await console.get("/")
    assert page.status_code == 200
    html = page.text
    for title in (
        "Delivered per second",
        "Dead-lettered per second",
        "Queue depth",
        "Oldest queued event&#39;s age",
    ):
        assert f">{title}</title>" in html
    assert html.count('<svg class="chart-svg') == 4
    assert re.search(r'data-chart-latest="delivered">[^<]*</strong>', html)
    assert "peak <strong>2.5/s</strong>" in html
    assert "peak <strong>40</strong>" in html
    assert "peak <strong>1.2 min</strong>" in html
    assert '<link rel="stylesheet" href="/static/charts.css">' in html


@pytest.mark.anyio
async def test_the_overview_keeps_its_content_security_policy(make_console: Any) -> None:
    async with make_console() as console:
        page = await console.get("/")
        css = await console.get("/static/charts.css")
    assert page.headers["content-security-policy"] == CSP
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


@pytest.mark.anyio
async def test_the_overview_has_no_inline_script_or_style(
    make_console: Any, redis_client: redis.Redis
) -> None:
    redis_client.hset(K.minute(keys.minute_of(time.time()) - 1), mapping={"delivered": 60})
    async with make_console() as console:
        html = (await console.get("/")).text
    assert "<svg" in html
    assert re.findall(r"<script(?![^>]*\ssrc=)[^>]*>", html) == []
    assert "style=" not in html
    assert "<style" not in html
    assert not re.search(r"\son\w+=", html)

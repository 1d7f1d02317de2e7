"""The console's JSON API against a real redis-server: filters, pages, counts, dry runs,
replay and purge, masking, paused websites."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis

from ingest import keys
from ingest.console.config import ConsoleOptions
from ingest.deadletter import DeadLetterFilter, DeadLetterStore

from .conftest import API_KEY, QUEUE, Letter, queued_ids, seed, snapshot

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

K = keys.QueueKeys(QUEUE)


def mixed_letters() -> list[Letter]:
    """12 letters: 5 rejected 400 on site A, 3 rejected 422 on site B, 4 exhausted 503."""
    site_a, site_b = "5f0c0ffee0c0ffee0c0ffee0", "aaaaaaaaaaaaaaaaaaaaaaaa"
    return (
        [Letter(f"ord_a{i}", status=400, website=site_a) for i in range(5)]
        + [Letter(f"ord_b{i}", status=422, website=site_b, error="bad email") for i in range(3)]
        + [
            Letter(f"ord_x{i}", reason="exhausted", status=503, error="unavailable", attempts=12)
            for i in range(4)
        ]
    )


def transactions(page: dict[str, Any]) -> set[str]:
    return {item["transaction_id"] for item in page["items"]}


async def test_filters_select_by_reason_status_website_and_search(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, mixed_letters())
    async with make_console() as console:
        by_reason = (await console.get("/api/dead-letters?reason=exhausted")).json()
        by_status = (await console.get("/api/dead-letters?status=422")).json()
        by_site = (await console.get("/api/dead-letters?website=5f0c0ffee0c0ffee0c0ffee0")).json()
        by_search = (await console.get("/api/dead-letters?q=ORD_B")).json()
        combined = (await console.get("/api/dead-letters?reason=rejected&status=400&q=a3")).json()
    assert transactions(by_reason) == {f"ord_x{i}" for i in range(4)}
    assert transactions(by_status) == {f"ord_b{i}" for i in range(3)}
    assert transactions(by_site) == {f"ord_a{i}" for i in range(5)}
    assert transactions(by_search) == {f"ord_b{i}" for i in range(3)}
    assert transactions(combined) == {"ord_a3"}
    assert by_reason["total"] == 12
    assert by_reason["matched"] == 4


async def test_time_window_selects_by_time_of_death(
    make_console: Any, redis_client: redis.Redis
) -> None:
    now = time.time()
    seed(
        redis_client,
        [
            Letter("old", dead_at=now - 7200),
            Letter("mid", dead_at=now - 1800),
            Letter("new", dead_at=now - 60),
        ],
    )
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 600))
    async with make_console() as console:
        window = (await console.get(f"/api/dead-letters?since={since}&until={until}")).json()
        recent = (await console.get(f"/api/dead-letters?since={since}&reason=rejected")).json()
    assert transactions(window) == {"mid"}
    assert transactions(recent) == {"mid", "new"}


async def test_pages_cover_every_letter_once_newest_first(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, [Letter(f"p{i:03d}") for i in range(120)])
    seen: list[str] = []
    filtered: list[str] = []
    async with make_console() as console:
        for offset in range(0, 150, 50):
            page = (await console.get(f"/api/dead-letters?offset={offset}&limit=50")).json()
            seen += [item["transaction_id"] for item in page["items"]]
            page = (await console.get(f"/api/dead-letters?q=p&offset={offset}")).json()
            filtered += [item["transaction_id"] for item in page["items"]]
    expected = [f"p{i:03d}" for i in reversed(range(120))]
    assert seen == expected
    assert filtered == expected


async def test_counts_per_reason_and_status(make_console: Any, redis_client: redis.Redis) -> None:
    seed(redis_client, mixed_letters())
    async with make_console() as console:
        counts = (await console.get("/api/dead-letters?limit=1")).json()["counts"]
    assert counts["by_reason"] == {"rejected": 8, "exhausted": 4}
    pairs = {(c["reason"], c["status"]): c["count"] for c in counts["by_reason_status"]}
    assert pairs == {("rejected", 400): 5, ("rejected", 422): 3, ("exhausted", 503): 4}


async def test_one_dead_letter_shows_event_attempts_and_times(
    make_console: Any, redis_client: redis.Redis
) -> None:
    [dead_id] = seed(redis_client, [Letter("ord_1", status=422, error="bad", attempts=3)])
    async with make_console() as console:
        by_id = (await console.get(f"/api/dead-letters/{dead_id}")).json()
        by_transaction = (await console.get("/api/dead-letters/ord_1")).json()
        missing = await console.get("/api/dead-letters/nope")
    assert by_id == by_transaction
    assert by_id["event"]["transaction_id"] == "ord_1"
    assert by_id["event"]["amount"] == 29.99
    assert [a["status"] for a in by_id["history"]] == [422, 422, 422]
    assert by_id["history"][0]["error"] == "bad"
    assert by_id["dead_at"]
    assert by_id["first_attempt_at"]
    assert by_id["last_attempt_at"]
    assert missing.status_code == 404


async def test_dry_run_changes_nothing(make_console: Any, redis_client: redis.Redis) -> None:
    seed(redis_client, mixed_letters())
    before = snapshot(redis_client)
    async with make_console() as console:
        replay = await console.post_json("/api/replay", {"selection": {"reasons": ["exhausted"]}})
        purge = await console.post_json("/api/purge", {"all": True})
        page = await console.get("/replay?reason=exhausted")
        purge_page = await console.get("/purge")
    assert replay.status_code == 200
    assert replay.json()["dry_run"] is True
    assert replay.json()["preview"]["count"] == 4
    assert purge.json()["preview"]["count"] == 12
    assert page.status_code == 200
    assert purge_page.status_code == 200
    assert snapshot(redis_client) == before


async def test_replay_requeues_exactly_the_filtered_events(
    make_console: Any, redis_client: redis.Redis
) -> None:
    ids = seed(redis_client, mixed_letters())
    exhausted = set(ids[8:])
    async with make_console() as console:
        preview = (
            await console.post_json("/api/replay", {"selection": {"reasons": ["exhausted"]}})
        ).json()["preview"]
        result = await console.post_json(
            "/api/replay",
            {"selection": {"reasons": ["exhausted"]}, "confirm": True, "as_of": preview["as_of"]},
        )
    operation = result.json()["operation"]
    assert operation["state"] == "done"
    assert (operation["selected"], operation["requeued"], operation["skipped"]) == (4, 4, 0)
    assert set(queued_ids(redis_client)) == exhausted
    assert {keys.text(i) for i in redis_client.hkeys(K.dead)} == set(ids) - exhausted
    assert int(redis_client.hget(K.stats, "replayed") or 0) == 4


async def test_replay_twice_requeues_each_event_once(
    make_console: Any, redis_client: redis.Redis
) -> None:
    ids = seed(redis_client, mixed_letters())
    body = {"selection": {"statuses": [422]}, "confirm": True}
    async with make_console() as console:
        first = (await console.post_json("/api/replay", body)).json()["operation"]
        second = (await console.post_json("/api/replay", body)).json()["operation"]
        chosen = await console.post_json("/api/replay", {"ids": ids[5:8], "confirm": True})
    assert first["requeued"] == 3
    assert second["selected"] == 0
    assert second["requeued"] == 0
    assert chosen.json()["operation"]["requeued"] == 0
    assert chosen.json()["operation"]["skipped"] == 3
    assert sorted(queued_ids(redis_client)) == sorted(ids[5:8])


async def test_confirmation_leaves_letters_that_died_after_the_dry_run(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, [Letter("before")])
    async with make_console() as console:
        preview = (await console.post_json("/api/replay", {"all": True})).json()["preview"]
        [late] = seed(redis_client, [Letter("after", dead_at=preview["as_of"] + 5)])
        done = await console.post_json(
            "/api/replay", {"all": True, "confirm": True, "as_of": preview["as_of"]}
        )
    assert done.json()["operation"]["requeued"] == 1
    assert [keys.text(i) for i in redis_client.hkeys(K.dead)] == [late]


async def test_replay_is_paced_like_the_cli(make_console: Any, redis_client: redis.Redis) -> None:
    seed(redis_client, [Letter(f"r{i}") for i in range(30)])
    async with make_console(ConsoleOptions(replay_rate=20.0)) as console:
        started = time.monotonic()
        result = await console.post_json("/api/replay", {"all": True, "confirm": True})
        operation = result.json()["operation"]
        while operation["state"] == "running":
            operation = (await console.get(f"/api/operations/{operation['id']}")).json()
    # DeadLetterStore.replay paces by the clock: 30 events at 20/s take 1.5 s.
    assert time.monotonic() - started >= 1.4
    assert operation["rate"] == 20.0
    assert operation["requeued"] == 30


async def test_purge_needs_confirmation(make_console: Any, redis_client: redis.Redis) -> None:
    ids = seed(redis_client, mixed_letters())
    before = snapshot(redis_client)
    async with make_console() as console:
        unconfirmed_page = await console.post_form("/purge", {"reason": "exhausted"})
        unconfirmed_api = await console.post_json("/api/purge", {"selection": {"statuses": [503]}})
        unscoped = await console.post_json("/api/purge", {"confirm": True})
        assert snapshot(redis_client) == before
        confirmed = await console.post_form("/purge", {"reason": "exhausted", "confirm": "yes"})
    assert unconfirmed_page.status_code == 400
    assert "Nothing was changed" in unconfirmed_page.text
    assert unconfirmed_api.json()["dry_run"] is True
    assert unscoped.status_code == 400
    assert confirmed.status_code == 303
    assert {keys.text(i) for i in redis_client.hkeys(K.dead)} == set(ids[:8])
    assert int(redis_client.hget(K.stats, "purged") or 0) == 4


async def test_emails_and_names_are_masked_until_revealed(
    make_console: Any, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    [dead_id] = seed(
        redis_client,
        [Letter("ord_p", email="jane.doe@example.com", name="Jane Doe", error="jane.doe@x.io?")],
    )
    async with make_console() as console:
        masked = await console.get(f"/api/dead-letters/{dead_id}")
        page = await console.get(f"/dead-letters/{dead_id}")
        listing = await console.get("/dead-letters")
        with caplog.at_level(logging.INFO, logger="ingest"):
            revealed = await console.post_json(f"/api/dead-letters/{dead_id}/reveal", None)
            revealed_page = await console.post_form(f"/dead-letters/{dead_id}/reveal", {})
    event = masked.json()["event"]
    assert event["email"] == "j***@example.com"
    assert event["name"] == "J*** D***"
    assert masked.json()["revealed"] is False
    for text in (masked.text, page.text, listing.text):
        assert "jane.doe@" not in text
        assert "Jane Doe" not in text
    assert revealed.json()["event"]["email"] == "jane.doe@example.com"
    assert "jane.doe@example.com" in revealed_page.text
    assert "Jane Doe" in revealed_page.text
    reveals = [
        r.ingest_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "ingest_event", None) == "personal data revealed in the console"
    ]
    assert len(reveals) == 2
    assert reveals[0]["dead_letter"] == dead_id


async def test_the_api_key_never_appears(make_console: Any, redis_client: redis.Redis) -> None:
    [dead_id] = seed(redis_client, mixed_letters())[:1]
    redis_client.hset(K.paused, "-", '{"status": 401, "error": "bad key", "since": "x"}')
    async with make_console() as console:
        answers = [
            await console.get(path)
            for path in (
                "/",
                "/dead-letters",
                f"/dead-letters/{dead_id}",
                "/replay?reason=rejected",
                "/paused",
                "/api/overview",
                "/api/dead-letters",
                f"/api/dead-letters/{dead_id}",
                "/api/paused",
                "/api/session",
                "/openapi.json",
            )
        ]
        answers.append(await console.post_json(f"/api/dead-letters/{dead_id}/reveal", None))
    for answer in answers:
        assert answer.status_code == 200, answer.request.url
        assert API_KEY not in answer.text
        assert "df_console_canary" not in answer.text


@pytest.mark.anyio
async def test_overview_shows_each_credentials_learned_send_rate(
    make_console: Any, redis_client: redis.Redis
) -> None:
    from ingest.ratelimit import SendRate, credential_id
    from ingest.scripts import BucketShape

    limiter = SendRate(K, credential_id(API_KEY, None), BucketShape(100, 0.1, 1, 10, 5, 60))
    limiter.acquire(redis_client, 1, now=time.time())
    limiter.store(redis_client, rate=480.0, hold_until=0.0, learner="{}")
    async with make_console() as console:
        overview = (await console.get("/api/overview")).json()
        page = await console.get("/")
    assert overview["send_rates"] == [
        {"credential": limiter.credential, "rate": 480.0, "hold_seconds": 0.0}
    ]
    assert limiter.credential in page.text
    assert API_KEY not in page.text


async def test_overview_reports_the_identity_and_its_figures(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, mixed_letters())
    redis_client.hincrby(K.stats, "enqueued", 5)
    redis_client.hincrby(K.stats, "delivered", 3)
    redis_client.rpush(K.queue, "q1", "q2")
    async with make_console() as console:
        overview = (await console.get("/api/overview")).json()
        page = await console.get("/")
    identity = overview["identity"]
    assert (identity["enqueued"], identity["delivered"], identity["dead"]) == (17, 3, 12)
    assert identity["queued"] == 2
    assert identity["lost"] == 0
    assert identity["holds"] is True
    assert overview["rates"]["delivered"] == 0.0
    assert "identity holds" in page.text


async def test_paused_websites_show_why_and_probe_now_asks_the_workers(
    make_console: Any, redis_client: redis.Redis
) -> None:
    site = "5f0c0ffee0c0ffee0c0ffee0"
    reason = (
        '{"status": 403, "error": "token lacks payments:write", "since": "2026-05-01T09:00:00Z",'
        ' "last_probe_at": "2026-05-01T09:05:00Z"}'
    )
    redis_client.hset(K.paused, site, reason)
    redis_client.rpush(K.parked(site), "a", "b")
    async with make_console() as console:
        listed = (await console.get("/api/paused")).json()
        page = await console.get("/paused")
        probe = await console.post_form("/paused/probe", {"website": site})
        after = await console.get(probe.headers["location"])
        not_paused = await console.post_json("/api/paused/probe", {"website": "nope"})
    assert listed == [
        {
            "website": site,
            "status": 403,
            "error": "token lacks payments:write",
            "since": "2026-05-01T09:00:00Z",
            "last_probe_at": "2026-05-01T09:05:00Z",
            "next_probe_after": "2026-05-01T09:05:30.000Z",
            "parked": 2,
            "probe_requested": False,
        }
    ]
    assert "token lacks payments:write" in page.text
    assert "Probe now" in page.text
    assert probe.status_code == 303
    assert redis_client.sismember(K.probe_requests, site)
    assert "probe requested" in after.text
    assert not_paused.status_code == 404


async def test_console_and_cli_select_the_same_letters(
    make_console: Any, redis_client: redis.Redis
) -> None:
    seed(redis_client, mixed_letters())
    store = DeadLetterStore(redis_client, QUEUE)
    selection = DeadLetterFilter(reasons=frozenset({"rejected"}), transaction_contains="B")
    async with make_console() as console:
        page = (await console.get("/api/dead-letters?reason=rejected&q=B")).json()
    assert transactions(page) == {d.transaction_id for d in store.iter(selection)}


async def test_redis_unreachable_answers_503_not_a_traceback(
    make_console: Any, settings: Any
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once it is closed
    down = settings.with_overrides(redis_url=f"redis://127.0.0.1:{port}/0")
    async with make_console(app_settings=down) as console:
        page = await console.get("/")
        api = await console.get("/api/dead-letters?reason=rejected")
    assert page.status_code == 503
    assert "Redis unreachable" in page.text
    assert api.status_code == 503
    assert api.json() == {"detail": "Redis cannot be reached; try again in a moment."}

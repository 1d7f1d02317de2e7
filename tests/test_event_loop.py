"""The worker runs on uvloop when its extra is installed, and on asyncio's loop without it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from ingest.worker import event_loop_factory


def test_worker_event_loop_is_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    factory = event_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_worker_falls_back_to_asyncio_loop_without_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert event_loop_factory() is None
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        assert runner.run(asyncio.sleep(0, "ran")) == "ran"

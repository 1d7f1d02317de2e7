"""Fixtures of the fault tests: a sandbox that knows the canary key, and a FaultStack.

The session's Redis (``redis_url``, emptied per test) serves most tests; the Redis restart
test builds its stack on ``restartable_redis`` through ``make_stack``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingest.sandbox import DEFAULT_WEBSITE_ID, DEFAULT_WEBSITE_KEY, SandboxConfig, SandboxServer

from .harness import FaultStack

# A website key that only these tests use: if it shows up in a log, a dead letter or an
# error message, the secret leaked. Registered in the sandbox config below.
CANARY_KEY = "df_canary_sandbox_SECRET123"


@pytest.fixture
def fault_sandbox() -> Iterator[SandboxServer]:
    """A started in-process sandbox (demo key and the canary key, no faults yet)."""
    config = SandboxConfig(
        website_keys={DEFAULT_WEBSITE_KEY: DEFAULT_WEBSITE_ID, CANARY_KEY: DEFAULT_WEBSITE_ID}
    )
    with SandboxServer(config) as server:
        yield server


MakeStack = Callable[..., FaultStack]


@pytest.fixture
def make_stack(fault_sandbox: SandboxServer, tmp_path: Path) -> Iterator[MakeStack]:
    """``make_stack(redis_url, **options)``: a FaultStack whose workers are stopped after."""
    stacks: list[FaultStack] = []

    def make(redis_url: str, **options: str) -> FaultStack:
        stack = FaultStack(redis_url, fault_sandbox, tmp_path, **options)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()


@pytest.fixture
def stack(make_stack: MakeStack, redis_url: str) -> FaultStack:
    """A FaultStack on the session's (emptied) Redis."""
    return make_stack(redis_url)

"""A local stand-in for the DataFast Payments API, for tests, benchmarks and ``ingest demo``.

A real HTTP server on loopback (aiohttp) with both endpoints, the API's auth, validation,
idempotency and error shape, plus injectable latency and faults and an admin API under
``/_sandbox``. Run it in-process (:class:`SandboxServer`, a background thread), as a child
process (:class:`SandboxProcess`, its own GIL, for benchmarks) or from the command line
(:func:`main`, ``python -m ingest.sandbox``).
"""

from .cli import main
from .config import (
    DEFAULT_ACCOUNT_TOKEN,
    DEFAULT_WEBSITE_ID,
    DEFAULT_WEBSITE_KEY,
    SandboxConfig,
    TokenGrant,
)
from .faults import FailSpec, Faults
from .server import SandboxHandle, SandboxProcess, SandboxServer
from .store import RecordView, StatsView

__all__ = [
    "DEFAULT_ACCOUNT_TOKEN",
    "DEFAULT_WEBSITE_ID",
    "DEFAULT_WEBSITE_KEY",
    "FailSpec",
    "Faults",
    "RecordView",
    "SandboxConfig",
    "SandboxHandle",
    "SandboxProcess",
    "SandboxServer",
    "StatsView",
    "TokenGrant",
    "main",
]

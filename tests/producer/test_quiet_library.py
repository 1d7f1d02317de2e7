"""Inside a host app the library is quiet: it logs through the standard library, so the
host's handlers and levels decide; it prints nothing by itself; and what it logs carries no
API key, email or name, whether or not anyone configured logging.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import redis

from ingest.models import validate_payment
from ingest.spool import encode_line

from .conftest import ingest_environment
from .fresh import run_fresh

pytestmark = pytest.mark.integration

KEY = "df_canary_quiet_Zx81"
EMAIL = "jane.canary@example.com"
NAME = "Jane Canaryfield"
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "jinja2", "aiohttp", "httpx", "rq")


def seed_spool(spool_dir: Path) -> None:
    """One spooled event carrying the email and name, and one corrupt line quoting all
    three, as a crashed process could leave them: the next flush logs about both."""
    spool_dir.mkdir(parents=True)
    good = encode_line(
        validate_payment(
            amount=5, currency="USD", transaction_id="spooled-1", email=EMAIL, name=NAME
        )
    )
    payload = f'{{"amount":"-1","currency":"USD","transaction_id":"{KEY} {EMAIL} {NAME}"}}'
    corrupt = f"{zlib.crc32(payload.encode()):08x} {payload}\n".encode()
    (spool_dir / "spool-1-1.jsonl").write_bytes(good + corrupt)


# Enqueue on a healthy Redis, which makes the producer flush the spool it found, and wait for
# that flush to finish (the quarantine file is written, then the spool file removed).
FLUSH_THE_SPOOL = f"""
import os, time
from ingest import enqueue_payment
with watchdog():
    r = enqueue_payment(amount=9, currency="usd", transaction_id="live-1",
                        email={EMAIL!r}, name={NAME!r})
deadline = time.monotonic() + 20
while os.path.exists(os.path.join(os.environ["INGEST_SPOOL_DIR"], "spool-1-1.jsonl")):
    assert time.monotonic() < deadline, "the spool was never flushed"
    time.sleep(0.02)
time.sleep(0.2)  # the flush thread logs its summary after removing the file
report(receipts=[receipt(r)])
"""


def test_library_prints_nothing_when_the_host_configured_no_logging(
    redis_url: str, tmp_path: Path
) -> None:
    seed_spool(tmp_path / "spool")
    env = ingest_environment(redis_url, tmp_path / "spool", api_key=KEY)
    run = run_fresh(FLUSH_THE_SPOOL, env, tmp_path)

    assert run.returncode == 0, run.explain()
    assert [r["status"] for r in run.receipts()] == ["queued"]
    assert run.stderr == ""
    assert [line for line in run.stdout.splitlines() if not line.startswith("{")] == []


def test_library_log_lines_reach_the_hosts_logging_config_redacted(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    seed_spool(tmp_path / "spool")
    env = ingest_environment(redis_url, tmp_path / "spool", api_key=KEY)
    host_setup = (
        "import logging\n"
        "logging.basicConfig(level=logging.DEBUG, format='HOST %(name)s %(levelname)s "
        "%(message)s')\n"
    )
    run = run_fresh(host_setup + FLUSH_THE_SPOOL, env, tmp_path)

    assert run.returncode == 0, run.explain()
    ours = [line for line in run.stderr.splitlines() if line.startswith("HOST ingest")]
    assert any("corrupt spool line quarantined" in line for line in ours), run.explain()
    assert any("spool flushed" in line and "queued=1" in line for line in ours), run.explain()
    for secret in (KEY, EMAIL, NAME):
        assert secret not in run.stderr
        assert secret not in run.stdout


def test_a_logger_used_directly_without_any_setup_prints_nothing(tmp_path: Path) -> None:
    code = f"""
from ingest.logs import get_logger
get_logger(component="producer").warning("refused {KEY}", email={EMAIL!r}, name={NAME!r})
get_logger().error("for {EMAIL}")
report(done=True)
"""
    run = run_fresh(code, {"PATH": "/usr/bin:/bin"}, tmp_path)

    assert run.returncode == 0, run.explain()
    assert run.stderr == ""
    assert run.reports == [{"done": True}]


def test_a_host_at_warning_level_sees_redacted_fields_and_free_text(tmp_path: Path) -> None:
    code = f"""
import logging
logging.basicConfig(format="%(name)s|%(levelname)s|%(message)s")
from ingest.logs import get_logger
get_logger(component="producer").warning(
    "refused {KEY}", email={EMAIL!r}, name={NAME!r}, api_message="for {EMAIL}")
get_logger().info("below the host's level")
"""
    run = run_fresh(code, {"PATH": "/usr/bin:/bin"}, tmp_path)

    assert run.returncode == 0, run.explain()
    (line,) = run.stderr.splitlines()
    assert line.startswith("ingest|WARNING|refused [redacted]")
    assert "email='[redacted]'" in line
    assert "name='[redacted]'" in line
    assert "component='producer'" in line
    for secret in (KEY, EMAIL, NAME):
        assert secret not in line


def test_importing_ingest_imports_no_web_framework_or_worker_dependency(
    tmp_path: Path,
) -> None:
    code = f"""
import sys
import ingest
report(loaded=sorted(m for m in {WEB_FRAMEWORKS!r} if m in sys.modules))
"""
    run = run_fresh(code, {"PATH": "/usr/bin:/bin"}, tmp_path)

    assert run.returncode == 0, run.explain()
    assert run.reports == [{"loaded": []}]

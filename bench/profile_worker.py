"""Where one worker process's CPU goes while draining at 50 ms: a py-spy profile as text.

    python bench/profile_worker.py [--events 10000] [--tree DIR] [--out FILE] [--top 25]
                                   [--env INGEST_NAME=VALUE ...]

Runs ``python -m ingest worker --burst`` of the checkout at ``--tree`` (default: this one)
under ``py-spy record`` on a filled queue and prints where the samples fell: by package and
by function, own time (self) and with callees (total). ``--gil`` keeps only samples holding
the GIL, so waits (which py-spy's idle detection misses here) are left out. py-spy must be
installed (``pip install py-spy``); it starts the worker as its own child, so no ptrace
permission beyond the default is needed.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``ingest`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import PROJECT_DIR, BenchEnv, enqueue_ours, make_payments, progress


def summarise(raw: str, top: int) -> str:
    """Self and total sample shares per function from py-spy's collapsed ("raw") stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        by_package[_package(stack.split(";")[-1])] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples (CPU only)", "", "self %  package"]
    lines += [f"{100 * n / samples:5.1f}  {p}" for p, n in by_package.most_common()]
    lines += ["", "self %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "total %  function (with callees)"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines)


def _package(frame: str) -> str:
    """Which package (or stdlib module) a frame's own time belongs to."""
    where = frame.partition(" (")[2]
    if "<frozen" in where:
        return "import machinery (start-up)"
    return where.split(":", 1)[0].split("/", 1)[0].removesuffix(".py") or "?"


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py:123)"; package dirs kept short.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "python3.11/", "/ingest/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def profile(env: BenchEnv, tree: Path, events: int, rate: int) -> str:
    env.fresh()
    enqueue_ours(env, make_payments(events))
    argv, child_env = env.ours_argv()
    child_env["PYTHONPATH"] = str(tree)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as out:
        raw_path = Path(out.name)
    started = time.monotonic()
    subprocess.run(
        [
            py_spy,
            "record",
            "--gil",
            "--nonblocking",
            "--format",
            "raw",
            "-r",
            str(rate),
            "-o",
            str(raw_path),
            "--",
            *argv,
        ],
        env=child_env,
        cwd=tree,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )
    progress(f"  {events:,} events in {time.monotonic() - started:.1f} s (under py-spy)")
    raw = raw_path.read_text()
    raw_path.unlink()
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/profile_worker.py", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--tree", type=Path, default=PROJECT_DIR, help="checkout to profile")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's stacks here")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an INGEST_* setting for the worker (repeatable), e.g. INGEST_CONCURRENCY=128",
    )
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.env)
    with BenchEnv(latency_ms=args.latency_ms) as env:
        env.worker_settings.update(settings)
        progress(f"profiling {args.tree} {settings or ''} ({os.cpu_count()} cores)")
        raw = profile(env, args.tree.resolve(), args.events, args.rate)
    if args.raw:
        args.raw.write_text(raw)
    text = summarise(raw, args.top)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

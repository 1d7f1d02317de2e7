"""What every benchmark here shares: the servers, the worker processes and the measurements.

One :class:`BenchEnv` owns an embedded ``redis-server`` (never the machine's 6379), the
sandbox API in its own process, a temporary directory for the workers' logs and every worker
process started; leaving it (also on Ctrl+C or SIGTERM) stops all of them and removes the
directory.

A drain (:func:`drain`) starts worker processes on a filled queue and measures, in the same
run and the same way for our worker and for stock RQ:

- ``drain_s``: from the first dequeue to the last event done, seen by polling Redis every
  20 ms (so interpreter start-up, which both pay, is left out); ``wall_s`` includes it;
- CPU seconds of the worker processes (``os.wait4``: their own rusage, children included);
- Redis commands (``INFO commandstats`` delta, summing ``calls``, minus the benchmark's own
  polling commands, which it counts).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from pydantic import SecretStr
from rich.console import Console

from ingest.embedded import RedisServer
from ingest.models import Payment, validate_payment
from ingest.producer import Producer
from ingest.sandbox import DEFAULT_WEBSITE_KEY, Faults, SandboxConfig, SandboxProcess
from ingest.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
PYTHON = sys.executable
OUR_QUEUE = "payments"
RQ_QUEUE = "baseline"
BASELINE_FUNCTION = "bench.baseline_job.post_payment"
POLL_INTERVAL = 0.02
_RQ_LAUNCHER = "import sys, bench.baseline_job; from rq.cli import main; sys.exit(main())"
MEMORY_POLL_EVERY = 5  # INFO memory on every 5th poll (100 ms)

console = Console(stderr=True, highlight=False)
_started = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, with the time since the benchmark started."""
    console.print(f"[dim]{time.monotonic() - _started:7.1f}s[/dim] {message}")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same unwinding as Ctrl+C so every cleanup runs."""


_interrupted = threading.Event()


def was_interrupted() -> bool:
    """True once Ctrl+C or SIGTERM arrived: any error after that is part of the unwinding
    (a terminal's Ctrl+C also stops redis-server and the sandbox, which share our group)."""
    return _interrupted.is_set()


def install_signal_handlers() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        _interrupted.set()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGHUP, handler)


# -- child processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if this benchmark dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


class Children:
    """Every worker process started, so that each one is stopped whatever happens."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path = PROJECT_DIR
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own process group: Ctrl+C reaches only the benchmark, which stops the
                # workers itself (and can then kill a whole group, horses included).
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.returncode is None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A forking worker's horse runs in its own process group: make sure none is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc)


def wait_with_rusage(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, float]:
    """Wait for ``proc`` (until the monotonic ``deadline``); its exit code and CPU seconds.

    ``os.wait4`` gives the child's own rusage including the children it reaped (a forking
    worker's horses), which ``resource.RUSAGE_CHILDREN`` would mix across all children.
    """
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {proc.pid} ({proc.args!r}) timed out")
        time.sleep(0.01)


# -- the environment ------------------------------------------------------------------------


class BenchEnv(contextlib.ExitStack):
    """Redis + sandbox + temp dir + worker processes, all stopped on exit."""

    def __init__(self, *, latency_ms: float, concurrency: int | None = None) -> None:
        super().__init__()
        self.initial_latency_ms = latency_ms
        self.latency_ms = latency_ms
        self.concurrency = concurrency or Settings.model_fields["concurrency"].default
        self.children = Children()
        # The checkout whose worker runs (bench/perf17.py compares two in one run); its
        # directory is the workers' working directory and first on their PYTHONPATH.
        self.tree = PROJECT_DIR
        # INGEST_* settings for our worker processes beyond the bench's own (perf17's
        # learned-rate drain sets INGEST_SEND_RATE_INITIAL here).
        self.worker_settings: dict[str, str] = {}
        self.redis_server: RedisServer
        self.sandbox: SandboxProcess
        self.tmp: Path
        self.r: redis.Redis

    def __enter__(self) -> BenchEnv:
        super().__enter__()
        try:
            self.tmp = Path(self.enter_context(tempfile.TemporaryDirectory(prefix="ingest-bench-")))
            progress("starting redis-server and the sandbox")
            self.redis_server = self.enter_context(RedisServer())
            self.sandbox = self.enter_context(
                SandboxProcess(SandboxConfig(faults=Faults(latency_ms=self.latency_ms)))
            )
            self.callback(self.children.stop_all)  # runs first: LIFO
            self.r = redis.Redis.from_url(self.redis_server.url, socket_timeout=60)
            self.callback(self.r.close)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    def settings(self, **overrides: Any) -> Settings:
        return Settings(
            redis_url=self.redis_url,
            api_url=self.sandbox.url,
            api_key=SecretStr(DEFAULT_WEBSITE_KEY),
            concurrency=self.concurrency,
            spool_dir=self.tmp / "spool",
            **overrides,
        )

    def set_latency(self, latency_ms: float) -> None:
        if latency_ms != self.latency_ms:
            self.sandbox.set_faults(latency_ms=latency_ms)
            self.latency_ms = latency_ms

    def fresh(self) -> None:
        """Empty Redis and the sandbox's records, so one run does not weigh on the next."""
        self.r.flushall()
        self.sandbox.reset()
        if self.latency_ms != self.initial_latency_ms:
            self.sandbox.set_faults(latency_ms=self.latency_ms)

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "RQ_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.tree), str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
        return env

    def ours_argv(self) -> tuple[list[str], dict[str, str]]:
        env = self.base_env()
        env.update(
            INGEST_REDIS_URL=self.redis_url,
            INGEST_API_URL=self.sandbox.url,
            INGEST_API_KEY=DEFAULT_WEBSITE_KEY,
            INGEST_QUEUE=OUR_QUEUE,
            INGEST_CONCURRENCY=str(self.concurrency),
            INGEST_SPOOL_DIR=str(self.tmp / "spool"),
        )
        env.update(self.worker_settings)
        return [PYTHON, "-m", "ingest", "worker", "--burst"], env

    def rq_argv(self, worker_class: str) -> tuple[list[str], dict[str, str]]:
        env = self.base_env()
        env.update(BENCH_API_URL=self.sandbox.url, BENCH_API_KEY=DEFAULT_WEBSITE_KEY)
        # `rq worker ...`, with the job module imported before the worker starts: a forking
        # worker's horses then inherit httpx instead of importing it for every job (the
        # generous set-up for the baseline; stock `rq worker` pays ~150 ms CPU a job more).
        argv = [
            PYTHON,
            "-c",
            _RQ_LAUNCHER,
            "worker",
            "--burst",
            "--quiet",
            "-w",
            worker_class,
            "--url",
            self.redis_url,
            "-P",
            str(PROJECT_DIR),
            RQ_QUEUE,
        ]
        return argv, env


# -- events -------------------------------------------------------------------------------


def make_payments(count: int, *, prefix: str | None = None) -> list[Payment]:
    """Realistic, distinct, valid payments (~300-byte wire bodies)."""
    prefix = prefix or uuid.uuid4().hex[:10]
    return [
        validate_payment(
            amount="29.99",
            currency="USD",
            transaction_id=f"pi_{prefix}_{i:07d}",
            datafast_visitor_id=str(uuid.uuid4()),
            email=f"customer{i}@example.com",
            name="Ada Lovelace",
            customer_id=f"cus_{i:08d}",
        )
        for i in range(count)
    ]


def enqueue_ours(env: BenchEnv, payments: Sequence[Payment], *, batch: int = 1000) -> None:
    # Our producer's own connection fails fast (50 ms); a bulk fill gets a patient one.
    connection = redis.Redis.from_url(env.redis_url, socket_timeout=60)
    try:
        producer = Producer(env.settings(queue=OUR_QUEUE), connection=connection, spool=False)
        for i in range(0, len(payments), batch):
            receipts = producer.enqueue_many(payments[i : i + batch])
            bad = [r for r in receipts if r.status != "queued"]
            if bad:
                raise RuntimeError(f"enqueue: {len(bad)} not queued, e.g. {bad[0]}")
    finally:
        connection.close()


def enqueue_rq(env: BenchEnv, bodies: Sequence[str], *, function: str = BASELINE_FUNCTION) -> None:
    from rq import Queue

    queue = Queue(RQ_QUEUE, connection=env.r)
    for i in range(0, len(bodies), 500):
        with env.r.pipeline() as pipe:
            queue.enqueue_many(
                [Queue.prepare_data(function, args=(b,) if b else ()) for b in bodies[i : i + 500]],
                pipeline=pipe,
            )
            pipe.execute()


# -- measurement ----------------------------------------------------------------------------


def total_calls(r: redis.Redis) -> int:
    stats: dict[str, dict[str, Any]] = r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def process_cpu(pid: int) -> float:
    """CPU seconds of a live process so far, its reaped children included (/proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), counted after the ")".
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all cores of this machine have spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


@dataclass(frozen=True, slots=True)
class Probe:
    """How to see a drain's progress: the queue list, and the keys whose sum is 'done'."""

    queue_key: str
    done: Callable[[redis.client.Pipeline], int]  # queues its commands, returns their count
    parse_done: Callable[[list[Any]], int]


def ours_probe(queue: str = OUR_QUEUE) -> Probe:
    stats_key = f"ingest:{queue}:stats"

    def done(pipe: redis.client.Pipeline) -> int:
        pipe.hmget(stats_key, ["delivered", "dead_lettered"])
        return 1

    def parse(results: list[Any]) -> int:
        return sum(int(v or 0) for v in results[0])

    return Probe(f"rq:queue:{queue}", done, parse)


def rq_probe(queue: str = RQ_QUEUE) -> Probe:
    def done(pipe: redis.client.Pipeline) -> int:
        pipe.zcard(f"rq:finished:{queue}")
        pipe.zcard(f"rq:failed:{queue}")
        return 2

    def parse(results: list[Any]) -> int:
        return int(results[0]) + int(results[1])

    return Probe(f"rq:queue:{queue}", done, parse)


class Monitor(threading.Thread):
    """Polls Redis every 20 ms: first dequeue, all done, peak memory; counts its commands."""

    def __init__(self, url: str, probe: Probe, total: int, *, start_len: int) -> None:
        super().__init__(daemon=True, name="bench-monitor")
        self.r = redis.Redis.from_url(url, socket_timeout=30)
        self.r.ping()  # connect (and CLIENT SETINFO) now, before the counted window
        self.probe = probe
        self.total = total
        self.start_len = start_len
        self.commands = 0
        self.first_dequeue: float | None = None
        self.all_done: float | None = None
        self.done_count = 0
        self.peak_memory = 0
        self.samples = 0
        self.pids: list[int] = []
        self.cpu_at_first_dequeue = 0.0
        self.others: dict[str, int] = {}  # name -> pid of a server whose CPU is tracked too
        self.others_cpu: dict[str, float] = {}
        self._stop_event = threading.Event()

    def poll(self) -> None:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.llen(self.probe.queue_key)
            n = 1 + self.probe.done(pipe)
            with_memory = self.samples % MEMORY_POLL_EVERY == 0
            if with_memory:
                pipe.info("memory")
                n += 1
            results = pipe.execute()
        self.commands += n
        self.samples += 1
        now = time.monotonic()
        if self.first_dequeue is None and int(results[0]) < self.start_len:
            self.first_dequeue = now
            self.cpu_at_first_dequeue = sum(process_cpu(pid) for pid in self.pids)
            self.others_cpu = {name: process_cpu(pid) for name, pid in self.others.items()}
            self.others_cpu["machine"] = machine_busy()
        self.done_count = self.probe.parse_done(results[1 : 1 + n - 1 - int(with_memory)])
        if self.all_done is None and self.done_count >= self.total:
            self.all_done = now
        if with_memory:
            self.peak_memory = max(self.peak_memory, int(results[-1]["used_memory"]))

    def run(self) -> None:
        while not self._stop_event.wait(POLL_INTERVAL):
            try:
                self.poll()
            except (redis.RedisError, OSError):
                return  # Redis stopped under us (Ctrl+C): the drain is being torn down

    def finish(self) -> None:
        self._stop_event.set()
        self.join()
        self.samples = 0  # force a memory sample in the last poll
        with contextlib.suppress(redis.RedisError, OSError):  # Redis gone: we are unwinding
            self.poll()
        now = {name: process_cpu(pid) for name, pid in self.others.items()}
        now["machine"] = machine_busy()
        self.others_cpu = {name: now[name] - self.others_cpu.get(name, now[name]) for name in now}
        with contextlib.suppress(redis.RedisError, OSError):
            self.r.close()


@dataclass(slots=True)
class DrainRun:
    system: str
    events: int
    processes: int
    latency_ms: float
    concurrency: int | None
    wall_s: float
    drain_s: float
    cpu_s: float
    startup_cpu_s: float  # CPU spent before the first dequeue (imports, registration)
    sandbox_cpu_s: float  # the sandbox's and redis-server's CPU from first dequeue to done
    redis_cpu_s: float
    machine_cpu_s: float  # every process on the machine, same window: shows the noise
    redis_calls: int
    done: int
    sandbox_requests: int
    peak_memory: int
    exit_codes: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.drain_s if self.drain_s > 0 else 0.0

    @property
    def rate_per_process(self) -> float:
        return self.rate / self.processes

    @property
    def wall_rate(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_event(self) -> float:
        return 1000 * self.cpu_s / self.events

    @property
    def steady_cpu_ms_per_event(self) -> float:
        """CPU per event from the first dequeue on: start-up, which both pay once, left out."""
        return 1000 * (self.cpu_s - self.startup_cpu_s) / self.events

    @property
    def calls_per_event(self) -> float:
        return self.redis_calls / self.events

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "events": self.events,
            "processes": self.processes,
            "latency_ms": self.latency_ms,
            "concurrency": self.concurrency,
            "wall_s": self.wall_s,
            "drain_s": self.drain_s,
            "cpu_s": self.cpu_s,
            "startup_cpu_s": self.startup_cpu_s,
            "sandbox_cpu_s": self.sandbox_cpu_s,
            "redis_cpu_s": self.redis_cpu_s,
            "sandbox_cpu_share": self.sandbox_cpu_s / self.drain_s if self.drain_s else 0.0,
            "redis_cpu_share": self.redis_cpu_s / self.drain_s if self.drain_s else 0.0,
            "machine_cpu_s": self.machine_cpu_s,
            "machine_cpu_share": self.machine_cpu_s / self.drain_s if self.drain_s else 0.0,
            "worker_cpu_share": (self.cpu_s - self.startup_cpu_s) / self.drain_s
            if self.drain_s
            else 0.0,
            "steady_cpu_ms_per_event": self.steady_cpu_ms_per_event,
            "redis_calls": self.redis_calls,
            "done": self.done,
            "sandbox_requests": self.sandbox_requests,
            "peak_memory": self.peak_memory,
            "exit_codes": self.exit_codes,
            "rate": self.rate,
            "rate_per_process": self.rate_per_process,
            "wall_rate": self.wall_rate,
            "cpu_ms_per_event": self.cpu_ms_per_event,
            "calls_per_event": self.calls_per_event,
        }


SYSTEMS = {
    "ours": "ours (IngestWorker)",
    "rq-simple": "RQ SimpleWorker",
    "rq-fork": "RQ Worker (forking)",
}
RQ_CLASSES = {"rq-simple": "rq.worker.SimpleWorker", "rq-fork": "rq.worker.Worker"}


def drain(
    env: BenchEnv,
    system: str,
    events: int,
    *,
    processes: int = 1,
    timeout: float | None = None,
    fill: bool = True,
) -> DrainRun:
    """Fill the queue with ``events`` (unless ``fill`` is False) and drain it with
    ``processes`` worker processes of ``system`` (``ours``, ``rq-simple``, ``rq-fork``)."""
    if fill:
        env.fresh()
        payments = make_payments(events)
        if system == "ours":
            enqueue_ours(env, payments)
        else:
            enqueue_rq(env, [p.wire_body() for p in payments])
    probe = ours_probe() if system == "ours" else rq_probe()
    start_len = int(env.r.llen(probe.queue_key))
    if start_len != events:
        raise RuntimeError(f"{start_len} queued, expected {events}")
    argv, child_env = env.ours_argv() if system == "ours" else env.rq_argv(RQ_CLASSES[system])
    if timeout is None:
        per_second = 5.0 if system != "ours" else 100.0
        timeout = 60 + events / per_second * max(1.0, env.latency_ms / 50)
    sandbox_before = int(env.sandbox.stats()["requests"])
    monitor = Monitor(env.redis_url, probe, events, start_len=start_len)
    before = total_calls(monitor.r)
    monitor.commands = 0
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    deadline = started + timeout
    codes: list[int] = []
    cpu = 0.0
    try:
        for i in range(processes):
            log = env.tmp / f"{system}-{os.getpid()}-{time.monotonic_ns()}-{i}.log"
            procs.append(env.children.spawn(argv, env=child_env, log=log, cwd=env.tree))
        monitor.pids = [p.pid for p in procs]
        monitor.others = {"sandbox": env.sandbox.pid or 0, "redis": env.redis_server.pid}
        monitor.start()  # a worker needs ~0.5 s to start: nothing is dequeued before this
        for proc in procs:
            code, seconds = wait_with_rusage(proc, deadline)
            codes.append(code)
            cpu += seconds
        ended = time.monotonic()
    finally:
        if monitor.ident is not None:  # started
            monitor.finish()
        for proc in procs:
            env.children.stop(proc)
    after = total_calls(env.r)
    # Our own commands: the polls, the INFO that took "before", and the INFO just now on
    # another connection is not counted in its own answer.
    calls = after - before - monitor.commands - 1
    if any(codes):
        logs = "\n".join(
            p.read_text(errors="replace")[-2000:] for p in env.tmp.glob(f"{system}-*.log")
        )
        raise RuntimeError(f"{system} worker exited with {codes}:\n{logs}")
    if monitor.done_count < events:
        raise RuntimeError(f"{system}: only {monitor.done_count} of {events} done")
    first = monitor.first_dequeue or started
    last = monitor.all_done or ended
    return DrainRun(
        system=system,
        events=events,
        processes=processes,
        latency_ms=env.latency_ms,
        concurrency=env.concurrency if system == "ours" else 1,
        wall_s=ended - started,
        drain_s=last - first,
        cpu_s=cpu,
        startup_cpu_s=monitor.cpu_at_first_dequeue,
        sandbox_cpu_s=monitor.others_cpu.get("sandbox", 0.0),
        redis_cpu_s=monitor.others_cpu.get("redis", 0.0),
        machine_cpu_s=monitor.others_cpu.get("machine", 0.0),
        redis_calls=calls,
        done=monitor.done_count,
        sandbox_requests=int(env.sandbox.stats()["requests"]) - sandbox_before,
        peak_memory=monitor.peak_memory,
        exit_codes=codes,
    )


def sandbox_ceiling(env: BenchEnv, *, seconds: float, connections: int) -> float:
    """The sandbox's own req/s at this latency, driven by one aiohttp client in this process."""
    from ingest.sandbox.measure import measure_ceiling

    rate = measure_ceiling(env.sandbox.url, seconds, connections)
    env.sandbox.reset()
    if env.latency_ms != env.initial_latency_ms:
        env.sandbox.set_faults(latency_ms=env.latency_ms)
    return rate


# -- summaries --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, digits: int = 0, unit: str = "") -> str:
        if self.n == 0:
            return "-"
        text = f"{self.median:,.{digits}f}{unit}"
        if self.n > 1:
            text += f" ({self.low:,.{digits}f}-{self.high:,.{digits}f})"
        return text

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def ratio(a: float, b: float) -> str:
    if b == 0 or a != a or b != b:
        return "-"
    r = a / b
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    t = time.monotonic()
    yield
    progress(f"{label} ({time.monotonic() - t:.1f}s)")

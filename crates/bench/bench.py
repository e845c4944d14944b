#!/usr/bin/env python3
"""`make bench`: load figures of the release user-service on PostgreSQL + Redis, beside
references measured in the same run on the same cores (the actix-web framework ceiling,
pgbench, raw argon2id), as ratios with targets. Writes bench-results/latest.md, the chart
bench-results/summary.svg and the flame graphs bench-results/flamegraph-{cached,uncached}-get.svg.

One release build serves the whole run: with the `profiling` feature of http-actix (inert
unless PROFILE_FLAMEGRAPH is set, which this program sets on the profiled instances only) and
limited debug information (CARGO_PROFILE_RELEASE_DEBUG=limited unless set: function names and
line tables, no types or variables; the code is the same), so that the flame graphs name
inlined functions by their full paths. The cached GET is measured twice: with the
service's in-process near-cache (its default) and on a second instance with
NEAR_CACHE_ENABLED=false, right after, on the same warm Redis entries.

Profiles are taken apart from the measured runs, so that sampling never touches a figure: an
instance of its own, started with PROFILE_FLAMEGRAPH, gets the cached GET's load (same Lua
script and connections) for BENCH_PROFILE_DURATION seconds and writes its flame graph when
stopped; the same for the uncached GET (CACHE_ENABLED=false). Its near-cache starts empty, so
the first request for each seeded user goes to Redis: with many users and a short profile,
that path shows in the cached GET's flame graph. latest.md lists each profile's top functions
by self time and the service's own functions by inclusive time (from last-run/*.folded).

The chart is drawn by crates/bench/chart.py with matplotlib, in a virtual environment made
once (pip, from PyPI) and kept between runs in BENCH_VENV; without it (no network), the run
still finishes and latest.md says why the chart is missing.

Needs PostgreSQL (trust auth) and Redis running, their clients (psql, pg_isready, pgbench,
redis-cli) and wrk (installed with apt-get when run as root); Python 3.11, standard library
only (matplotlib runs in its own interpreter). Redis is never flushed: every key carries a
prefix unique to this run and is deleted at the end, with the servers and databases this
program started or created (on an error, on Ctrl-C and on SIGTERM too).

Environment (defaults in brackets):
  BENCH_DURATION [10]        seconds per wrk/pgbench run ("10s" is accepted too)
  BENCH_CONNECTIONS [64]     wrk connections and pgbench clients
  BENCH_THREADS [2]          wrk threads and pgbench -j
  BENCH_BULK_CONNECTIONS [8] wrk connections for bulk eligibility (1000 ids a request)
  BENCH_USERS [10000]        seeded users (each with preferences and two devices)
  BENCH_WORKERS [nproc]      HTTP workers of the service and of the ceiling server
  BENCH_PG_HOST [127.0.0.1], BENCH_PG_PORT [5432], BENCH_PG_USER [postgres]
  BENCH_REDIS_URL [redis://127.0.0.1:6379]
  BENCH_AMQP_URL [amqp://guest:guest@127.0.0.1:5672/%2f]  RabbitMQ for the change events (a run
                             exchange with a consumer of its own; deleted at the end)
  BENCH_PROFILE_DURATION [5] seconds of load on each profiled instance
  BENCH_VENV [~/.cache/user-service-bench/venv-matplotlib-VERSION]  the chart's virtual
                             environment ($XDG_CACHE_HOME instead of ~/.cache when set)
  BENCH_RESULTS_DIR [bench-results]  where latest.md, a dated copy, the SVGs and last-run/ go
  CARGO [cargo], CARGO_TARGET_DIR [target]  the build, and where its binaries are found
Service variables this program does not set reach the service (PASSWORD_HASH_CONCURRENCY=1 make bench),
except NEAR_CACHE_ENABLED, PROFILE_FLAMEGRAPH and PROFILE_FOLDED, which it sets per instance.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

ROOT = Path(os.path.abspath(__file__)).parents[2]
LUA_DIR = ROOT / "crates" / "bench" / "lua"
SERVICE_DB = "user_service_bench"
PGBENCH_DB = "pgbench_bench"
SERVICE_KEY = "bench-service-key-0123456789"
NPROC = len(os.sched_getaffinity(0))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MATPLOTLIB = "3.11.2"  # the chart's library, pinned; a new pin makes a new virtual environment
CHART_SCRIPT = ROOT / "crates" / "bench" / "chart.py"
# Variables this program sets per instance: never inherited from its own environment, so that
# no measured instance is profiled or loses its near-cache by accident; and no instance takes
# backtraces, which a profiled one must not (a sample landing in one could deadlock it).
INSTANCE_VARIABLES = (
    *("RUST_LOG", "AMQP_URL", "NEAR_CACHE_ENABLED", "PROFILE_FLAMEGRAPH", "PROFILE_FOLDED"),
    *("RUST_BACKTRACE", "RUST_LIB_BACKTRACE"),
)


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Config:
    cargo: str
    duration: str  # seconds, as given without a trailing "s"
    connections: int
    threads: int
    bulk_connections: int
    users: int
    workers: int
    pg_host: str
    pg_port: str
    pg_user: str
    redis_url: str
    amqp_url: str
    profile_duration: int
    venv: Path
    results_dir: Path
    release_dir: Path

    @classmethod
    def from_env(cls, env: dict[str, str] = os.environ) -> Config:
        def get(name: str, default: str) -> str:
            return env.get(name) or default  # an empty value means the default, as ${X:-d}

        def number(name: str, default: int) -> int:
            value = get(name, str(default))
            if not value.isdigit():
                die(f"{name} must be a whole number, not {value!r}")
            return int(value)

        cache = Path(get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "user-service-bench"
        return cls(
            cargo=get("CARGO", "cargo"),
            duration=get("BENCH_DURATION", "10").removesuffix("s"),
            connections=number("BENCH_CONNECTIONS", 64),
            threads=number("BENCH_THREADS", 2),
            bulk_connections=number("BENCH_BULK_CONNECTIONS", 8),
            users=number("BENCH_USERS", 10000),
            workers=number("BENCH_WORKERS", NPROC),
            pg_host=get("BENCH_PG_HOST", "127.0.0.1"),
            pg_port=get("BENCH_PG_PORT", "5432"),
            pg_user=get("BENCH_PG_USER", "postgres"),
            redis_url=get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
            amqp_url=get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            profile_duration=number("BENCH_PROFILE_DURATION", 5),
            venv=Path(os.path.abspath(get("BENCH_VENV", str(cache / f"venv-matplotlib-{MATPLOTLIB}")))),
            results_dir=Path(os.path.abspath(get("BENCH_RESULTS_DIR", str(ROOT / "bench-results")))),
            # Where cargo puts the release binaries: CARGO_TARGET_DIR when set, relative to
            # the directory cargo runs in (ROOT), as cargo itself does.
            release_dir=ROOT / get("CARGO_TARGET_DIR", "target") / "release",
        )

    @property
    def work(self) -> Path:
        return self.results_dir / "last-run"  # wrk outputs, service logs, the ids file: kept for inspection

    @property
    def ids_file(self) -> Path:
        return self.work / "user-ids.txt"


# ---------------------------------------------------------------------------------------
# Small helpers: logging, errors, commands, HTTP


class BenchError(Exception):
    """A failure that ends the run: `bench: <message>`, the cleanup, exit status 1."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM: the run stops, cleans up and exits with status 130."""


def log(message: str) -> None:
    print(f"\n==> {message}", file=sys.stderr, flush=True)


def die(message: str) -> NoReturn:
    raise BenchError(message)


def run(command: list[str], *, what: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command to completion; a failure ends the bench (as `set -e` did)."""
    result = subprocess.run(command, check=False, **kwargs)
    if result.returncode != 0:
        die(what or f"{command[0]} failed (exit status {result.returncode})")
    return result


def output(command: list[str], **kwargs) -> str:
    """The standard output of a command whose failure is not an error ("" then)."""
    try:
        return subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True, **kwargs).stdout
    except OSError:
        return ""


def http_request(url: str, method: str = "GET", body: str | None = None, headers: dict | None = None):
    """One request on a fresh connection; raises OSError or HTTPException when nobody answers."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, parts.path or "/", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def answers(url: str) -> bool:
    """Whether url answers below 400 (what `curl -f` calls a success)."""
    try:
        return http_request(url)[0] < 400
    except (OSError, http.client.HTTPException):
        return False


def free_port() -> int:
    """A TCP port the servers can bind. Tried with a bind, as they will: a connect finds no
    listener on a port that an outgoing connection holds (or held: TIME_WAIT), where their
    bind then fails with "Address already in use"."""
    for _ in range(100):
        port = random.randint(20000, 49999)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Rust's and actix's bind
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    die("no free port found")


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, up to `timeout` seconds to exit, then SIGKILL. A process already reaped is never
    signalled (its pid may belong to someone else by now)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def memory_mib(pid: int, field: str) -> str:
    """VmRSS (current) or VmHWM (peak) of a process, in MiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name == field:
                    return f"{int(value.split()[0]) / 1024:.1f}"
    except OSError:
        pass
    return "n/a"


def as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# Tools, build, machine


def require_tools(cfg: Config) -> None:
    for tool in ("psql", "pg_isready", "pgbench", "redis-cli"):
        if not shutil.which(tool):
            die(f"{tool} is required (Debian: postgresql-client, redis-tools)")
    if not shutil.which("wrk"):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing wrk")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            quiet = {"env": env, "stdout": subprocess.DEVNULL}
            if subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, **quiet).returncode != 0:
                run(["apt-get", "update"], **quiet)
                run(["apt-get", "install", "-y", "wrk"], **quiet)
        else:
            die("wrk is required: sudo apt-get install wrk (or build https://github.com/wg/wrk)")
    ready = subprocess.run(["pg_isready", "-h", cfg.pg_host, "-p", cfg.pg_port], check=False, stdout=subprocess.DEVNULL)
    if ready.returncode != 0:
        die(f"PostgreSQL is not accepting connections on {cfg.pg_host}:{cfg.pg_port}")
    if output(["redis-cli", "-u", cfg.redis_url, "ping"]).strip() != "PONG":
        die(f"Redis does not answer at {cfg.redis_url}")


def build(cfg: Config) -> None:
    """One release build for the whole run: the `profiling` feature is inert without
    PROFILE_FLAMEGRAPH, and debug information leaves the code as it is. `limited` rather than
    `line-tables-only`: with the latter, inlined functions have short names without their
    paths (`get`, `call<…>`), which no table can attribute to a crate."""
    log("building in release with the profiling feature (lto=thin: several minutes on a small machine)")
    env = {"CARGO_PROFILE_RELEASE_DEBUG": "limited", **os.environ}  # a setting of the caller's wins
    command = [cfg.cargo, "build", "--release", "-p", "http-actix", "-p", "bench", "--features", "http-actix/profiling"]
    run(command, cwd=ROOT, env=env, what="the release build failed")


def chart_python(cfg: Config) -> tuple[Path | None, str]:
    """The Python of the chart's virtual environment, with matplotlib MATPLOTLIB: made once (pip,
    from PyPI) and kept in cfg.venv. (None, why) when it cannot be made: the run goes on
    without the chart."""
    python = cfg.venv / "bin" / "python"
    check = [str(python), "-c", f"import matplotlib, sys; sys.exit(matplotlib.__version__ != {MATPLOTLIB!r})"]
    if python.exists() and subprocess.run(check, check=False, capture_output=True).returncode == 0:
        return python, ""
    log(f"making the chart's virtual environment {cfg.venv} (matplotlib {MATPLOTLIB}; once)")
    shutil.rmtree(cfg.venv, ignore_errors=True)
    # Few retries and a short timeout: without a network, pip would otherwise retry for minutes.
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--retries", "1"]
    steps = [
        ([sys.executable, "-m", "venv", str(cfg.venv)], "python3 -m venv failed"),
        (
            [*pip, "--timeout", "30", f"matplotlib=={MATPLOTLIB}"],
            f"pip could not install matplotlib {MATPLOTLIB} from PyPI (no network?)",
        ),
    ]
    for command, failure in steps:
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as error:
            done, failure = None, f"{failure}: {error}"
        if done is None or done.returncode != 0:
            details = (done.stderr or done.stdout).strip().splitlines()[-1:] if done is not None else []
            shutil.rmtree(cfg.venv, ignore_errors=True)
            reason = f"{failure}{': ' + details[0] if details else ''}"
            print(f"    no chart this run: {reason}", file=sys.stderr)
            return None, reason
    return python, ""


def machine_description(cfg: Config) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.partition(": ")[2] for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    meminfo = Path("/proc/meminfo").read_text()
    memory_kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    wrk = " ".join(output(["wrk", "--version"], stderr=subprocess.STDOUT).partition("\n")[0].split(" ")[:2])
    postgres = output(psql(cfg, "postgres", "-Atc", "SHOW server_version"), env=QUIET_PSQL).split(" ")[0].strip()
    redis = redis_info(cfg, "redis_version")
    return "\n".join(
        [
            f"- CPU: {NPROC} cores (nproc), {model or 'unknown'}",
            f"- RAM: {memory_kib / 1048576:.1f} GiB; kernel {os.uname().release}",
            f"- Load average when the run started: {load}",
            f"- {wrk}; {'PostgreSQL ' + postgres if postgres else ''}; {'Redis ' + redis if redis else ''}",
        ]
    )


# ---------------------------------------------------------------------------------------
# PostgreSQL, Redis, CPU accounting


def psql(cfg: Config, database: str, *args: str) -> list[str]:
    server = ["-h", cfg.pg_host, "-p", cfg.pg_port, "-U", cfg.pg_user]
    return ["psql", *server, "-d", database, "-v", "ON_ERROR_STOP=1", "-q", *args]


def pgbench(cfg: Config) -> list[str]:
    return ["pgbench", "-h", cfg.pg_host, "-p", cfg.pg_port, "-U", cfg.pg_user]


# For statements on the postgres database: without the NOTICE of DROP DATABASE IF EXISTS on
# a missing database.
QUIET_PSQL = {**os.environ, "PGOPTIONS": "-c client_min_messages=warning"}


def recreate_database(cfg: Config, name: str) -> None:
    run(
        psql(cfg, "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", "-c", f"CREATE DATABASE {name}"),
        env=QUIET_PSQL,
    )


def redis_info(cfg: Config, field: str) -> str:
    for line in output(["redis-cli", "-u", cfg.redis_url, "info", "server"]).splitlines():
        name, _, value = line.strip().partition(":")
        if name == field:
            return value
    return ""


def redis_keys(cfg: Config, pattern: str) -> list[str]:
    return output(["redis-cli", "-u", cfg.redis_url, "--scan", "--pattern", pattern]).splitlines()


def local_redis_pid(cfg: Config) -> int | None:
    """The local redis-server's pid, or None when Redis runs elsewhere."""
    pid = redis_info(cfg, "process_id")
    try:
        if pid and Path(f"/proc/{pid}/comm").read_text().startswith("redis-server"):
            return int(pid)
    except OSError:
        pass
    return None


# CPU accounting, in clock ticks: a process's user + system time; the sum over every local
# PostgreSQL process, reaped children included (a backend that exits, such as pgbench's,
# moves its time to the postmaster's); the whole machine's total and idle time (the first
# line of /proc/stat; guest time is already in user time).


def stat_fields(pid: int | str) -> tuple[str, list[str]]:
    """The command name of a process and its /proc/PID/stat fields after it (from the state)."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def process_ticks(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        fields = stat_fields(pid)[1]
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def postgres_ticks() -> int:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name, fields = stat_fields(pid)
        except OSError:
            continue  # exited meanwhile
        if name == "postgres":
            total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total


def machine_ticks() -> tuple[int, int]:
    """(total, idle + iowait) of the whole machine."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    return sum(fields), fields[3] + fields[4]


@dataclass
class CpuSnapshot:
    server: int
    redis: int
    postgres: int
    total: int
    idle: int


def per_request(ticks: int, requests: int) -> str:
    """Microseconds of CPU per request."""
    return f"{ticks / CLOCK_TICKS * 1e6 / requests:.0f}" if requests > 0 else "n/a"


# ---------------------------------------------------------------------------------------
# Parsing the load generators' reports


def wrk_ms(value: str) -> float:
    """A wrk duration ("812.00us", "2.05ms", "1.02s", "1.50m") in milliseconds."""
    if value.endswith("us"):
        return float(value[:-2]) / 1000
    if value.endswith("ms"):
        return float(value[:-2])
    if value.endswith("s"):
        return float(value[:-1]) * 1000
    if value.endswith("m"):
        return float(value[:-1]) * 60000
    if value.endswith("h"):
        return float(value[:-1]) * 3600000
    return float(value)


def parse_wrk(text: str) -> tuple[str, str, str, int, int]:
    """(requests/s, p50 ms, p99 ms, errors, requests) from a wrk --latency report. Errors are
    wrk's "Non-2xx or 3xx responses" (status ≥ 400; no route here answers 3xx) plus every
    socket error (connect, read, write, timeout)."""
    rps = p50 = p99 = 0.0
    errors = requests = 0
    distribution = False
    for line in text.splitlines():
        fields = line.split()
        if "Latency Distribution" in line:
            distribution = True
        if distribution and fields[:1] == ["50%"]:
            p50 = wrk_ms(fields[1])
        if distribution and fields[:1] == ["99%"]:
            p99 = wrk_ms(fields[1])
        if " requests in " in line:
            requests = int(fields[0])
        if line.startswith("Requests/sec:"):
            rps = float(fields[1])
        if "Non-2xx or 3xx" in line:
            errors += int(fields[-1])
        if "Socket errors:" in line:
            errors += sum(int(field.rstrip(",")) for field in fields[2:] if re.fullmatch(r"[0-9]+,?", field))
    return f"{rps:.1f}", f"{p50:.3f}", f"{p99:.3f}", errors, requests


def parse_pgbench(text: str) -> tuple[str, int, int, str]:
    """(tps, transactions, failed transactions, average latency ms) from a pgbench report."""
    tps = average = 0.0
    done = failed = 0
    for line in text.splitlines():
        fields = line.split()
        if line.startswith("tps = "):
            tps = float(fields[2])
        if line.startswith("number of transactions actually processed:"):
            done = int(fields[-1].split("/")[0])
        if line.startswith("number of failed transactions:"):
            failed = int(fields[4])
        if line.startswith("latency average = "):
            average = float(fields[3])
    return f"{tps:.1f}", done, failed, f"{average:.3f}"


# ---------------------------------------------------------------------------------------
# CPU profiles: the folded stacks of a profiled instance ("thread;outermost;…;innermost count")

# The service's own crates: a function is its own when its path, or the type it is implemented
# for (`<http_actix::X as Trait>::f`), starts with one of these.
OWN_CRATES = ("http_actix::", "domain::", "adapters_", "user_service::")
PROFILE_ROWS = 15  # functions listed per table


@dataclass
class Profile:
    """One profiled instance's samples, by function, most first."""

    samples: int
    threads: list[tuple[str, int]]  # thread names (digits as N) by samples
    self_time: list[tuple[str, int]]  # functions by samples on top of the stack
    own_inclusive: list[tuple[str, int]]  # the service's own functions by samples anywhere on the stack


def function_name(frame: str) -> str:
    """A frame's function, without the hash of a legacy symbol and without the closure segments
    of closures and async bodies, which count as the function that holds them."""
    name = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    return re.sub(r"(::\{\{closure\}\}|::\{closure#\d+\})+$", "", name)


def is_own(function: str) -> bool:
    return re.sub(r"^[<&*]+(mut |const |dyn )?", "", function).startswith(OWN_CRATES)


def is_primitive(function: str) -> bool:
    """A C function (libc's system calls, malloc, memcpy) or one of Rust's standard library:
    named in the self-time table with the first caller that is neither."""
    return "::" not in function or re.sub(r"^[<&*]+(mut |const |dyn )?", "", function).startswith(
        ("core::", "alloc::", "std::", "__rustc::")
    )


def parse_folded(text: str) -> Profile:
    """Self time counts the innermost function of each sample (an inlined one when the debug
    information names it); a C or standard library function is named with its first caller
    that is neither ("__libc_send ← mio::…::write"). Inclusive time counts each function once
    per sample it appears in."""
    samples = 0
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        functions = [function_name(frame) for frame in frames]
        samples += int(count)
        threads[re.sub(r"[0-9]+", "N", thread)] += int(count)
        if functions:
            leaf = functions[-1]
            caller = next((function for function in reversed(functions) if not is_primitive(function)), leaf)
            leaves[leaf if caller == leaf else f"{leaf} ← {caller}"] += int(count)
        for function in set(filter(is_own, functions)):
            own[function] += int(count)
    return Profile(samples, threads.most_common(), leaves.most_common(), own.most_common())


def percent(count: int, total: int) -> float:
    return 100 * count / total if total else 0.0


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class Op:
    """One measured operation: figures as they are printed in the report."""

    connections: str
    rps: str
    p50: str
    p99: str
    errors: int
    requests: int
    peak_rss: str  # MiB
    client_cpu: float  # seconds of wrk's or pgbench's user + system time
    cpu_split: str = ""  # CPU % server / client / Redis / PostgreSQL / other / idle
    cpu_per_request: str = ""  # server, µs
    pg_cpu_per_request: str = ""  # PostgreSQL, µs
    other_cpu: int = 0  # % taken by processes outside the benchmark


BENCH_CATEGORY = "bench-digest"  # created by Bench.seed, chosen by every 4th user in SEED_SQL
SEED_SQL = """
BEGIN;
INSERT INTO users (id, name, email, phone, password_hash, created_at, updated_at)
SELECT gen_random_uuid(), 'Bench User ' || n, 'bench-' || n || '@bench.example.com',
       '+1555' || lpad(n::text, 7, '0'),
       (SELECT password_hash FROM users WHERE id = :'seed'),
       now() - n * interval '1 second', now() - n * interval '1 second'
FROM generate_series(1, :users) AS n;
INSERT INTO notification_preferences
       (user_id, email_enabled, push_enabled, quiet_hours_start, quiet_hours_end, timezone, updated_at)
SELECT id, true, true,
       CASE WHEN n % 3 = 0 THEN time '22:00' END, CASE WHEN n % 3 = 0 THEN time '07:00' END,
       CASE WHEN n % 3 = 0 THEN 'Europe/Paris' ELSE 'UTC' END, now()
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM users WHERE id <> :'seed') AS seeded;
-- token_digest is a generated column.
INSERT INTO devices (id, user_id, token, platform, active, created_at, updated_at, last_seen_at)
SELECT gen_random_uuid(), u.id, 'bench-token-' || u.id || '-' || d,
       CASE d WHEN 1 THEN 'android' ELSE 'ios' END, true, now(), now(), now() - d * interval '1 minute'
FROM users AS u CROSS JOIN generate_series(1, 2) AS d
WHERE u.id <> :'seed';
-- Every fourth user chose push in the bench category (its default is off).
INSERT INTO category_choices (user_id, category_key, email, push, updated_at)
SELECT id, 'bench-digest', NULL, true, now()
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM users WHERE id <> :'seed') AS seeded
WHERE n % 4 = 0;
COMMIT;
ANALYZE;
"""


class Bench:
    """The state of one run: the processes it started, its prefix, and the figures so far."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run_id = f"{int(time.time())}-{random.randrange(32768)}{random.randrange(32768)}"
        self.cache_prefix = f"ubench-{self.run_id}"  # the uncached instance uses "<prefix>-nocache"
        self.secret_key = secrets.token_hex(32)
        self.processes: list[subprocess.Popen] = []  # servers and load generators, stopped by cleanup()
        self.redis_pid: int | None = None
        self.service: subprocess.Popen | None = None
        self.service_url = ""
        self.machine = ""
        self.body_bytes = 0
        self.ops: dict[str, Op] = {}
        self.ready_ms: dict[str, int] = {}  # per instance ("cached", "uncached")
        self.idle_rss: dict[str, str] = {}
        self.ceiling_rps = ""  # mean of the ceiling runs so far
        self.argon2_rates: list[str] = []
        self.pgbench_tps: dict[str, str] = {}  # "S", "N"
        self.exchange = f"user.events.{self.cache_prefix}"  # the run's own exchange, bound by the sink
        self.sink: subprocess.Popen | None = None
        self.sink_received = ""
        self.relay_rate = ""  # events/s published and confirmed from a backlog
        self.relay_seconds = ""
        self.profiles: dict[str, Profile] = {}  # "cached-get", "uncached-get"
        self.profile_notes: dict[str, str] = {}  # why a profile is missing
        self.chart_python: Path | None = None
        self.chart_note = "the chart was not drawn"  # why bench-results/summary.svg is missing

    # --- processes -----------------------------------------------------------------------

    def start(self, command: list[str], log_path: Path, **kwargs) -> subprocess.Popen:
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, **kwargs)
        self.processes.append(process)
        return process

    def wait_ready(self, process: subprocess.Popen, url: str, what: str, log_path: Path, started: float) -> None:
        """Polls url every 5 ms until it answers; the process exiting, or 60 s, end the run."""
        while not answers(url):
            if process.poll() is not None:
                die(f"the {what} exited; see {log_path}")
            if time.monotonic() - started > 60:
                die(f"the {what} was not ready within 60 s")
            time.sleep(0.005)

    def start_service(
        self,
        name: str,
        cache_enabled: bool,
        prefix: str,
        events: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """Starts the release service on a free port, with the variables of `extra_env` too; notes
        its time to ready (from process start to the first 200 of /health/ready) and VmRSS right
        after. Runs in the work directory so that no .env file of the checkout is read."""
        cfg = self.cfg
        port = free_port()
        env = {key: value for key, value in os.environ.items() if key not in INSTANCE_VARIABLES}
        if events:
            env.update({"AMQP_URL": cfg.amqp_url, "AMQP_EXCHANGE": self.exchange})
        env.update(
            {
                "PORT": str(port),
                "HOST": "127.0.0.1",
                "WORKERS": str(cfg.workers),
                "DATABASE_URL": f"postgres://{cfg.pg_user}@{cfg.pg_host}:{cfg.pg_port}/{SERVICE_DB}",
                "REDIS_URL": cfg.redis_url,
                "CACHE_KEY_PREFIX": prefix,
                "CACHE_ENABLED": "true" if cache_enabled else "false",
                "CACHE_TTL": "3600",
                "SECRET_KEY": self.secret_key,
                "SERVICE_API_KEYS": SERVICE_KEY,
                "RATE_LIMIT_PER_ADDRESS": "100000000",
                "LOG_LEVEL": "warn",
                "LOG_FORMAT": "json",
                **(extra_env or {}),
            }
        )
        log_path = cfg.work / f"service-{name}.log"
        started = time.monotonic()
        self.service = self.start([str(cfg.release_dir / "user-service")], log_path, cwd=cfg.work, env=env)
        self.service_url = f"http://127.0.0.1:{port}"
        self.wait_ready(self.service, f"{self.service_url}/health/ready", f"{name} service", log_path, started)
        self.ready_ms[name] = int((time.monotonic() - started) * 1000)
        self.idle_rss[name] = memory_mib(self.service.pid, "VmRSS")
        ready_ms, idle_rss = self.ready_ms[name], self.idle_rss[name]
        log(f"{name} service ready on {self.service_url} in {ready_ms} ms, idle RSS {idle_rss} MiB")

    def start_sink(self) -> None:
        """The run's consumer of change events (crates/bench/src/bin/event-sink.rs): a queue bound
        to the run's exchange, so that published events are routed and stored as for a real
        consumer. It stops when its standard input closes."""
        log_path = self.cfg.work / "event-sink.log"
        with open(log_path, "w") as log_file:
            command = [str(self.cfg.release_dir / "event-sink"), self.cfg.amqp_url, self.exchange]
            self.sink = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT)
        self.processes.append(self.sink)
        deadline = time.monotonic() + 15
        while "ready" not in log_path.read_text(errors="replace"):
            if self.sink.poll() is not None or time.monotonic() > deadline:
                die(f"the event sink did not bind its queue (is RabbitMQ at BENCH_AMQP_URL up?); see {log_path}")
            time.sleep(0.05)

    def stop_sink(self) -> None:
        if self.sink is None or self.sink.stdin is None:
            return
        self.sink.stdin.close()
        try:
            self.sink.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_process(self.sink)
        found = re.search(r"received (\d+)", (self.cfg.work / "event-sink.log").read_text(errors="replace"))
        self.sink_received = found[1] if found else "n/a"

    def bench_relay(self, events: int = 50_000) -> None:
        """Relay throughput: a backlog of `events` change events (as the outbox holds them while a
        broker is away), then an instance with the broker: events published and confirmed per
        second, from the instance being ready to the last one marked published."""
        cfg = self.cfg
        log(f"relay: a backlog of {events} events, then an instance publishing them")
        data = '{"email":false,"push":true,"quiet_hours_start":"22:00","quiet_hours_end":"07:00","timezone":"Europe/Paris"}'
        insert = (
            "INSERT INTO outbox_events (id, subject, sequence, event_type, recorded_at, data) "
            f"SELECT gen_random_uuid(), 'bench-relay-' || (n % 1000), n / 1000 + 1, 'user.preferences.changed', "
            f"now(), '{data}' FROM generate_series(0, {events - 1}) AS n"
        )
        run(psql(cfg, SERVICE_DB, "-qc", insert), env=QUIET_PSQL)
        pending = psql(cfg, SERVICE_DB, "-Atc", "SELECT count(*) FROM outbox_events WHERE published_at IS NULL")
        self.start_service("relay", False, f"{self.cache_prefix}-relay", events=True)
        started = time.monotonic()
        left = events
        while left > 0:
            if time.monotonic() - started > 120:
                die(f"the relay left {left} events unpublished after 120 s")
            time.sleep(0.05)
            left = int(run(pending, stdout=subprocess.PIPE, text=True, env=QUIET_PSQL).stdout.strip() or "0")
        # From the process start: the relay may begin before the instance answers /health/ready.
        elapsed = time.monotonic() - started + self.ready_ms["relay"] / 1000
        self.relay_seconds = f"{elapsed:.2f}"
        self.relay_rate = f"{events / elapsed:.0f}"
        print(f"    relay                  {self.relay_rate:>10} events/s ({events} in {elapsed:.2f} s)", file=sys.stderr)
        stop_process(self.service)

    def cleanup(self) -> None:
        """Stops every server and load generator started, drops the databases and deletes the
        Redis keys under this run's prefix. Signals are ignored meanwhile so that it finishes."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.processes:
            log(f"cleaning up: servers, databases, Redis keys ({self.cache_prefix}*)")
        for process in self.processes:
            stop_process(process)
        for database in (SERVICE_DB, PGBENCH_DB):
            drop = psql(self.cfg, "postgres", "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            subprocess.run(drop, check=False, env=QUIET_PSQL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        keys = redis_keys(self.cfg, f"{self.cache_prefix}*")
        for start in range(0, len(keys), 500):
            output(["redis-cli", "-u", self.cfg.redis_url, "DEL", *keys[start : start + 500]])

    # --- data ----------------------------------------------------------------------------

    def seed(self) -> None:
        """One user through the API (a real argon2id hash), then BENCH_USERS users copying that
        hash, each with preferences (every third with quiet hours in Paris) and two devices whose
        tokens are bench-token-{id}-1 and -2. Writes their ids to the ids file."""
        cfg = self.cfg
        body = '{"name":"Bench Seed","email":"seed@bench.example.com","password":"StrongPass123!"}'
        headers = {"Content-Type": "application/json", "X-Service-Key": SERVICE_KEY}
        status, answer = http_request(f"{self.service_url}/api/v1/users", "POST", body, headers)
        seed_id = re.search(r'"id":"([0-9a-f-]*)"', answer.decode(errors="replace"))
        if status >= 400 or not seed_id or not seed_id[1]:
            die(f"registration of the seed user answered: {status} {answer.decode(errors='replace')}")
        category = f'{{"key":"{BENCH_CATEGORY}","name":"Bench digest","default":{{"email":true,"push":false}}}}'
        status, answer = http_request(f"{self.service_url}/api/v1/categories", "POST", category, headers)
        if status != 201:
            die(f"creating the bench category answered: {status} {answer.decode(errors='replace')}")
        log(f"seeding {cfg.users} users with preferences, 2 devices and a category choice (every 4th) each")
        run(psql(cfg, SERVICE_DB, "-v", f"users={cfg.users}", "-v", f"seed={seed_id[1]}"), input=SEED_SQL, text=True)
        select = psql(cfg, SERVICE_DB, "-Atc", "SELECT id FROM users WHERE email LIKE 'bench-%' ORDER BY id")
        ids = run(select, stdout=subprocess.PIPE, text=True).stdout.splitlines()
        cfg.ids_file.write_text("".join(f"{user_id}\n" for user_id in ids))
        if len(ids) != cfg.users:
            die(f"expected {cfg.users} seeded ids in {cfg.ids_file}")

    def warm_cache(self, count_entries: bool = True) -> None:
        """One GET of every seeded user, 16 at a time, so that the cached runs only hit; then the
        size of one answer, the body the ceiling server returns. Each thread keeps its connection
        open, as curl --parallel does: 10,000 closed connections would leave as many local ports
        in TIME_WAIT."""
        url = urlsplit(self.service_url)
        headers = {"X-Service-Key": SERVICE_KEY}
        paths = [f"/api/v1/users/{user_id}" for user_id in self.cfg.ids_file.read_text().split()]
        connections = threading.local()

        def get(path: str) -> int:
            for attempt in range(2):  # once more on a new connection if the server closed this one
                if not hasattr(connections, "current") or attempt:
                    connections.current = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
                try:
                    connections.current.request("GET", path, headers=headers)
                    response = connections.current.getresponse()
                    response.read()
                    return response.status
                except (OSError, http.client.HTTPException):
                    connections.current.close()
            return 0

        pool = ThreadPoolExecutor(max_workers=16)
        try:
            statuses = list(pool.map(get, paths))
        finally:
            pool.shutdown(cancel_futures=True)  # at once on Ctrl-C
        if not all(0 < status < 400 for status in statuses):
            die("warming the cache failed")
        if count_entries:
            # Any format version: the service names it in its keys ({prefix}:{version}:user:{id}).
            entries = len(redis_keys(self.cfg, f"{self.cache_prefix}:*:user:*"))
            log(f"cache warmed: {entries} entries under {self.cache_prefix}")
        status, body = http_request(f"{self.service_url}{paths[0]}", headers=headers)  # a cache hit now
        if status >= 400:
            die(f"GET {paths[0]} answered {status}")
        self.body_bytes = len(body)

    # --- load and CPU ----------------------------------------------------------------------

    def start_wrk(
        self,
        name: str,
        script: str,
        url: str,
        connections: int,
        threads: int,
        extra_env: dict[str, str] | None = None,
        duration: str | None = None,
    ) -> subprocess.Popen:
        """wrk --latency into wrk-NAME.txt for `duration` seconds (BENCH_DURATION by default; the
        Lua scripts read the ids, the key and a run tag from the environment, and what
        `extra_env` adds)."""
        cfg = self.cfg
        env = {
            **os.environ,
            **(extra_env or {}),
            "BENCH_IDS": str(cfg.ids_file),
            "BENCH_SERVICE_KEY": SERVICE_KEY,
            "BENCH_LUA_DIR": str(LUA_DIR),
            "BENCH_RUN": f"{name}-{self.run_id.rpartition('-')[2]}",
        }
        options = f"--latency -t {threads} -c {connections} -d {duration or cfg.duration}s --timeout 10s".split()
        command = ["wrk", *options, "-s", str(LUA_DIR / script), url]
        return self.start(command, cfg.work / f"wrk-{name}.txt", env=env)

    def finish_client(self, name: str, process: subprocess.Popen, report: Path) -> float:
        """Waits for wrk or pgbench; writes its CPU time ("user system" seconds, as bash's `time`
        did) to client-NAME.cpu and returns their sum."""
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        (self.cfg.work / f"client-{name}.cpu").write_text(f"{usage.ru_utime:.3f} {usage.ru_stime:.3f}\n")
        if process.returncode != 0:
            die(f"{Path(process.args[0]).name} failed; see {report}")
        return round(usage.ru_utime, 3) + round(usage.ru_stime, 3)

    def run_wrk(
        self,
        name: str,
        script: str,
        url: str,
        connections: int,
        threads: int,
        extra_env: dict[str, str] | None = None,
        duration: str | None = None,
    ) -> float:
        process = self.start_wrk(name, script, url, connections, threads, extra_env, duration)
        return self.finish_client(name, process, self.cfg.work / f"wrk-{name}.txt")

    def record(self, name: str, connections: int, pid: int, client_cpu: float) -> None:
        """Parses wrk-NAME.txt and notes the server's peak RSS so far."""
        rps, p50, p99, errors, requests = parse_wrk((self.cfg.work / f"wrk-{name}.txt").read_text(errors="replace"))
        peak = memory_mib(pid, "VmHWM")
        self.ops[name] = Op(str(connections), rps, p50, p99, errors, requests, peak, client_cpu)
        print(
            f"    {name:<22} {rps:>10} req/s  p50 {p50:>8} ms  p99 {p99:>8} ms  errors {errors}  peak RSS {peak} MiB",
            file=sys.stderr,
        )

    def measure_begin(self, pid: int | None) -> CpuSnapshot:
        """The CPU counters before a run (pid None when no server is measured)."""
        return CpuSnapshot(process_ticks(pid), process_ticks(self.redis_pid), postgres_ticks(), *machine_ticks())

    def measure_end(self, before: CpuSnapshot, pid: int | None, *names: str) -> None:
        """How the machine's CPU was shared during the run, as percentages "server / client (wrk
        or pgbench: every NAME's run) / Redis / PostgreSQL / other / idle"; and the CPU time of
        the server and of PostgreSQL per request (µs, over every NAME's requests). Stored under
        the first NAME."""
        server = process_ticks(pid) - before.server
        redis = process_ticks(self.redis_pid) - before.redis
        postgres = postgres_ticks() - before.postgres
        total, idle = machine_ticks()
        total, idle = max(total - before.total, 1), idle - before.idle
        client = sum(self.ops[name].client_cpu for name in names) * CLOCK_TICKS
        requests = sum(self.ops[name].requests for name in names)
        other = max(total - idle - server - client - redis - postgres, 0)
        shares = [100 * ticks / total for ticks in (server, client, redis, postgres, other, idle)]
        op = self.ops[names[0]]
        op.cpu_split = " / ".join(f"{share:.0f}" for share in shares)
        op.other_cpu = int(f"{shares[4]:.0f}")
        op.cpu_per_request = "–" if pid is None else per_request(server, requests)
        op.pg_cpu_per_request = per_request(postgres, requests)
        print(
            f"    {names[0]:<22} CPU % server / client / Redis / PostgreSQL / other / idle: {op.cpu_split}; "
            f"µs per request: server {op.cpu_per_request}, PostgreSQL {op.pg_cpu_per_request}",
            file=sys.stderr,
        )

    # --- measured operations -----------------------------------------------------------------

    def bench(
        self,
        name: str,
        script: str,
        connections: int,
        threads: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """One wrk run of a Lua script against the current service."""
        threads = threads or self.cfg.threads
        log(f"{name}: {connections} connections, {threads} threads, {self.cfg.duration}s")
        before = self.measure_begin(self.service.pid)
        client_cpu = self.run_wrk(name, script, self.service_url, connections, threads, extra_env)
        self.record(name, connections, self.service.pid, client_cpu)
        self.measure_end(before, self.service.pid, name)

    def bench_near_cache_off(self) -> None:
        """The cached GET again, on a second instance started with NEAR_CACHE_ENABLED=false: the
        same Redis entries (still warm: no write has run yet), Lua script and connections, right
        after the near-cache-on row. The first instance idles meanwhile. (A service without
        that variable ignores it: both rows then measure the same thing.)"""
        first = (self.service, self.service_url)
        self.start_service("near-cache-off", True, self.cache_prefix, extra_env={"NEAR_CACHE_ENABLED": "false"})
        try:
            self.bench("get-cached-near-off", "get_user.lua", self.cfg.connections)
        finally:
            stop_process(self.service)
            self.service, self.service_url = first

    def bench_redis_cluster(self) -> None:
        """The cached GET and the bulk eligibility on an instance whose cache is a Redis Cluster of
        three masters (redis-servers of this run on free ports: no replicas, no persistence), with
        entries warmed through that instance first. The service turns its near-cache off with a
        cluster: compare with the near-cache-off row (one Redis), same script and connections.
        The first instance idles meanwhile; the cluster is stopped at the end."""
        cfg = self.cfg
        directory = cfg.work / "redis-cluster"
        directory.mkdir(exist_ok=True)
        nodes, servers = [], []
        for _ in range(3):
            port, bus_port = free_port(), free_port()
            command = ["redis-server", "--port", str(port), "--cluster-port", str(bus_port), "--bind", "127.0.0.1"]
            command += ["--cluster-enabled", "yes", "--cluster-config-file", str(directory / f"nodes-{port}.conf")]
            command += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
            servers.append(self.start(command, directory / f"redis-{port}.log"))
            nodes.append(f"127.0.0.1:{port}")
        first = (self.service, self.service_url)
        try:
            deadline = time.monotonic() + 30
            while not all(output(["redis-cli", "-p", node.split(":")[1], "PING"]).strip() == "PONG" for node in nodes):
                if time.monotonic() > deadline:
                    die("the benchmark's Redis Cluster nodes did not start")
                time.sleep(0.1)
            run(["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"], stdout=subprocess.DEVNULL)
            while not all(
                "cluster_state:ok" in output(["redis-cli", "-p", node.split(":")[1], "CLUSTER", "INFO"]) for node in nodes
            ):
                if time.monotonic() > deadline:
                    die("the benchmark's Redis Cluster did not become ready")
                time.sleep(0.1)
            log(f"Redis Cluster of three masters: {','.join(nodes)}")
            self.start_service(
                "redis-cluster", True, self.cache_prefix, extra_env={"REDIS_CLUSTER_NODES": ",".join(nodes)}
            )
            self.warm_cache(count_entries=False)
            self.bench("get-cached-cluster", "get_user.lua", cfg.connections)
            self.bench("eligibility-bulk-cluster", "eligibility_bulk.lua", cfg.bulk_connections)
        finally:
            if self.service is not first[0]:
                stop_process(self.service)
            self.service, self.service_url = first
            for server in servers:
                stop_process(server)

    def profile(self, name: str, cache_enabled: bool, prefix: str) -> None:
        """A CPU profile of the GET (get_user.lua, the measured rows' connections) on an instance
        of its own, started with PROFILE_FLAMEGRAPH=bench-results/flamegraph-NAME.svg and
        PROFILE_FOLDED=last-run/profile-NAME.folded: BENCH_PROFILE_DURATION seconds of load, then
        SIGTERM, on which it resolves its samples and writes both. Apart from every measured run:
        no figure sees the sampling. Another instance may idle meanwhile. A missing profile is
        noted in the report; the run goes on."""
        cfg = self.cfg
        svg, folded = cfg.results_dir / f"flamegraph-{name}.svg", cfg.work / f"profile-{name}.folded"
        svg.unlink(missing_ok=True)  # an earlier run's must not pass for this one's
        log(f"profiling the {name.replace('-', ' ')} ({cfg.profile_duration}s of load, not a figure)")
        first = (self.service, self.service_url)
        variables = {"PROFILE_FLAMEGRAPH": str(svg), "PROFILE_FOLDED": str(folded)}
        self.start_service(f"profile-{name}", cache_enabled, prefix, extra_env=variables)
        try:
            wrk_name = f"profile-{name}"
            duration = str(cfg.profile_duration)
            self.run_wrk(wrk_name, "get_user.lua", self.service_url, cfg.connections, cfg.threads, duration=duration)
            rps, _, p99, errors, _ = parse_wrk((cfg.work / f"wrk-{wrk_name}.txt").read_text(errors="replace"))
            print(f"    {wrk_name:<22} {rps:>10} req/s  p99 {p99:>8} ms  errors {errors}  (sampled)", file=sys.stderr)
        finally:
            stop_process(self.service, timeout=120)  # resolving the samples' symbols takes seconds
            self.service, self.service_url = first
        if not svg.exists() or not folded.exists():
            log_path = cfg.work / f"service-profile-{name}.log"
            self.profile_notes[name] = f"the profiled instance wrote no flame graph; see last-run/{log_path.name}"
            print(f"    {self.profile_notes[name]}", file=sys.stderr)
            return
        self.profiles[name] = parse_folded(folded.read_text(errors="replace"))
        print(f"    {svg} ({self.profiles[name].samples} samples)", file=sys.stderr)

    def bench_storm(self) -> None:
        """Cached GETs while registrations (argon2id on every core) run against the same service."""
        connections = self.cfg.connections
        log(f"registration storm: cached GET and registration concurrently, {connections} connections each")
        pid = self.service.pid
        before = self.measure_begin(pid)
        runs = {
            name: self.start_wrk(name, script, self.service_url, connections, self.cfg.threads)
            for name, script in (("storm-get", "get_user.lua"), ("storm-register", "register_user.lua"))
        }
        client_cpu = {
            name: self.finish_client(name, process, self.cfg.work / f"wrk-{name}.txt") for name, process in runs.items()
        }
        for name in runs:
            self.record(name, connections, pid, client_cpu[name])
        self.measure_end(before, pid, "storm-get", "storm-register")
        register = self.ops["storm-register"]
        register.cpu_split = register.cpu_per_request = register.pg_cpu_per_request = "(with the row above)"

    def bench_ceiling(self, name: str) -> None:
        """The framework ceiling, run like the cached GET (same Lua script, same connections). It
        runs just before and just after the cached GET, and the ratio uses the mean of the two:
        this machine's speed drifts within minutes."""
        cfg = self.cfg
        port = free_port()
        log(f"{name}: bench-ceiling, {self.body_bytes}-byte JSON body, {cfg.workers} workers")
        log_path = cfg.work / f"{name}.log"
        started = time.monotonic()
        command = [str(cfg.release_dir / "bench-ceiling"), str(port), str(self.body_bytes), str(cfg.workers)]
        process = self.start(command, log_path)
        url = f"http://127.0.0.1:{port}"
        self.wait_ready(process, f"{url}/", "bench-ceiling", log_path, started)
        before = self.measure_begin(process.pid)
        client_cpu = self.run_wrk(name, "get_user.lua", url, cfg.connections, cfg.threads)
        self.record(name, cfg.connections, process.pid, client_cpu)
        self.measure_end(before, process.pid, name)
        stop_process(process)
        rates = [float(self.ops[run].rps) for run in ("ceiling-before", "ceiling-after") if run in self.ops]
        self.ceiling_rps = f"{sum(rates) / len(rates):.1f}"

    def pgbench_init(self) -> None:
        """pgbench on a scale-10 database of its own (1,000,000 accounts)."""
        cfg = self.cfg
        log(f"pgbench: initializing {PGBENCH_DB} at scale 10")
        recreate_database(cfg, PGBENCH_DB)
        report = cfg.work / "pgbench-init.txt"
        with open(report, "w") as out:
            command = [*pgbench(cfg), "-i", "-s", "10", "-q", PGBENCH_DB]
            run(command, stdout=out, stderr=subprocess.STDOUT, what=f"pgbench -i failed; see {report}")

    def bench_pgbench(self, mode: str) -> None:
        """-S (select only) or -N (simple update: no branch/teller contention) at the concurrency
        of the wrk runs. Recorded as the operation "pgbench-S" or "pgbench-N"."""
        cfg = self.cfg
        name = f"pgbench-{mode}"
        log(f"pgbench -{mode}: {cfg.connections} clients, -j {cfg.threads}, {cfg.duration}s")
        before = self.measure_begin(None)
        report = cfg.work / f"{name}.txt"
        options = f"-{mode} -c {cfg.connections} -j {cfg.threads} -T {cfg.duration}".split()
        command = [*pgbench(cfg), *options, PGBENCH_DB]
        client_cpu = self.finish_client(name, self.start(command, report), report)
        tps, done, failed, average = parse_pgbench(report.read_text(errors="replace"))
        self.ops[name] = Op(str(cfg.connections), tps, average, "–", failed, done, "–", client_cpu)
        self.pgbench_tps[mode] = tps
        print(f"    {name:<22} {tps:>10} tps  average latency {average} ms", file=sys.stderr)
        self.measure_end(before, None, name)

    def bench_argon2(self) -> None:
        """Raw argon2id hashes/s, measured just before and just after the registration run: this
        machine's speed drifts by 10-20 % within minutes, so the ratio uses the mean of the two."""
        log(f"argon2id: one thread per core ({NPROC}), 5 s")
        printed = run([str(self.cfg.release_dir / "argon2-rate"), "5"], stdout=subprocess.PIPE, text=True).stdout
        rate = next((line.split()[1] for line in printed.splitlines() if line.startswith("hashes_per_second ")), None)
        if not rate:
            die("argon2-rate printed no rate")
        self.argon2_rates.append(rate)
        print(f"    argon2id {rate} hashes/s", file=sys.stderr)

    @property
    def argon2_rate(self) -> str:
        return f"{sum(map(float, self.argon2_rates)) / len(self.argon2_rates):.1f}"

    def draw_chart(self) -> None:
        """bench-results/summary.svg, drawn by chart.py in the chart's virtual environment from
        last-run/chart.json; on a failure, self.chart_note says why it is missing."""
        cfg = self.cfg
        target = cfg.results_dir / "summary.svg"
        target.unlink(missing_ok=True)  # an earlier run's must not pass for this one's
        if self.chart_python is None:
            return
        log(f"chart: {target}")
        source = cfg.work / "chart.json"
        source.write_text(json.dumps(chart_data(self, datetime.now(UTC)), indent=1))
        command = [str(self.chart_python), str(CHART_SCRIPT), str(source), str(target)]
        drawn = subprocess.run(command, check=False, capture_output=True, text=True)
        if drawn.returncode != 0 or not target.exists():
            last = (drawn.stderr or drawn.stdout).strip().splitlines()[-1:]
            self.chart_note = f"chart.py failed{': ' + last[0] if last else ''} (see last-run/chart.json)"
            print(f"    {self.chart_note}", file=sys.stderr)

    # --- the whole run ---------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        self.machine = machine_description(cfg)
        self.redis_pid = local_redis_pid(cfg)

        log(f"database {SERVICE_DB}, cache prefix {self.cache_prefix}")
        recreate_database(cfg, SERVICE_DB)
        # Every change is published: the writes below are measured with events on.
        self.start_sink()
        self.start_service("cached", True, self.cache_prefix, events=True)
        self.seed()
        self.warm_cache()

        # Each reference runs next to the figure it is compared with, so that both see the same
        # neighbours. Reads first: the writes below invalidate cache entries.
        self.bench_ceiling("ceiling-before")
        self.bench("get-cached", "get_user.lua", cfg.connections)
        self.bench_ceiling("ceiling-after")
        self.bench("get-cached-axios", "get_user_axios.lua", cfg.connections)
        self.bench_near_cache_off()
        self.bench_redis_cluster()
        self.profile("cached-get", True, self.cache_prefix)  # while the Redis entries are all warm
        self.bench("eligibility-single", "eligibility_single.lua", cfg.connections)
        self.bench("eligibility-bulk", "eligibility_bulk.lua", cfg.bulk_connections)
        self.bench("eligibility-bulk-1", "eligibility_bulk.lua", 1, 1)
        self.bench("eligibility-bulk-category-1", "eligibility_bulk.lua", 1, 1, {"BENCH_CATEGORY": BENCH_CATEGORY})
        self.bench_argon2()
        self.bench("register", "register_user.lua", cfg.connections)
        time.sleep(2)  # hashes queued when wrk stopped finish before the second measure
        self.bench_argon2()
        self.bench_storm()
        self.pgbench_init()
        self.bench_pgbench("N")
        self.bench("put-preferences", "put_preferences.lua", cfg.connections)
        self.bench("post-device", "post_device.lua", cfg.connections)
        stop_process(self.service)

        # A second instance on the now migrated database, reading every user from PostgreSQL.
        self.start_service("uncached", False, f"{self.cache_prefix}-nocache")
        self.bench_pgbench("S")
        self.bench("get-uncached", "get_user.lua", cfg.connections)
        self.bench("put-preferences-feed", "put_preferences.lua", cfg.connections)
        stop_process(self.service)
        self.profile("uncached-get", False, f"{self.cache_prefix}-nocache")

        self.bench_relay()
        self.stop_sink()

        self.draw_chart()
        report = render_report(self, datetime.now(UTC))
        latest = cfg.results_dir / "latest.md"
        latest.write_text(report)
        shutil.copyfile(latest, cfg.results_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md")
        print(file=sys.stderr)
        sys.stdout.write(report)


# ---------------------------------------------------------------------------------------
# Report

OPERATION_ROWS = [
    ("get-cached", "GET user, cached (near-cache on: the default)"),
    ("get-cached-axios", "GET user, cached, with the gateway's axios headers (it accepts gzip, deflate, br)"),
    ("get-cached-near-off", "GET user, cached, near-cache off (`NEAR_CACHE_ENABLED=false`)"),
    ("get-cached-cluster", "GET user, cached in a Redis Cluster of 3 masters (near-cache off)"),
    ("get-uncached", "GET user, uncached (`CACHE_ENABLED=false`)"),
    ("put-preferences", "PUT preferences (toggle email), events published to RabbitMQ"),
    ("put-preferences-feed", "PUT preferences, no broker (events to the feed only), cache off"),
    ("post-device", "POST device (upsert of a known token)"),
    ("eligibility-single", "GET eligibility (push)"),
    ("eligibility-bulk", "POST eligibility, 1000 ids"),
    ("eligibility-bulk-cluster", "POST eligibility, 1000 ids, cached in a Redis Cluster of 3 masters"),
    ("eligibility-bulk-1", "POST eligibility, 1000 ids, one connection"),
    ("eligibility-bulk-category-1", "POST eligibility, 1000 ids in a category, one connection"),
    ("register", "POST user (registration)"),
    ("storm-get", "GET user, cached, during the storm"),
    ("storm-register", "POST user, during the storm"),
    ("ceiling-before", "Framework ceiling (reference), before the cached GET"),
    ("ceiling-after", "Framework ceiling (reference), after the cached GET"),
    ("pgbench-S", "`pgbench -S` (reference; p50 column: average latency)"),
    ("pgbench-N", "`pgbench -N` (reference; p50 column: average latency)"),
]


def ratio(numerator: str, denominator: str) -> str:
    """Two decimals, or n/a without a denominator."""
    low = as_number(denominator)
    return f"{float(numerator) / low:.2f}" if low else "n/a"


def verdict(value: str, operator: str, target: float) -> str:
    number = as_number(value)
    if number is None:
        return "FAIL"
    return "PASS" if (number >= target if operator == ">=" else number <= target) else "FAIL"


def markdown_code(text: str, limit: int = 160) -> str:
    """text as code in a Markdown table cell (function names hold `<`, `>` and sometimes `|`)."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "`" + text.replace("|", "\\|") + "`"


def profile_section(bench: Bench) -> str:
    """The flame graphs' links, and their top functions by self and by inclusive time."""
    parts = []
    for name, label in (("cached-get", "Cached GET"), ("uncached-get", "Uncached GET (`CACHE_ENABLED=false`)")):
        profile = bench.profiles.get(name)
        if profile is None:
            parts.append(f"**{label}:** no profile ({bench.profile_notes.get(name, 'not taken')}).")
            continue
        threads = ", ".join(
            f"{markdown_code(thread, 40)} {percent(count, profile.samples):.0f}%" for thread, count in profile.threads[:4]
        )
        columns = [profile.self_time[:PROFILE_ROWS], profile.own_inclusive[:PROFILE_ROWS]]
        table = [
            f"| {rank + 1} | "
            + " | ".join(
                f"{markdown_code(column[rank][0])} | {percent(column[rank][1], profile.samples):.1f}"
                if rank < len(column)
                else " | "
                for column in columns
            )
            + " |"
            for rank in range(max(map(len, columns)))
        ]
        parts.append(
            f"**{label}:** [flamegraph-{name}.svg](flamegraph-{name}.svg), {profile.samples} samples "
            f"(by thread: {threads}).\n\n"
            "| # | Function, by self time (on top of the stack; a C or std function with its caller) | % | The service's own functions, by inclusive "
            "time (anywhere on the stack) | % |\n|---|---|---|---|---|\n" + "\n".join(table)
        )
    return "\n\n".join(parts)


def chart_data(bench: Bench, now: datetime) -> dict:
    """What chart.py draws (as JSON): each figure beside its same-run reference or its goal, with
    the ratio, the goal and the verdict; then each profile's own functions by inclusive time."""
    cfg, ops = bench.cfg, bench.ops
    rps = {name: op.rps for name, op in ops.items()}
    p50 = {name: op.p50 for name, op in ops.items()}
    p99 = {name: op.p99 for name, op in ops.items()}
    tps_s, tps_n = bench.pgbench_tps["S"], bench.pgbench_tps["N"]

    def group(title, unit, bars, shown_ratio, ratio_label, goal="", operator="", target=0.0, checked=None):
        """bars: (label, value, role) with role "figure", "reference" or "goal"; `checked` is the
        value the verdict compares with the target (the ratio unless given)."""
        verdict_ = verdict(shown_ratio if checked is None else checked, operator, target) if goal else ""
        return {
            "title": title,
            "unit": unit,
            "bars": [{"label": label, "value": as_number(value), "role": role} for label, value, role in bars],
            "ratio": f"{ratio_label} = {shown_ratio}",
            "goal": goal,
            "verdict": verdict_,
        }

    bulk = as_number(p50["eligibility-bulk"])
    # fmt: off
    groups = [
        group("Cached GET vs the framework ceiling", "requests/s",
              [("cached GET", rps["get-cached"], "figure"), ("ceiling", bench.ceiling_rps, "reference")],
              ratio(rps["get-cached"], bench.ceiling_rps), "GET / ceiling", "≥ 0.5 (stretch 0.8)", ">=", 0.5),
        group("Uncached GET vs pgbench -S", "per second",
              [("uncached GET", rps["get-uncached"], "figure"), ("pgbench -S (tps)", tps_s, "reference")],
              ratio(rps["get-uncached"], tps_s), "GET / pgbench -S", "≥ 0.5", ">=", 0.5),
        group("PUT preferences (events published) vs pgbench -N", "per second",
              [("PUT preferences", rps["put-preferences"], "figure"), ("pgbench -N (tps)", tps_n, "reference")],
              ratio(rps["put-preferences"], tps_n), "PUT / pgbench -N", "≥ 0.5", ">=", 0.5),
        group("Registration vs raw argon2id", "per second",
              [("registrations", rps["register"], "figure"), ("argon2id hashes", bench.argon2_rate, "reference")],
              ratio(rps["register"], bench.argon2_rate), "registrations / hashes", "≥ 0.9", ">=", 0.9),
        group("Cached GET p99: registration storm vs idle", "ms",
              [("p99 in the storm", p99["storm-get"], "figure"), ("p99 idle", p99["get-cached"], "reference")],
              ratio(p99["storm-get"], p99["get-cached"]), "storm / idle", "≤ 2", "<=", 2),
        group("Bulk eligibility (1000 ids) p50 vs its goal", "ms",
              [(f"p50, {cfg.bulk_connections} connections", p50["eligibility-bulk"], "figure"),
               ("p50, one connection", p50["eligibility-bulk-1"], "figure"), ("goal", "20", "goal")],
              f"{bulk / 20:.2f}" if bulk is not None else "n/a", "p50 / goal", "≤ 20 ms", "<=", 20,
              checked=p50["eligibility-bulk"]),
        group("Cached GET: near-cache on vs off", "requests/s",
              [("near-cache on", rps["get-cached"], "figure"),
               ("near-cache off", rps["get-cached-near-off"], "reference")],
              ratio(rps["get-cached"], rps["get-cached-near-off"]), "on / off"),
        group("Relay: events published and confirmed", "events/s",
              [("relay", bench.relay_rate, "figure"), ("goal", "5000", "goal")],
              ratio(bench.relay_rate or "0", "5000"), "relay / goal", "≥ 5000 events/s", ">=", 5000,
              checked=bench.relay_rate),
    ]
    # fmt: on
    profiles = []
    for name, label in (("cached-get", "Cached GET"), ("uncached-get", "Uncached GET")):
        profile = bench.profiles.get(name)
        if profile is None:
            continue
        title = (
            f"{label}: the service's own functions by inclusive CPU time, % of {profile.samples} samples "
            f"(flamegraph-{name}.svg)"
        )
        top = profile.own_inclusive[:PROFILE_ROWS]
        profiles.append({"title": title, "rows": [[name, percent(count, profile.samples)] for name, count in top]})
    title = (
        f"user-service benchmark, {now:%Y-%m-%d %H:%M} UTC: {NPROC} cores shared by the service, wrk, "
        "PostgreSQL and Redis"
    )
    return {"title": title, "groups": groups, "profiles": profiles}


def render_report(bench: Bench, now: datetime) -> str:
    cfg, ops = bench.cfg, bench.ops
    rps = {name: op.rps for name, op in ops.items()}
    p50 = {name: op.p50 for name, op in ops.items()}
    p99 = {name: op.p99 for name, op in ops.items()}
    tps_s, tps_n = bench.pgbench_tps["S"], bench.pgbench_tps["N"]
    cached_vs_ceiling = ratio(rps["get-cached"], bench.ceiling_rps)
    uncached_vs_select = ratio(rps["get-uncached"], tps_s)
    put_vs_update = ratio(rps["put-preferences"], tps_n)
    register_vs_argon2 = ratio(rps["register"], bench.argon2_rate)
    storm_p99_ratio = ratio(p99["storm-get"], p99["get-cached"])
    stretch = "met" if verdict(cached_vs_ceiling, ">=", 0.8) == "PASS" else "missed"
    # VmHWM only grows: the cached instance's last reading is its peak over all its runs.
    peak = max(ops["post-device"].peak_rss, ops["get-uncached"].peak_rss, key=lambda v: as_number(v) or -1.0)
    idle_cached, idle_uncached = bench.idle_rss["cached"], bench.idle_rss["uncached"]
    ready_cached, ready_uncached = str(bench.ready_ms["cached"]), str(bench.ready_ms["uncached"])
    near_on, near_off = ops["get-cached"], ops["get-cached-near-off"]
    near_cache = (
        f"Near-cache: the cached GET ran at {near_on.rps} req/s (p99 {near_on.p99} ms) with the near-cache "
        f"and at {near_off.rps} req/s (p99 {near_off.p99} ms) on an instance started with "
        f"`NEAR_CACHE_ENABLED=false` right after: on / off **{ratio(near_on.rps, near_off.rps)}**."
    )
    cluster_get, cluster_bulk, bulk = ops["get-cached-cluster"], ops["eligibility-bulk-cluster"], ops["eligibility-bulk"]
    redis_cluster = (
        f"Redis Cluster (three masters of this run, near-cache off): the cached GET ran at {cluster_get.rps} req/s "
        f"(p99 {cluster_get.p99} ms), against {near_off.rps} req/s on one Redis with the near-cache off: cluster / "
        f"one Redis **{ratio(cluster_get.rps, near_off.rps)}**; bulk eligibility of 1,000 ids at "
        f"{cfg.bulk_connections} connections took {cluster_bulk.p50} ms at p50 (one Redis with the near-cache: "
        f"{bulk.p50} ms)."
    )
    chart = "![Each figure beside its same-run reference](summary.svg)"
    if not (cfg.results_dir / "summary.svg").exists():
        chart = f"No chart this run: {bench.chart_note}."

    # The runs during which processes outside the benchmark took more than 10% of the CPU:
    # their figures, and the ratios built on them, are then pessimistic.
    noisy = [f"{name} ({op.other_cpu}%)" for name, op in ops.items() if op.other_cpu > 10]
    interference = (
        "\n**Interference:** other processes took more than 10% of the CPU during "
        f"{', '.join(noisy)}; rerun on a quiet machine before trusting those figures."
        if noisy
        else ""
    )

    # fmt: off
    targets = [  # figure, value, shown after the value, operator, target, shown after the target
        ("Cached GET rps / framework ceiling rps", cached_vs_ceiling,
         f" ({rps['get-cached']} / {bench.ceiling_rps})", ">=", 0.5, f" (stretch 0.8: {stretch})"),
        ("Cached GET p99", p99["get-cached"], " ms", "<=", 5, " ms"),
        ("Cached GET with the gateway's headers (axios, which accepts compression) / cached GET",
         ratio(rps["get-cached-axios"], rps["get-cached"]),
         f" ({rps['get-cached-axios']} / {rps['get-cached']}; p99 {p99['get-cached-axios']} ms)", ">=", 0.9, ""),
        ("Uncached GET rps / pgbench -S tps", uncached_vs_select,
         f" ({rps['get-uncached']} / {tps_s})", ">=", 0.5, ""),
        ("PUT preferences rps, events published / pgbench -N tps", put_vs_update,
         f" ({rps['put-preferences']} / {tps_n})", ">=", 0.5, ""),
        ("Relay: events published and confirmed per second (from a backlog)", bench.relay_rate,
         f" events/s ({bench.relay_seconds} s for 50000; the sink received {bench.sink_received} in the run)",
         ">=", 5000, " events/s"),
        ("Registration rps / argon2id hashes/s", register_vs_argon2,
         f" ({rps['register']} / {bench.argon2_rate})", ">=", 0.9, ""),
        ("Cached GET p99 in a registration storm / idle", storm_p99_ratio,
         f" ({p99['storm-get']} / {p99['get-cached']} ms)", "<=", 2, ""),
        ("Bulk eligibility (1000 ids) p50", p50["eligibility-bulk"],
         f" ms at {cfg.bulk_connections} connections (one connection: {p50['eligibility-bulk-1']} ms)",
         "<=", 20, " ms"),
        ("Bulk eligibility (1000 ids) in a category p50, one request at a time", p50["eligibility-bulk-category-1"],
         " ms", "<=", 20, " ms"),
        ("Idle RSS (VmRSS once ready)", idle_cached, " MiB", "<=", 30, " MB"),
        ("Peak RSS under load (VmHWM)", peak, " MiB", "<=", 150, " MB"),
        ("Time to ready, fresh database (migrations included)", ready_cached, " ms", "<=", 1000, " ms"),
        ("Time to ready, migrated database", ready_uncached, " ms", "<=", 1000, " ms"),
    ]
    # fmt: on
    target_rows = [
        f"| {figure} | {value}{shown} | {'≥' if operator == '>=' else '≤'} {target}{note} "
        f"| {verdict(value, operator, target)} |"
        for figure, value, shown, operator, target, note in targets
    ]
    operations = [
        f"| {label} | {op.connections} | {op.rps} | {op.p50} | {op.p99} | {op.errors} / {op.requests} | "
        f"{op.cpu_per_request} | {op.pg_cpu_per_request} | {op.cpu_split} | {op.peak_rss} |"
        for name, label in OPERATION_ROWS
        for op in [ops[name]]
    ]
    threads_clients = f"{cfg.connections} clients, -j {cfg.threads}, scale 10"
    ceiling = (
        f"| Framework ceiling: actix-web, fixed {bench.body_bytes}-byte JSON, {cfg.workers} workers (before and "
        f"after the cached GET) | {bench.ceiling_rps} req/s (mean of {rps['ceiling-before']}, {rps['ceiling-after']}); "
        f"p99 {p99['ceiling-before']}, {p99['ceiling-after']} ms |"
    )
    argon2 = (
        f"| argon2id m=19456 KiB, t=2, p=1, {NPROC} threads (before and after the registration run) | "
        f"{bench.argon2_rate} hashes/s (mean of {', '.join(bench.argon2_rates)}) |"
    )
    references = [
        ceiling,
        f"| `pgbench -S` ({threads_clients}) | {tps_s} tps |",
        f"| `pgbench -N` ({threads_clients}) | {tps_n} tps |",
        argon2,
    ]
    nl = "\n"
    return f"""\
# user-service benchmark — {now:%Y-%m-%d %H:%M} UTC

Machine (the load generator, PostgreSQL and Redis share these cores with the service):

{bench.machine}

Run: {cfg.duration} s per operation, wrk with {cfg.threads} threads, {cfg.connections} connections
(bulk eligibility: {cfg.bulk_connections}); {cfg.users} seeded users with preferences and 2 devices
each; service with {cfg.workers} HTTP workers and default pools; cached GET body {bench.body_bytes} bytes.
{interference}

{chart}

## Targets

| Figure | Measured | Target | Result |
|---|---|---|---|
{nl.join(target_rows)}

{near_cache}

{redis_cluster}

## Operations

| Operation | Connections | Requests/s | p50 (ms) | p99 (ms) | Errors / requests | Server CPU per request (µs) \
| PostgreSQL CPU per request (µs) | CPU % server / client / Redis / PostgreSQL / other / idle | Peak RSS (MiB) |
|---|---|---|---|---|---|---|---|---|---|
{nl.join(operations)}

## References (same run, same cores)

| Reference | Figure |
|---|---|
{nl.join(references)}

Idle RSS: cached instance {idle_cached} MiB, uncached instance {idle_uncached} MiB.
Peak RSS of the uncached instance: {ops["get-uncached"].peak_rss} MiB. Errors are non-2xx answers plus
socket errors (wrk), or failed transactions (pgbench). "CPU %" splits the machine's CPU
time during each run between the server, the client (wrk or pgbench), Redis, PostgreSQL
(every local postgres process), everything else (other users of the machine included) and
idle; "CPU per request" is user + system time divided by the requests (or transactions)
completed. Raw outputs are in bench-results/last-run/.

## CPU profiles

Sampled by the service itself (pprof, 999 Hz of CPU time, every thread), on instances of their
own under the GET's load for {cfg.profile_duration} s, apart from the measured runs; time in system calls
counts in the libc function that made them. The cached GET's instance starts with an empty
near-cache: the first request for each of the {cfg.users} users goes to Redis. Folded stacks are in
bench-results/last-run/profile-*.folded.

{profile_section(bench)}
"""


# ---------------------------------------------------------------------------------------


def interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main() -> int:
    try:
        cfg = Config.from_env()
        require_tools(cfg)
        build(cfg)
        python, reason = chart_python(cfg)  # before the run: pip must not share the cores with a figure
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    shutil.rmtree(cfg.work, ignore_errors=True)
    cfg.work.mkdir(parents=True)
    bench = Bench(cfg)
    bench.chart_python, bench.chart_note = python, reason or bench.chart_note
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    status = 0
    try:
        bench.run()
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        status = 1
    except Interrupted:
        status = 130
    finally:
        bench.cleanup()
    return status


if __name__ == "__main__":
    sys.exit(main())

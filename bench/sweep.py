"""The benchmark matrix: every ``bench.run`` of the performance page, one after another.

    python -m bench.sweep                          # the whole matrix (~25 min)
    python -m bench.sweep --only broadcast targeted-1500   # the points whose names start so
    python -m bench.sweep --quick --only broadcast-10k-daphne   # small and short: a smoke run
    python -m bench.sweep --list                   # the points and their commands, no run
    python -m bench.report                         # tables into docs/performance.md + chart

Each point of ``MATRIX`` is one ``python -m bench.run ...`` subprocess, never two at a time
(they measure CPU), each bounded by a timeout. The output file (``--out``, written anew)
starts with a ``{"scenario": "meta", ...}`` line (date, commit, Python, CPUs, load average),
then one line per point: the JSON line ``bench.run`` printed plus ``series``, ``point``,
``args`` (the ``bench.run`` arguments) and ``loadavg_before``; or ``{"scenario": "skipped"}``
when the service a point needs is not there, or ``{"scenario": "error"}`` (exit status or
timeout, the end of stderr) when a run failed; the sweep goes on either way.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "latest.jsonl"


class Point(NamedTuple):
    point: str  # short unique id; ``--only`` matches its prefix
    series: str  # one line (or column) of the report: baseline, daphne, uvicorn, ...
    scenario: str  # bench.run scenario
    clients: int
    rate: float | None  # pushes/s offered (None: the scenario has no rate)
    duration: float  # seconds
    extra: str = ""  # more bench.run arguments
    needs: str = ""  # "rocketmq" or "redis": skipped when that service is not there


R = "redis"
MQ = "rocketmq"
UV = "--server uvicorn"

MATRIX: list[Point] = [
    # Broadcast to 1,000 clients against load: 10..100 pushes/s = 10k..100k deliveries/s;
    # the three series side by side at each load, so drift on the machine hits all alike.
    Point("broadcast-10k-baseline", "baseline", "baseline", 1000, 10, 8),
    Point("broadcast-10k-daphne", "daphne", "broadcast", 1000, 10, 8),
    Point("broadcast-10k-uvicorn", "uvicorn", "broadcast", 1000, 10, 8, UV),
    Point("broadcast-30k-baseline", "baseline", "baseline", 1000, 30, 8),
    Point("broadcast-30k-daphne", "daphne", "broadcast", 1000, 30, 8),
    Point("broadcast-30k-uvicorn", "uvicorn", "broadcast", 1000, 30, 8, UV),
    Point("broadcast-50k-baseline", "baseline", "baseline", 1000, 50, 8),
    Point("broadcast-50k-daphne", "daphne", "broadcast", 1000, 50, 8),
    Point("broadcast-50k-uvicorn", "uvicorn", "broadcast", 1000, 50, 8, UV),
    Point("broadcast-70k-baseline", "baseline", "baseline", 1000, 70, 8),
    Point("broadcast-70k-daphne", "daphne", "broadcast", 1000, 70, 8),
    Point("broadcast-70k-uvicorn", "uvicorn", "broadcast", 1000, 70, 8, UV),
    Point("broadcast-100k-baseline", "baseline", "baseline", 1000, 100, 8),
    Point("broadcast-100k-daphne", "daphne", "broadcast", 1000, 100, 8),
    Point("broadcast-100k-uvicorn", "uvicorn", "broadcast", 1000, 100, 8, UV),
    # Targeted REST pushes to 10,000 clients, one push per request, against load
    # (1,500/s is the target).
    Point("targeted-500-daphne", "daphne", "targeted", 10000, 500, 10),
    Point("targeted-500-uvicorn", "uvicorn", "targeted", 10000, 500, 10, UV),
    Point("targeted-1000-daphne", "daphne", "targeted", 10000, 1000, 10),
    Point("targeted-1000-uvicorn", "uvicorn", "targeted", 10000, 1000, 10, UV),
    Point("targeted-1500-daphne", "daphne", "targeted", 10000, 1500, 10),
    Point("targeted-1500-uvicorn", "uvicorn", "targeted", 10000, 1500, 10, UV),
    Point("targeted-2000-daphne", "daphne", "targeted", 10000, 2000, 10),
    Point("targeted-2000-uvicorn", "uvicorn", "targeted", 10000, 2000, 10, UV),
    # POST /api/v1/push/batch, 100 pushes per request.
    Point("batch-10k-daphne", "daphne", "targeted", 10000, 10000, 10, "--batch 100"),
    Point("batch-10k-uvicorn", "uvicorn", "targeted", 10000, 10000, 10, f"--batch 100 {UV}"),
    # Pushes through the RocketMQ broker (--rocketmq-endpoint).
    # One push per request, then batches of 50 per request (the broker path alone).
    Point("rocketmq-2000-daphne", "daphne", "rocketmq", 1000, 2000, 10, "", MQ),
    Point("rocketmq-2000-uvicorn", "uvicorn", "rocketmq", 1000, 2000, 10, UV, MQ),
    Point("rocketmq-2000b-daphne", "daphne", "rocketmq", 1000, 2000, 10, "--batch 50", MQ),
    Point("rocketmq-2000b-uvicorn", "uvicorn", "rocketmq", 1000, 2000, 10,
          f"--batch 50 {UV}", MQ),
    # Idle connections: memory, heartbeat CPU, connect rate.
    Point("idle-19000-baseline", "baseline", "idle", 19000, None, 30, "--server baseline"),
    Point("idle-19000-daphne", "daphne", "idle", 19000, None, 30),
    Point("idle-19000-uvicorn", "uvicorn", "idle", 19000, None, 30, UV),
    # rungateway --workers 2 against one worker, both on the Redis broker (REDIS_ENV).
    Point("workers-100k-daphne-w1", "daphne-workers1", "broadcast", 1000, 100, 8, "", R),
    Point("workers-100k-daphne-w2", "daphne-workers2", "broadcast", 1000, 100, 8,
          "--workers 2", R),
    Point("workers-100k-uvicorn-w1", "uvicorn-workers1", "broadcast", 1000, 100, 8, UV, R),
    Point("workers-100k-uvicorn-w2", "uvicorn-workers2", "broadcast", 1000, 100, 8,
          f"--workers 2 {UV}", R),
]

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6390
#: The gateway's environment for the ``redis`` points (the broker and the channel layer);
#: the topic keeps the bench's stream apart from the test suite's.
REDIS_ENV = [f"GATEWAY_BROKER={R}", f"REDIS_URL=redis://{REDIS_HOST}:{REDIS_PORT}/0",
             "GATEWAY_ROCKETMQ_TOPIC=bench-sweep"]

#: ``--quick``: every point shrunk to this, so a test can run it.
QUICK_CLIENTS, QUICK_RATE_DIVISOR, QUICK_DURATION = 200, 10, 2.0
#: Seconds of rest between two runs (sockets in TIME_WAIT, the previous server's exit).
SETTLE_S, QUICK_SETTLE_S = 3.0, 0.5
#: File descriptors the load client needs (19,000 idle clients).
NOFILE = 20000


def shrink(p: Point) -> Point:
    return p._replace(
        clients=min(p.clients, QUICK_CLIENTS),
        rate=None if p.rate is None else p.rate / QUICK_RATE_DIVISOR,
        duration=QUICK_DURATION,
    )


def bench_args(p: Point, *, rocketmq_endpoint: str, database_url: str | None) -> list[str]:
    """The ``python -m bench.run`` arguments of a point."""
    args = [p.scenario, "--clients", str(p.clients)]
    if p.rate is not None:
        args += ["--rate", f"{p.rate:g}"]
    args += ["--duration", f"{p.duration:g}", *p.extra.split()]
    if p.needs == MQ:
        args += ["--rocketmq-endpoint", rocketmq_endpoint]
    if p.needs == R:
        env = [*REDIS_ENV, *([f"DATABASE_URL={database_url}"] if database_url else [])]
        for item in env:
            args += ["--env", item]
    return args


def timeout_s(p: Point) -> float:
    """Gateway start, connecting the clients, the run and its drain, with room to spare."""
    return 90 + 2 * p.duration + p.clients / 100 + (60 if "--workers" in p.extra else 0)


def accepting(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host or "127.0.0.1", int(port)


def missing_service(p: Point, rocketmq_endpoint: str) -> str | None:
    """Why a point cannot run here, or None."""
    if p.needs == MQ:
        host, port = split_endpoint(rocketmq_endpoint)
        if not accepting(host, port):
            return (f"RocketMQ proxy {rocketmq_endpoint} is not accepting connections "
                    "(scripts/rocketmq.sh start)")
    if p.needs == R and not accepting(REDIS_HOST, REDIS_PORT):
        return (f"Redis {REDIS_HOST}:{REDIS_PORT} does not answer "
                "(scripts/services.sh start redis)")
    return None


def git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                timeout=20, check=False)
        if result.returncode == 0:
            return result.stdout.strip()
    return ""


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def meta(*, quick: bool, points: list[Point]) -> dict[str, Any]:
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    # Tracked files only, like ``git describe --dirty``: results files are untracked.
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return {
        "scenario": "meta",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "loadavg": loadavg(),
        "quick": quick,
        "points": [p.point for p in points],
    }


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def descendants(pid: int) -> list[tuple[int, str]]:
    """``pid``'s process tree (the gateway runs in a session of its own, so a process group
    would miss it), each with its start time so that a reused pid is never signalled."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, IndexError):
            start = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()[19]
            found.append((current, start))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def kill_tree(proc: subprocess.Popen[str], tree: list[tuple[int, str]], *,
              interrupt: bool = True) -> None:
    """SIGINT first (bench.run stops its servers on the way out), SIGKILL what is left."""
    if interrupt:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    for pid, start in tree:
        if pid == proc.pid:
            continue
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start:
                os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_point(args: list[str], timeout: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``bench.run``; its JSON lines, and an error record ({} when it went well)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    error: dict[str, Any] = {}
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc, descendants(proc.pid))
        stdout, stderr = proc.communicate()
        error = {"timeout_s": round(timeout)}
    except BaseException:  # Ctrl-C: the child got it too; do not leave servers behind
        kill_tree(proc, descendants(proc.pid), interrupt=False)
        raise
    lines = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    if not error and proc.returncode != 0:
        error = {"returncode": proc.returncode}
    if not error and not lines:
        error = {"returncode": proc.returncode, "reason": "no JSON line on stdout"}
    if error:
        error["stderr"] = tail(stderr) or tail(stdout)
    return lines, error


def summary(result: dict[str, Any]) -> str:
    if result.get("scenario") == "idle":
        return (f"{result.get('alive_at_end')} alive, {result.get('kb_per_connection')} KB each,"
                f" CPU {result.get('server_cpu_pct')} %")
    lat = result.get("latency_ms") or {}
    return (f"{result.get('deliveries_per_s')} deliveries/s, p50 {lat.get('p50')} ms, "
            f"p99 {lat.get('p99')} ms, loss {result.get('loss')}")


def select(only: list[str] | None) -> list[Point]:
    if not only:
        return list(MATRIX)
    return [p for p in MATRIX if any(p.point.startswith(prefix) for prefix in only)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON-lines file, written anew (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"every point shrunk: ≤ {QUICK_CLIENTS} clients, rates "
                             f"÷ {QUICK_RATE_DIVISOR}, {QUICK_DURATION:g} s")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only the points whose names start with one of these")
    parser.add_argument("--rocketmq-endpoint", default="127.0.0.1:8081",
                        help="RocketMQ proxy for the rocketmq points (default: %(default)s)")
    parser.add_argument("--database-url", default=None,
                        help="DATABASE_URL for the workers points (rungateway --workers wants "
                             "PostgreSQL; default: each gateway's own SQLite file)")
    parser.add_argument("--list", action="store_true", help="print the points and exit")
    args = parser.parse_args(argv)

    points = select(args.only)
    if not points:
        parser.error(f"no point starts with {' or '.join(args.only)}; "
                     f"points: {', '.join(p.point for p in MATRIX)}")
    if args.quick:
        points = [shrink(p) for p in points]
    planned = [(p, bench_args(p, rocketmq_endpoint=args.rocketmq_endpoint,
                              database_url=args.database_url)) for p in points]
    if args.list:
        for p, bargs in planned:
            print(f"{p.point:26} {p.series:17} python -m bench.run {' '.join(bargs)}")
        return 0

    nofile = raise_nofile()
    if nofile < max(p.clients for p in points) + 1000:
        print(f"sweep: only {nofile} file descriptors (ulimit -n); big points may fail",
              file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head = meta(quick=args.quick, points=points)
    print(f"sweep: {len(points)} points into {args.out} (commit {head['commit']}, "
          f"load {head['loadavg']})", file=sys.stderr, flush=True)
    failures = 0
    with args.out.open("w") as out:

        def write(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        write(head)
        for i, (p, bargs) in enumerate(planned, 1):
            label = f"[{i}/{len(planned)}] {p.point}"
            tag = {"series": p.series, "point": p.point, "args": bargs}
            reason = missing_service(p, args.rocketmq_endpoint)
            if reason:
                print(f"{label}: skipped: {reason}", file=sys.stderr, flush=True)
                write({"scenario": "skipped", **tag, "reason": reason})
                continue
            if i > 1:
                time.sleep(QUICK_SETTLE_S if args.quick else SETTLE_S)
            print(f"{label}: python -m bench.run {' '.join(bargs)}", file=sys.stderr,
                  flush=True)
            before, started = loadavg(), time.monotonic()
            lines, error = run_point(bargs, timeout_s(p))
            took = time.monotonic() - started
            for result in lines:
                write({**result, **tag, "loadavg_before": before})
                print(f"{label}: {summary(result)} ({took:.0f} s)", file=sys.stderr,
                      flush=True)
            if error:
                failures += 1
                write({"scenario": "error", **tag, **error})
                last = error["stderr"].splitlines()[-1:] or ["(no output)"]
                what = (f"timeout after {error['timeout_s']} s" if "timeout_s" in error
                        else f"exit {error.get('returncode')}")
                print(f"{label}: error ({what}): {last[0]}", file=sys.stderr, flush=True)
    print(f"sweep: done, {failures} failed; python -m bench.report {args.out}",
          file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

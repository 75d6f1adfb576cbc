"""Tables and chart from a sweep file (``python -m bench.sweep``).

    python -m bench.report                                  # bench/results/latest.jsonl
    python -m bench.report results.jsonl --doc docs/performance.md \\
        --chart docs/images/latency-vs-load.png

Rewrites what lies between ``<!-- bench:results:begin -->`` and ``<!-- bench:results:end -->``
in the doc (the markers replace its "## Preliminary results" section the first time, or
go at its end) and draws the latency-against-load chart. Running it twice on the same file
gives the same doc. Every verdict of the targets table is computed from the measurements
(``TARGETS``); a target without a run that bears on it is "not measured".

Which part of the matrix a line belongs to is the start of its ``point`` (``broadcast``,
``targeted``, ``batch``, ``rocketmq``, ``idle``, ``workers``); its server is
``gateway_server`` (else the start of ``series``); pushes per request and workers come from
the ``args`` the sweep recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = REPO / "bench" / "results" / "latest.jsonl"
DEFAULT_DOC = REPO / "docs" / "performance.md"
DEFAULT_CHART = REPO / "docs" / "images" / "latency-vs-load.png"

BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"
#: The section the markers replace when the doc has none yet.
REPLACED_SECTION = "## Preliminary results"
SECTION_TITLE = "## Results"

GATEWAY_SERVERS = ["daphne", "uvicorn"]  # always columns of the targets table
#: A run keeps up with its offered load when it achieved at least this share of it (the
#: rate is taken over the whole run, in-flight tail included, so never quite 100 %).
KEEP_UP = 0.98

Result = dict[str, Any]


# --- reading ----------------------------------------------------------------------------


@dataclass
class Sweep:
    meta: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    #: ``skipped`` and ``error`` lines: points without a measurement, and why.
    missing: list[Result] = field(default_factory=list)


def parse(lines: Iterable[str]) -> Sweep:
    """A sweep's lines. A point measured twice (files joined by hand) counts once, the
    later line winning, and a measurement clears an earlier skip or error of its point."""
    sweep = Sweep()
    by_point: dict[str, Result] = {}
    for n, line in enumerate(lines):
        line = line.strip()
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        scenario = record.get("scenario")
        if scenario == "meta":
            sweep.meta = sweep.meta or record
        elif scenario in ("skipped", "error"):
            sweep.missing.append(record)
        elif scenario != "ratio":
            key = record.get("point") or f"line {n}"
            sweep.missing = [m for m in sweep.missing if m.get("point") != key]
            by_point.pop(key, None)
            by_point[key] = record
    sweep.results = list(by_point.values())
    return sweep


def load(path: Path) -> Sweep:
    return parse(path.read_text().splitlines())


# --- what a line is ---------------------------------------------------------------------


def group(r: Result) -> str:
    return str(r.get("point", r.get("scenario", ""))).split("-", 1)[0]


def server(r: Result) -> str:
    return str(r.get("gateway_server") or str(r.get("series", r.get("server", ""))).split("-")[0])


def arg(r: Result, name: str, default: int = 1) -> int:
    args = r.get("args") or []
    if name in args and args.index(name) + 1 < len(args):
        return int(args[args.index(name) + 1])
    return default


def p(r: Result, q: str) -> float | None:
    value = (r.get("latency_ms") or {}).get(q)
    return None if value is None else float(value)


def offered_deliveries(r: Result) -> float:
    return float(r.get("offered_push_rate") or 0) * int(r.get("clients") or 0)


def clean(r: Result) -> bool:
    """No lost frame, no failed push, no failed connection."""
    return (r.get("loss") == 0 and not r.get("push_errors")
            and not (r.get("connect") or {}).get("failed"))


def keeps_up(r: Result) -> bool:
    offered = float(r.get("offered_push_rate") or 0)
    return clean(r) and offered > 0 and float(r.get("achieved_push_rate") or 0) >= KEEP_UP * offered


def of(results: list[Result], grp: str, series: str | None = None) -> list[Result]:
    return [r for r in results if group(r) == grp and (series is None or r.get("series") == series)]


RANK = {"baseline": 0, "daphne": 1, "uvicorn": 2}


def rank(series: str) -> tuple[int, str]:
    """baseline, daphne, uvicorn, then the others (``daphne-workers2`` after ``daphne``)."""
    return RANK.get(series.split("-")[0], 9), series


def series_order(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=rank)


# --- formatting -------------------------------------------------------------------------


def num(x: float | None) -> str:
    """1,499 / 49.2k / 123k."""
    if x is None:
        return "—"
    if abs(x) >= 100_000:
        return f"{x / 1000:,.0f}k"
    if abs(x) >= 10_000:
        return f"{x / 1000:.1f}k"
    return f"{x:,.0f}"


def ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.1f}" if x < 10 else f"{x:,.0f}"


def dec(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def loss_note(r: Result) -> str:
    parts = []
    if r.get("loss"):
        parts.append(f"loss {r['loss']:,}")
    if r.get("push_errors"):
        parts.append(f"{r['push_errors']:,} push errors")
    if (r.get("connect") or {}).get("failed"):
        parts.append(f"{r['connect']['failed']:,} failed connects")
    return (", " + ", ".join(parts)) if parts else ""


# --- the sections -----------------------------------------------------------------------


def when(meta: dict[str, Any]) -> str:
    try:
        date = datetime.datetime.fromisoformat(str(meta.get("date")))
    except ValueError:
        return str(meta.get("date", "?"))
    return date.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def measured_line(meta: dict[str, Any], source: str) -> list[str]:
    if not meta:
        return [f"Generated by `python -m bench.report {source}` (the sweep has no meta line)."]
    load = ", ".join(f"{x:g}" for x in meta.get("loadavg") or [])
    lines = [
        f"Measured {when(meta)} at commit `{meta.get('commit', '?')}` on "
        f"{meta.get('cpu_count', '?')}x {meta.get('cpu_model', '?')}, Python "
        f"{meta.get('python', '?')}, load average {load or '?'} at the start; load client "
        f"and server on the same machine. Generated by `python -m bench.sweep` and "
        f"`python -m bench.report {source}`."
    ]
    if meta.get("note"):  # how a file put together from several sweeps came about
        lines += ["", f"Note: {meta['note']}."]
    if meta.get("quick"):
        lines += ["", "**Quick sweep** (`--quick`: at most 200 clients, rates ÷ 10, 2 s): a "
                      "smoke run, not a measurement; the targets below do not apply to it."]
    return lines


def broadcast_section(results: list[Result]) -> list[str]:
    runs = of(results, "broadcast")
    out = ["### Broadcast: latency against load", ""]
    if not runs:
        return [*out, "_Not measured._"]
    names = series_order(r["series"] for r in runs)
    clients = sorted({int(r.get("clients") or 0) for r in runs})
    cell: dict[tuple[float, str], Result] = {(offered_deliveries(r), r["series"]): r for r in runs}
    loads = sorted({k[0] for k in cell})
    gateways = [s for s in names if s != "baseline"]
    header = ["offered deliveries/s", *names]
    if "baseline" in names:
        header += [f"{s} ÷ baseline" for s in gateways]
    rows = []
    for load in loads:
        pushes = next(r for (o, _s), r in cell.items() if o == load)["offered_push_rate"]
        row = [f"{num(load)} ({pushes:g} pushes/s)"]
        for s in names:
            r = cell.get((load, s))
            row.append("—" if r is None else (
                f"{num(r.get('deliveries_per_s'))}/s, p50 {ms(p(r, 'p50'))} ms, "
                f"p99 {ms(p(r, 'p99'))} ms ({dec(r.get('server_cpu_us_per_delivery'))} µs)"
                f"{loss_note(r)}"))
        if "baseline" in names:
            base = cell.get((load, "baseline"))
            for s in gateways:
                r = cell.get((load, s))
                row.append(ratio(r and r.get("deliveries_per_s"),
                                 base and base.get("deliveries_per_s")))
        rows.append(row)
    return [*out, f"Broadcast to {' / '.join(f'{c:,}' for c in clients)} clients: delivered "
                  "frames/s, client-measured latency (push sent → frame parsed), and in "
                  "brackets the server's CPU µs per delivered frame. `baseline` is a bare "
                  "`websockets` server driven by the same load client; the ratio columns "
                  "divide deliveries/s by the baseline's at the same load.", "",
            *table(header, rows)]


def push_rows(runs: list[Result], *, label: Callable[[Result], str]) -> list[list[str]]:
    rows = []
    for r in sorted(runs, key=lambda r: (arg(r, "--batch"), rank(r["series"]),
                                         r.get("offered_push_rate") or 0)):
        rows.append([
            r["series"], label(r), num(r.get("offered_push_rate")),
            num(r.get("achieved_push_rate")), ms(p(r, "p50")), ms(p(r, "p99")),
            ms(p(r, "max")), f"{r.get('push_errors', 0):,}", f"{r.get('loss', 0):,}",
            dec(r.get("server_cpu_us_per_delivery")),
        ])
    return rows


PUSH_HEADER = ["server", "pushes per request", "offered pushes/s", "achieved pushes/s",
               "p50 ms", "p99 ms", "max ms", "push errors", "loss", "CPU µs/push"]


def targeted_section(results: list[Result]) -> list[str]:
    runs = of(results, "targeted") + of(results, "batch")
    out = ["### Targeted pushes through the REST API", ""]
    if not runs:
        return [*out, "_Not measured._"]
    clients = sorted({int(r.get("clients") or 0) for r in runs})
    return [*out, f"One random user of {' / '.join(f'{c:,}' for c in clients)} connected "
                  "clients per push: `POST /api/v1/push` (one push per request) and "
                  "`POST /api/v1/push/batch`; latency from the request to the frame.", "",
            *table(PUSH_HEADER, push_rows(
                runs, label=lambda r: "1" if arg(r, "--batch") == 1
                else f"{arg(r, '--batch')} (batch)"))]


def rocketmq_section(results: list[Result]) -> list[str]:
    runs = of(results, "rocketmq")
    out = ["### Through RocketMQ", ""]
    if not runs:
        return [*out, "_Not measured._"]
    return [*out, "Targeted pushes with `GATEWAY_BROKER=rocketmq`: accepted by the API, "
                  "published to RocketMQ, consumed by the node, delivered.", "",
            *table(PUSH_HEADER, push_rows(runs, label=lambda r: str(arg(r, "--batch"))))]


def idle_section(results: list[Result]) -> list[str]:
    runs = of(results, "idle")
    out = ["### Idle connections", ""]
    if not runs:
        return [*out, "_Not measured._"]
    base = next((r for r in runs if r["series"] == "baseline"), None)

    def to_base(r: Result, key: str) -> str:
        return "" if base is None or r is base else ratio(r.get(key), base.get(key))

    rows = []
    for r in sorted(runs, key=lambda r: rank(r["series"])):
        connect = r.get("connect") or {}
        rows.append([
            r["series"], f"{r.get('clients', 0):,}", f"{r.get('alive_at_end', 0):,}",
            num(connect.get("connect_per_s")), f"{connect.get('failed', 0):,}",
            dec(r.get("kb_per_connection")), to_base(r, "kb_per_connection"),
            dec(r.get("server_cpu_pct"), 2), to_base(r, "server_cpu_pct"),
            dec(r.get("server_rss_mb")),
        ])
    return [*out, "Connections opened as fast as the load client can, then held idle, each "
                  "sending the contract's heartbeat (`ping`, answered with `pong`); CPU over "
                  "the idle part, in % of one core. `baseline` is the bare `websockets` "
                  "server holding the same connections and answering the same pings.", "",
            *table(["server", "clients", "alive at end", "connects/s", "connect failures",
                    "KB per connection", "÷ baseline", "server CPU %", "÷ baseline",
                    "server RSS MB"], rows)]


def workers_pairs(results: list[Result]) -> dict[str, tuple[Result | None, Result | None]]:
    pairs: dict[str, list[Result | None]] = {}
    for r in of(results, "workers"):
        slot = pairs.setdefault(server(r), [None, None])
        slot[0 if arg(r, "--workers") == 1 else 1] = r
    return {s: (a, b) for s, (a, b) in pairs.items()}


def workers_section(results: list[Result]) -> list[str]:
    pairs = workers_pairs(results)
    out = ["### `rungateway --workers 2`", ""]
    if not pairs:
        return [*out, "_Not measured._"]

    def show(r: Result | None) -> str:
        if r is None:
            return "—"
        return (f"{num(r.get('deliveries_per_s'))}/s, p99 {ms(p(r, 'p99'))} ms, "
                f"CPU {dec(r.get('server_cpu_pct'))} %{loss_note(r)}")

    rows = [[s, show(a), show(b), ratio(b and b.get("deliveries_per_s"),
                                       a and a.get("deliveries_per_s"))]
            for s, (a, b) in sorted(pairs.items(), key=lambda kv: rank(kv[0]))]
    return [*out, "Broadcast to 1,000 clients, both on the Redis broker (and its channel "
                  "layer); CPU summed over the workers, in % of one core.", "",
            *table(["server", "1 worker", "2 workers", "gain"], rows)]


# --- the targets ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    #: The runs of one server that bear on the target (candidates).
    runs: Callable[[list[Result], str], list[Result]]
    #: Does this run meet the target?
    meets: Callable[[Result], bool]
    #: Larger is better: picks the run shown among those that meet the target...
    key: Callable[[Result], Any]
    show: Callable[[Result], str]
    #: ... and among all when none does (default: ``key``).
    near: Callable[[Result], Any] | None = None


def runs_in(grp: str, where: Callable[[Result], bool] = lambda r: True
            ) -> Callable[[list[Result], str], list[Result]]:
    def select(results: list[Result], srv: str) -> list[Result]:
        return [r for r in of(results, grp) if server(r) == srv and r.get("server") != "baseline"
                and where(r)]
    return select


def workers_runs(results: list[Result], srv: str) -> list[Result]:
    a, b = workers_pairs(results).get(srv, (None, None))
    if a is None or b is None:
        return []
    base, more = a.get("deliveries_per_s") or 0, b.get("deliveries_per_s") or 0
    return [{"gain": more / base if base else 0.0, "one": a, "two": b}]


def p99_below(r: Result, limit_ms: float) -> bool:
    value = p(r, "p99")
    return value is not None and value < limit_ms


def neg_p99(r: Result) -> float:
    value = p(r, "p99")
    return -value if value is not None else float("-inf")


BROADCAST_DELIVERIES, BROADCAST_P99_MS = 50_000, 50
SINGLE_PUSHES, BATCH_PUSHES, TARGETED_P99_MS = 1_500, 10_000, 50
ROCKETMQ_PUSHES, ROCKETMQ_P99_MS = 2_000, 100
IDLE_CONNECTIONS, IDLE_KB, HEARTBEAT_CPU_PCT, CONNECTS_PER_S = 19_000, 20, 5, 2_000


def behind(r: Result) -> str:
    offered = float(r.get("offered_push_rate") or 0)
    if offered and float(r.get("achieved_push_rate") or 0) < KEEP_UP * offered:
        return ", fell behind the offered rate"
    return ""


def show_push(r: Result) -> str:
    return (f"{num(r.get('achieved_push_rate'))}/s of {num(r.get('offered_push_rate'))} "
            f"offered, p99 {ms(p(r, 'p99'))} ms{loss_note(r)}{behind(r)}")


TARGETS: list[Target] = [
    Target(
        f"broadcast ≥ {BROADCAST_DELIVERIES:,} deliveries/s with p99 < {BROADCAST_P99_MS} ms",
        runs_in("broadcast"),
        lambda r: (keeps_up(r) and offered_deliveries(r) >= BROADCAST_DELIVERIES
                   and p99_below(r, BROADCAST_P99_MS)),
        lambda r: float(r.get("deliveries_per_s") or 0),
        lambda r: (f"{num(r.get('deliveries_per_s'))}/s delivered of {num(offered_deliveries(r))}"
                   f" offered, p99 {ms(p(r, 'p99'))} ms{loss_note(r)}{behind(r)}"),
        # none meets it: the run nearest to it, at the target load with the lowest p99
        lambda r: (offered_deliveries(r) >= BROADCAST_DELIVERIES, neg_p99(r)),
    ),
    Target(
        f"single-push REST ≥ {SINGLE_PUSHES:,} pushes/s",
        runs_in("targeted", lambda r: arg(r, "--batch") == 1),
        lambda r: keeps_up(r) and float(r.get("offered_push_rate") or 0) >= SINGLE_PUSHES,
        lambda r: float(r.get("achieved_push_rate") or 0),
        show_push,
    ),
    Target(
        f"batch REST ≥ {BATCH_PUSHES:,} pushes/s",
        runs_in("batch"),
        lambda r: keeps_up(r) and float(r.get("offered_push_rate") or 0) >= BATCH_PUSHES,
        lambda r: float(r.get("achieved_push_rate") or 0),
        show_push,
    ),
    Target(
        f"targeted p99 < {TARGETED_P99_MS} ms (single pushes at ≥ {SINGLE_PUSHES:,}/s)",
        runs_in("targeted", lambda r: arg(r, "--batch") == 1
                and float(r.get("offered_push_rate") or 0) >= SINGLE_PUSHES),
        lambda r: keeps_up(r) and p99_below(r, TARGETED_P99_MS),
        neg_p99,
        show_push,
    ),
    Target(
        f"RocketMQ {ROCKETMQ_PUSHES:,} pushes/s with p99 < {ROCKETMQ_P99_MS} ms",
        runs_in("rocketmq"),
        lambda r: (keeps_up(r) and float(r.get("offered_push_rate") or 0) >= ROCKETMQ_PUSHES
                   and p99_below(r, ROCKETMQ_P99_MS)),
        lambda r: float(r.get("achieved_push_rate") or 0),
        show_push,
    ),
    Target(
        f"{IDLE_CONNECTIONS:,} idle connections at ≤ {IDLE_KB} KB each",
        runs_in("idle"),
        lambda r: (int(r.get("alive_at_end") or 0) >= IDLE_CONNECTIONS
                   and float(r.get("kb_per_connection") or 0) <= IDLE_KB),
        lambda r: int(r.get("alive_at_end") or 0) - float(r.get("kb_per_connection") or 0) / 1e3,
        lambda r: (f"{r.get('alive_at_end', 0):,} alive, "
                   f"{dec(r.get('kb_per_connection'))} KB each"),
    ),
    Target(
        f"heartbeats of {IDLE_CONNECTIONS:,} connections < {HEARTBEAT_CPU_PCT} % of a core",
        runs_in("idle", lambda r: int(r.get("clients") or 0) >= IDLE_CONNECTIONS),
        lambda r: (int(r.get("alive_at_end") or 0) >= IDLE_CONNECTIONS
                   and float(r.get("server_cpu_pct") or 0) < HEARTBEAT_CPU_PCT),
        lambda r: -float(r.get("server_cpu_pct") or 0),
        lambda r: (f"{dec(r.get('server_cpu_pct'), 2)} % with "
                   f"{r.get('alive_at_end', 0):,} connections"),
    ),
    Target(
        f"connect ≥ {CONNECTS_PER_S:,}/s without failures ({IDLE_CONNECTIONS:,} clients)",
        runs_in("idle", lambda r: int(r.get("clients") or 0) >= IDLE_CONNECTIONS),
        lambda r: (float((r.get("connect") or {}).get("connect_per_s") or 0) >= CONNECTS_PER_S
                   and not (r.get("connect") or {}).get("failed")),
        lambda r: float((r.get("connect") or {}).get("connect_per_s") or 0),
        lambda r: (f"{num((r.get('connect') or {}).get('connect_per_s'))}/s, "
                   f"{(r.get('connect') or {}).get('failed', 0):,} failed"),
    ),
    Target(
        "`--workers 2` gains over one worker (broadcast deliveries/s)",
        workers_runs,
        lambda r: r["gain"] > 1 and clean(r["one"]) and clean(r["two"]),
        lambda r: float(r["gain"]),
        lambda r: (f"{r['gain']:.2f}x ({num(r['two'].get('deliveries_per_s'))} vs "
                   f"{num(r['one'].get('deliveries_per_s'))}/s"
                   f"{loss_note(r['one']) or loss_note(r['two'])})"),
    ),
]


@dataclass(frozen=True)
class Verdict:
    target: str
    server: str
    status: str  # "met", "not met", "not measured"
    value: str = ""

    def cell(self) -> str:
        if self.status == "not measured":
            return "not measured"
        return f"**{self.status}**: {self.value}"


def evaluate(results: list[Result], targets: list[Target] = TARGETS,
             servers: list[str] | None = None) -> list[Verdict]:
    servers = servers or gateway_servers(results)
    verdicts = []
    for t in targets:
        for srv in servers:
            runs = t.runs(results, srv)
            if not runs:
                verdicts.append(Verdict(t.name, srv, "not measured"))
                continue
            met = [r for r in runs if t.meets(r)]
            best = max(met, key=t.key) if met else max(runs, key=t.near or t.key)
            verdicts.append(Verdict(t.name, srv, "met" if met else "not met", t.show(best)))
    return verdicts


def gateway_servers(results: list[Result]) -> list[str]:
    found = {server(r) for r in results if r.get("server") != "baseline"}
    return GATEWAY_SERVERS + sorted(found - set(GATEWAY_SERVERS))


def targets_section(results: list[Result]) -> list[str]:
    servers = gateway_servers(results)
    verdicts = {(v.target, v.server): v for v in evaluate(results, servers=servers)}
    rows = [[t.name, *(verdicts[t.name, s].cell() for s in servers)] for t in TARGETS]
    return ["### Targets", "",
            "Computed from the runs below. Each cell is the best run of that server: among "
            "the runs that meet the target if any does. A throughput target is met by a run "
            f"offered at least the target rate that kept up with it (achieved ≥ "
            f"{KEEP_UP:.0%} of the offered pushes/s, no push error, no lost frame, no failed "
            "connection) within the latency bound; under a p99 bound all frames arrived in "
            "step with the load, so broadcast deliveries are offered pushes/s times clients.", "",
            *table(["target", *servers], rows)]


def missing_section(sweep: Sweep) -> list[str]:
    if not sweep.missing:
        return []
    lines = ["### Not measured in this sweep", ""]
    for m in sweep.missing:
        if m.get("scenario") == "skipped":
            why = f"skipped: {m.get('reason', '')}"
        elif "timeout_s" in m:
            why = f"timed out after {m['timeout_s']} s"
        else:
            last = (m.get("stderr") or "").strip().splitlines()[-1:] or [""]
            why = f"failed (exit {m.get('returncode')}): `{last[0][:160]}`"
        lines.append(f"- `{m.get('point', '?')}`: {why}")
    return lines


def render(sweep: Sweep, *, source: str = "bench/results/latest.jsonl",
           chart: str | None = None) -> str:
    """The Markdown that goes between the markers (without them)."""
    parts: list[list[str]] = [measured_line(sweep.meta, source)]
    if chart:
        parts.append([f"![Latency against load: broadcast and targeted pushes]({chart})"])
    for section in (targets_section, broadcast_section, targeted_section, rocketmq_section,
                    idle_section, workers_section):
        parts.append(section(sweep.results))
    parts.append(missing_section(sweep))
    return "\n\n".join("\n".join(wrap(line) for line in part) for part in parts if part)


def wrap(line: str, width: int = 92) -> str:
    """Prose wrapped like the rest of the docs; tables, headings and images left alone."""
    if len(line) <= width or line.startswith(("|", "#", "![")):
        return line
    return textwrap.fill(line, width, subsequent_indent="  " if line.startswith("- ") else "",
                         break_long_words=False, break_on_hyphens=False)


# --- the doc ----------------------------------------------------------------------------


def update_doc(text: str, generated: str) -> str:
    """``text`` with ``generated`` between the markers; the markers are put in place of the
    "## Preliminary results" section (or at the end) when missing. Nothing else changes."""
    block = f"{BEGIN}\n\n{generated.strip()}\n\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == REPLACED_SECTION), None)
    section = f"{SECTION_TITLE}\n\n{block}\n"
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(
        lines[end:])


# --- the chart --------------------------------------------------------------------------

COLOURS = {"baseline": "#7f7f7f", "daphne": "#1f77b4", "uvicorn": "#d62728"}


def draw_chart(sweep: Sweep, path: Path) -> None:
    """Broadcast and targeted p99 (p50 dashed) against the achieved rate, log latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    panels = [
        (left, of(sweep.results, "broadcast"), "deliveries_per_s",
         "Broadcast", "achieved deliveries/s"),
        (right, [r for r in of(sweep.results, "targeted") if arg(r, "--batch") == 1],
         "achieved_push_rate", "Targeted REST, one push per request", "achieved pushes/s"),
    ]
    for ax, runs, x_key, title, xlabel in panels:
        clients = sorted({int(r.get("clients") or 0) for r in runs})
        if clients:
            title += f" ({' / '.join(f'{c:,}' for c in clients)} clients)"
        values: list[float] = []
        for i, s in enumerate(series_order(r["series"] for r in runs)):
            pts = sorted((r for r in runs if r["series"] == s and p(r, "p99") is not None),
                         key=lambda r: r.get("offered_push_rate") or 0)
            if not pts:
                continue
            colour = COLOURS.get(s, f"C{i + 3}")
            xs = [float(r.get(x_key) or 0) for r in pts]
            p99s, p50s = [p(r, "p99") for r in pts], [p(r, "p50") for r in pts]
            ax.plot(xs, p99s, "o-", color=colour, label=f"{s} p99")
            ax.plot(xs, p50s, "o--", color=colour, alpha=0.6, markersize=3, label=f"{s} p50")
            values += [v for v in p99s + p50s if v]
        ax.axhline(50, color="black", linestyle=":", linewidth=1, label="50 ms target")
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _pos: f"{v / 1000:g}k" if v >= 10_000 else f"{v:,.0f}"))
        if values:
            ax.set_yscale("log")
            low, high = min([*values, 50]) / 1.5, max([*values, 50]) * 1.5
            ax.set_ylim(low, high)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            if high / low < 100:  # under two decades: label 2 and 5 too
                ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            else:
                ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("latency, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    meta = sweep.meta
    fig.suptitle(f"Push gateway latency against load — {when(meta)}, commit "
                 f"{meta.get('commit', '?')}" + (" (quick sweep)" if meta.get("quick") else ""),
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


# --- command ----------------------------------------------------------------------------


def shown_path(path: Path, start: Path) -> str:
    """``path`` as written from ``start`` (a link in the doc, a file in the repo), or as
    given when it lies outside the repository."""
    if not path.resolve().is_relative_to(REPO):
        return path.as_posix()
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", nargs="?", type=Path, default=DEFAULT_SWEEP)
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART)
    args = parser.parse_args(argv)
    sweep = load(args.sweep)
    draw_chart(sweep, args.chart)
    generated = render(sweep, source=shown_path(args.sweep, REPO),
                       chart=os.path.relpath(args.chart.resolve(), args.doc.parent.resolve()))
    text = args.doc.read_text()
    args.doc.write_text(update_doc(text, generated))
    print(f"{args.doc}: results from {args.sweep}; chart {args.chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

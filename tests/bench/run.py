"""Run every benchmark (ingress, egress, e2e) and print one table: each figure beside its
ceiling measured in the same run, the ratio, latencies, CPU and peak memory.

    python tests/bench/run.py            (also: make bench)
    python tests/bench/run.py --quick    (smaller runs, one round: a smoke test)
    python tests/bench/run.py --only e2e,egress

Each benchmark runs in a child process of its own (``run.py --one NAME``), which calls the
module's ``async def run(...) -> dict`` and prints the dict; its peak RSS is the child's
``ru_maxrss`` from wait4 (the measuring process, with the in-process bridge parts of
ingress/egress in it; e2e also reports the bridge's own process). A benchmark whose module
is missing is named in the output, and the exit code is 1. The whole run holds
/tmp/oscc-chaos.lock, so it never measures while a chaos test has RabbitMQ stopped.

At the end the table is printed again as Markdown, for the README, and written to
tests/bench/last-run.md (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import fcntl
import importlib
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHAOS_LOCK = Path("/tmp/oscc-chaos.lock")
BENCHES = ("ingress", "egress", "e2e")
MARK = "BENCH-RESULT "
# Smaller runs for --quick, applied only to keywords a module's run() accepts.
QUICK: dict[str, dict[str, Any]] = {
    "ingress": {"seconds": 2.0, "rounds": 1, "latency_seconds": 3.0},
    "egress": {"n": 2000, "rounds": 1},
    "e2e": {"n": 500, "latency_n": 100, "rounds": 1},
}
# What the ceiling is, when a result does not say it itself (key "ceiling" as text).
CEILINGS = {
    "ingress": "bare aiohttp + aio-pika webhook awaiting the same confirm (see the references)",
    "egress": "bare aiohttp client POSTing the same newContact bodies at the same "
    "concurrency to the same simulator",
    "e2e": "the bridge replaced by a bare aio-pika consumer + bare aiohttp webhook",
}
UNITS = {"ingress": "webhooks/s", "egress": "contacts/s", "e2e": "contacts/s"}


@dataclass
class Outcome:
    """One benchmark's result, or why there is none."""

    name: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    maxrss_kb: int = 0


# --- child: one benchmark ------------------------------------------------------------------


def one(name: str, quick: bool) -> int:
    """Import bench_<name>, run it, print its dict after MARK."""
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    module = importlib.import_module(f"bench_{name}")
    run = getattr(module, "run", None)
    if run is None or not inspect.iscoroutinefunction(run):
        print(f"bench_{name}.py has no `async def run(...) -> dict`", file=sys.stderr)
        return 1
    from bridge import logs

    logs.configure("warning", "console")
    accepted = inspect.signature(run).parameters
    kwargs = {k: v for k, v in QUICK.get(name, {}).items() if quick and k in accepted}
    result = asyncio.run(run(**kwargs))
    print(MARK + json.dumps(result), flush=True)
    return 0


# --- parent: every benchmark, then the table -----------------------------------------------


@contextlib.contextmanager
def no_chaos() -> Iterator[None]:
    """Hold the chaos tests' lock: a benchmark that runs while another test stops RabbitMQ
    measures nothing (and a chaos test does not want the load either)."""
    with CHAOS_LOCK.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {CHAOS_LOCK} (a chaos test is running) ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def spawn(name: str, quick: bool) -> Outcome:
    """Run one benchmark in a child process; its dict, error and peak RSS."""
    out = Outcome(name)
    if not (HERE / f"bench_{name}.py").exists():
        out.error = f"MISSING: tests/bench/bench_{name}.py does not exist (yet)"
        return out
    args = [sys.executable, str(Path(__file__).resolve()), "--one", name]
    print(f"--- {name}: {' '.join(args[1:])}{' --quick' if quick else ''}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        [*args, *(["--quick"] if quick else [])], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(MARK):
            out.result = json.loads(line[len(MARK) :])
        else:
            print(f"    {line}", end="", flush=True)
    # wait4, not wait: the rusage of this child alone, not of every child so far.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seconds = time.monotonic() - started
    out.maxrss_kb = usage.ru_maxrss
    if proc.returncode != 0 or not out.result:
        out.error = f"FAILED: exit code {proc.returncode}, no result"
    return out


def pick(result: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if result.get(key) is not None:
            return result[key]
    return None


def side_figure(result: dict[str, Any], side: str, word: str) -> Any:
    """A figure such as "p50" for "bridge" or "ceiling", whatever the module named it."""
    per_message = result.get("cpu_per_message")
    if word == "cpu" and isinstance(per_message, dict) and isinstance(per_message.get(side), dict):
        # bench_ingress: CPU of the measuring process, user + system, per message
        cpu = per_message[side]
        return cpu.get("process_user_us", 0.0) + cpu.get("process_system_us", 0.0)
    exact = pick(result, f"{side}_{word}_ms", f"{side}_{word}_us", f"{side}_{word}")
    if exact is not None:
        return exact
    for key, value in result.items():
        k = key.lower()
        is_ceiling = "ceiling" in k or "bare" in k
        if word in k and is_ceiling == (side == "ceiling") and isinstance(value, int | float):
            return value
    return None


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def pair(result: dict[str, Any], word: str, digits: int = 0) -> str:
    b, c = side_figure(result, "bridge", word), side_figure(result, "ceiling", word)
    if b is None and c is None:
        return "-"
    return f"{fmt(b, digits)} / {fmt(c, digits)}"


def rows(outcomes: list[Outcome]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes of the table."""
    header = [
        "benchmark",
        "bridge",
        "ceiling",
        "ratio",
        "p50 ms (bridge / ceiling)",
        "p99 ms (bridge / ceiling)",
        "CPU µs per message (bridge / ceiling)",
        "peak RSS MiB",
        "meets its target",
    ]
    table: list[list[str]] = []
    notes: list[str] = []
    for o in outcomes:
        r = o.result
        if o.error:
            table.append([o.name, o.error, *[""] * (len(header) - 2)])
            continue
        unit = UNITS.get(o.name, "/s")
        bridge = pick(r, "bridge_per_s", "bridge", "per_s", "throughput")
        ceiling = pick(r, "ceiling_per_s", "bare_per_s")
        ratio = r.get("ratio")
        if ratio is None and isinstance(bridge, int | float) and ceiling:
            ratio = bridge / ceiling
        target = pick(r, "target", "ratio_target")
        ratio_text = fmt(ratio, 2) + (f" (target ≥ {target:.2f})" if target else "")
        at = f" @ {r['rate']:g}/s" if isinstance(r.get("rate"), int | float) else ""
        ok = {True: "yes", False: "NO"}.get(r.get("ok"), "-")
        rss = f"{o.maxrss_kb / 1024:,.0f} (bench process)"
        if r.get("bridge_peak_rss_kb"):
            rss = (
                f"{r['bridge_peak_rss_kb'] / 1024:,.0f} bridge / "
                f"{(r.get('ceiling_peak_rss_kb') or 0) / 1024:,.0f} ceiling process"
            )
        table.append(
            [
                o.name,
                f"{fmt(bridge)} {unit}",
                f"{fmt(ceiling)} {unit}",
                ratio_text,
                pair(r, "p50", 1) + at,
                pair(r, "p99", 1) + at,
                pair(r, "cpu"),
                rss,
                ok,
            ]
        )
        ceiling_is = r.get("ceiling") if isinstance(r.get("ceiling"), str) else None
        notes.append(
            f"{o.name}: ceiling = {ceiling_is or CEILINGS.get(o.name, 'see the module')}; "
            f"ran {o.seconds:.0f} s; raw: {json.dumps(compact(r))}"
        )
    return header, table, notes


def reference_rows(outcomes: list[Outcome]) -> tuple[list[str], list[list[str]]]:
    """Every side a benchmark measured beside the bridge (its `references`), same run."""
    header = [
        "benchmark / side",
        "per s",
        "bridge ÷ side",
        "p50 ms",
        "p99 ms",
        "CPU µs per message (process)",
        "broker CPU µs per message",
        "peak RSS MiB",
    ]
    table: list[list[str]] = []
    for o in outcomes:
        refs = o.result.get("references")
        if not isinstance(refs, dict) or "bridge" not in refs:
            continue
        bridge = refs["bridge"]["per_s"]
        for name, r in refs.items():
            rss = r.get("peak_rss_kb")
            table.append(
                [
                    f"{o.name} / {name}",
                    fmt(r.get("per_s")),
                    fmt(bridge / r["per_s"], 2) if r.get("per_s") else "-",
                    fmt(r.get("p50_ms"), 1),
                    fmt(r.get("p99_ms"), 1),
                    fmt(r.get("cpu_us")),
                    fmt(r.get("broker_us")),
                    fmt(rss / 1024 if rss else None),
                ]
            )
    return header, table


def compact(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not (k == "ceiling" and isinstance(v, str))}


def plain(header: list[str], table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(out)


def markdown(header: list[str], table: list[list[str]], notes: list[str], context: str) -> str:
    out = [f"Benchmarks, {context}", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" for _ in header) + "|")
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table]
    out.append("")
    out += [f"- {n}" for n in notes]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, one round")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one, args.quick)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    with no_chaos():
        load = os.getloadavg()  # what else keeps the machine busy while we measure
        context = (
            f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load "
            f"{load[0]:.1f} at start, Python {sys.version.split()[0]}"
            f"{', --quick' if args.quick else ''}"
        )
        outcomes = [spawn(name, args.quick) for name in names]
    header, table, notes = rows(outcomes)
    print("\n" + plain(header, table))
    ref_header, ref_table = reference_rows(outcomes)
    if ref_table:
        print("\n" + plain(ref_header, ref_table))
    for note in notes:
        print(f"  {note}")
    md = markdown(header, table, notes, context)
    if ref_table:
        md += "\n\n" + markdown(ref_header, ref_table, [], "references, same run").split("\n", 2)[2]
    print("\n" + md)
    (HERE / "last-run.md").write_text(md + "\n")
    print(f"\n(written to {HERE / 'last-run.md'})")
    failed = [o.name for o in outcomes if o.error]
    if failed:
        print(f"not measured: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

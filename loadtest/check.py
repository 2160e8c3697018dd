"""Correctness checks around a load run (h2load only sees HTTP status; gRPC status is in trailers).

check.py decide --target 127.0.0.1:P --customer C0000042 [--wait 30]
    wait until the server answers a real Decide (server.api.client.NboClient, the same request as
    make_body.py writes) and fail unless it returns at least one offer
check.py xlen --redis redis://127.0.0.1:P/0
    length of the decision stream nbo:log:decisions
check.py stream --redis URL --last N [--settle 2]
    wait until the stream stops growing, then tally the last N decision records: how many
    chose an offer, the no-offer reasons, degraded ones (JSON)
check.py cpu server=1234+ redis=999
    one JSON line of CPU time (clock ticks, user + system) of labelled processes ("+": the
    process and its children, e.g. `nbo serve` and its workers) and of the whole machine
    (/proc/stat fields); two snapshots around a run tell who used the cores
check.py metrics http://127.0.0.1:M0/ http://127.0.0.1:M1/
    one JSON line of the server's Prometheus counters (one URL per worker): decisions by
    no-offer reason, Redis errors, log records dropped, server-side decision time; two
    snapshots around a run count what the server did, degraded decisions included (those
    are not written to the decision stream)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STREAM = "nbo:log:decisions"


def cmd_decide(opts: argparse.Namespace) -> int:
    import grpc

    from loadtest.make_body import DEFAULT_CONTEXT, DEFAULT_EVENTS
    from server.api.client import NboClient

    deadline = time.monotonic() + opts.wait
    client = NboClient(opts.target, timeout=2.0)
    try:
        while True:
            try:
                resp = client.decide(
                    opts.customer, "web", max_offers=1, context=DEFAULT_CONTEXT, events=DEFAULT_EVENTS,
                    placement="home_hero",
                )  # fmt: skip
                break
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    print(f"FAIL: Decide({opts.customer}) -> {err.code().name}: {err.details()}")
                    return 1
                time.sleep(0.2)
    finally:
        client.close()
    offers = [f"{o.offer_id} ({o.campaign_type}, EV {o.expected_value:.2f})" for o in resp.offers]
    if not offers:
        reason = resp.no_offer_reason
        print(f"FAIL: Decide({opts.customer}) returned no offer: reason {reason}, degraded={resp.degraded}")
        return 1
    print(f"OK: Decide({opts.customer}, web) -> {', '.join(offers)}; catalog {resp.catalog_version}")
    return 0


def _client(url: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(url)


def cmd_xlen(opts: argparse.Namespace) -> int:
    print(_client(opts.redis).xlen(STREAM))
    return 0


def cmd_stream(opts: argparse.Namespace) -> int:
    from server.state.records import record_data

    r = _client(opts.redis)
    # the log writer flushes every 50 ms; wait until the length is stable
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        n = r.xlen(STREAM)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since >= opts.settle:
            break
        time.sleep(0.1)
    tally: Counter[str] = Counter()
    with_offer = degraded = total = 0
    for _id, fields in r.xrevrange(STREAM, count=opts.last):
        rec = record_data(fields)
        total += 1
        with_offer += bool(rec["chosen"])
        degraded += bool(rec["degraded"])
        tally[rec["no_offer_reason"] or "none"] += 1
    print(
        json.dumps(
            {"xlen": last, "tallied": total, "with_offer": with_offer, "degraded": degraded, "reasons": dict(tally)}
        )
    )
    return 0


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def cmd_cpu(opts: argparse.Namespace) -> int:
    print(json.dumps(cpu_snapshot(opts.procs)))
    return 0


def cpu_snapshot(items: list[str]) -> dict[str, object]:
    """CPU clock ticks of labelled processes ("LABEL=PID", "+" = with children) and of the machine."""
    import os

    procs: dict[str, int] = {}
    for item in items:
        label, _, spec = item.partition("=")
        with_children = spec.endswith("+")
        pid = int(spec.rstrip("+"))
        pids = [pid, *(_children(pid) if with_children else [])]
        procs[label] = sum(_ticks(p) for p in pids)
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    cpu = dict(zip(names, (int(x) for x in fields), strict=True))
    return {"t": time.monotonic(), "hz": os.sysconf("SC_CLK_TCK"), "ncpu": os.cpu_count(), "stat": cpu, "procs": procs}


def snapshot(urls: list[str]) -> dict[str, object]:
    """The server's counters, per worker URL and in total (see `metrics` above)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, object] = {"workers": []}
    total: Counter[str] = Counter()
    for url in urls:
        mine: Counter[str] = Counter()
        try:
            text = urlopen(url, timeout=5).read().decode()
        except OSError as err:
            out["workers"].append({"url": url, "error": str(err)})  # type: ignore[attr-defined]
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "nbo_decisions_total":
                    mine[f"decisions:{labels.get('reason')}"] += value
                    mine["decisions"] += value
                elif name in ("nbo_redis_errors_total",):
                    mine[f"redis_errors:{labels.get('op')}"] += value
                elif name in ("nbo_log_records_dropped_total", "nbo_log_records_written_total"):
                    mine[name.removeprefix("nbo_").removesuffix("_total")] += value
                elif name in ("nbo_decision_seconds_sum", "nbo_decision_seconds_count"):
                    mine[name.removeprefix("nbo_")] += value
                elif name == "nbo_model_loads_total":
                    mine[f"model_loads:{labels.get('result')}"] += value
        out["workers"].append({"url": url, "decisions": mine["decisions"]})  # type: ignore[attr-defined]
        total.update(mine)
    out["total"] = dict(total)
    return out


def cmd_metrics(opts: argparse.Namespace) -> int:
    print(json.dumps(snapshot(opts.urls)))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("decide")
    p.add_argument("--target", required=True)
    p.add_argument("--customer", required=True)
    p.add_argument("--wait", type=float, default=30.0)
    p.set_defaults(func=cmd_decide)
    p = sub.add_parser("xlen")
    p.add_argument("--redis", required=True)
    p.set_defaults(func=cmd_xlen)
    p = sub.add_parser("stream")
    p.add_argument("--redis", required=True)
    p.add_argument("--last", type=int, default=1000)
    p.add_argument("--settle", type=float, default=1.0)
    p.set_defaults(func=cmd_stream)
    p = sub.add_parser("cpu")
    p.add_argument("procs", nargs="*", metavar="LABEL=PID[+]")
    p.set_defaults(func=cmd_cpu)
    p = sub.add_parser("metrics")
    p.add_argument("urls", nargs="+")
    p.set_defaults(func=cmd_metrics)
    opts = parser.parse_args()
    return int(opts.func(opts))


if __name__ == "__main__":
    raise SystemExit(main())

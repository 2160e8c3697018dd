"""Checks and the summary of the production load mix (loadtest/production.py).

`check(size)` lists what makes a catalog size's run unclean: the verification count (the
server's decision counter grew by exactly the requests h2load completed), degraded decisions,
Redis errors, dropped log records, failed requests, outcome-reporter errors, a model version
other than the published one. `write_report` writes summary.md (the table: every NBO figure
with the echo figure of the same run and the ratio) and report.json (everything measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any


def clean_counts(m0: dict[str, float], m1: dict[str, float]) -> dict[str, Any]:
    """What the server did between two metric snapshots, and whether all of it was clean."""
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
    errors = sum(v for k, v in d.items() if k.startswith("redis_errors"))
    out = {
        "decisions": int(d.get("decisions", 0)),
        "degraded": int(d.get("decisions:degraded", 0)),
        "redis_errors": int(errors),
        "log_records_dropped": int(d.get("log_records_dropped", 0)),
        "reasons": {k[10:]: int(v) for k, v in d.items() if k.startswith("decisions:") and v},
    }
    if d.get("decision_seconds_count"):
        out["server_mean_ms"] = round(1000 * d["decision_seconds_sum"] / d["decision_seconds_count"], 3)
    out["clean"] = out["degraded"] == 0 and out["redis_errors"] == 0 and out["log_records_dropped"] == 0
    return out


def check(size: dict[str, Any]) -> list[str]:
    problems = []
    v = size["verify"]
    done = v["h2load"].get("succeeded", 0)
    if v["server"]["decisions"] != done or v["h2load"].get("total") != done:
        problems.append(f"verification: {v['server']['decisions']} decisions for {done} of {v['h2load'].get('total')}")
    runs = [v, size["half"]["nbo"], size["one"]["nbo"], *(lv["nbo"] for lv in size["levels"])]
    if any(r.get("failed") or r["h2load"].get("failed") or r["h2load"].get("errored") for r in runs):
        problems.append("failed requests")
    total = size["server_total"]
    if not (v["server"]["clean"] and total["clean"]):
        problems.append(f"unclean decisions: verification {v['server']}, whole run {total}")
    if size["outcomes"]["errors"] or size["outcomes"]["degraded"]:
        problems.append(f"outcome reporter: {size['outcomes']}")
    if not size["model_live"]:
        problems.append(f"model version {size['model_version']!r} is not the published one")
    return problems


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _lat(run: dict[str, Any]) -> str:
    return f"{run.get('p50_ms', 0):.2f} / {run.get('p99_ms', 0):.2f}" if run.get("requests") else "-"


def table(sizes: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| offers | saturation NBO / echo req/s (ratio) | at | gen. cores | 50 %: offered req/s | "
        "p50 / p99 ms NBO | echo | 1 in flight p50 ms NBO / echo (ratio) | worker RSS MB | foreign cores | clean |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        sat, best = s["saturation"], next(lv for lv in s["levels"] if lv["streams"] == s["saturation"]["streams"])
        half, one = s["half"], s["one"]
        offered = half["rps_per_connection"] * s["processes"]
        rows.append(
            f"| {s['size']} | {sat['nbo']:,.0f} / {sat['echo']:,.0f} ({_ratio(sat['nbo'], sat['echo'])}) "
            f"| {s['processes']} x {sat['streams']} | {best['nbo']['generator_cores']} "
            f"| {offered:,.0f} (got {half['nbo'].get('rps') or 0:,.0f}) | {_lat(half['nbo'])} | {_lat(half['echo'])} "
            f"| {one['nbo'].get('p50_ms', 0):.2f} / {one['echo'].get('p50_ms', 0):.2f} "
            f"({_ratio(one['nbo'].get('p50_ms'), one['echo'].get('p50_ms'))}) "
            f"| {', '.join(f'{x:.0f}' for k, x in s['rss_mb'].items() if k.startswith('worker'))} "
            f"| {best['nbo']['cores']['foreign']} / {half['nbo']['cores']['foreign']} "
            f"| {'yes' if not s['problems'] else 'NO'} |"
        )
    return rows


def write_report(opts: Any, sizes: list[dict[str, Any]], bodies: list[Any], pool: int) -> bool:
    for s in sizes:
        s["problems"] = check(s)
        s["processes"] = len(bodies)
        s["bodies"] = [{"customer": b.customer, "kind": b.kind} for b in bodies]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    web = sum(b.kind == "web" for b in bodies)
    lines = [
        f"# Production load mix ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs)",
        "",
        f"`nbo serve --workers {opts.workers} --learner`, LightGBM model published (lleaves), bandit on, every 5th "
        f"offer budgeted (total and daily); {opts.customers:,} customers loaded; {len(bodies)} h2load processes of "
        f"1 connection, customers drawn from a Zipf law (s = {opts.zipf}) over {pool:,} eligible customers "
        f"({len({b.customer for b in bodies})} distinct); {web} web top-1 : {len(bodies) - web} call-centre top-3 "
        f"with explain; outcome reporter at {opts.outcome_rate:g} decisions/s. Runs {opts.duration:g} s after "
        f"{opts.warmup:g} s warm-up; saturation = best clean level of streams {opts.streams}; 50 % = open loop, "
        "h2load --rps per connection; gen. cores = CPU of all h2load processes at saturation; foreign "
        "cores = the machine's busy time not used by NBO, Redis, echo or h2load (other work on a shared box), "
        "at saturation / at 50 %.",
        "",
        *table(sizes),
        "",
    ]
    for s in sizes:
        out, tot = s["outcomes"], s["server_total"]
        share = out["decisions"] / tot["decisions"] if tot["decisions"] else 0.0
        lines.append(
            f"- {s['size']} offers: model {s['model_version']}; verification {s['verify']['server']['decisions']} "
            f"decisions = {s['verify']['h2load'].get('succeeded')} requests; "
            f"whole size: {tot['decisions']:,} decisions, "
            f"degraded {tot['degraded']}, Redis errors {tot['redis_errors']}, reasons {tot['reasons']}; "
            f"server mean {tot.get('server_mean_ms', '-')} ms; outcomes for {out['decisions']} decisions "
            f"({share:.2%} of them), {out['outcomes']} outcomes ({out['accepted']} accepted); "
            f"Redis after the size: {s['redis']['used_mb']:,.0f} MB used, {s['redis']['keys']:,} keys, decision "
            f"stream {s['redis']['stream_entries']:,} entries; problems: {'; '.join(s['problems']) or 'none'}"
        )
    (opts.results / "summary.md").write_text("\n".join(lines) + "\n")
    (opts.results / "report.json").write_text(json.dumps({"sizes": sizes}, indent=1, default=str))
    return not any(s["problems"] for s in sizes)

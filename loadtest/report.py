"""Write loadtest/results/summary.md from what run.sh recorded (runs.tsv, runs/*, checks.md).

Per run: throughput and latency percentiles from h2load's per-request logs; for the NBO server
the decisions its Prometheus counters saw (by no-offer reason, degraded ones included, and per
worker); who used the CPU (server, Redis, h2load, kernel, anything else on the machine).
Saturation is the best req/s over the levels, counting only clean runs (no failed requests, no
degraded decisions, no Redis errors) -- a fail-closed "send nothing" is cheap and would flatter
the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from percentiles import parse_h2load, summarize


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cpu(prefix: str) -> dict[str, float]:
    """Cores used over the run (CPU seconds / wall seconds) by who used them."""
    a, b = _json(Path(f"{prefix}.cpu0")), _json(Path(f"{prefix}.cpu1"))
    if not a or not b:
        return {}
    wall = b["t"] - a["t"]
    if wall <= 0:
        return {}
    hz = a["hz"]
    st = {k: (b["stat"][k] - a["stat"][k]) / hz / wall for k in a["stat"]}
    out = {k: (b["procs"][k] - a["procs"][k]) / hz / wall for k in a["procs"]}
    h2 = 0.0
    for t in Path(prefix).parent.glob(Path(prefix).name + ".time.*"):
        try:
            user, system, _elapsed = (float(x) for x in t.read_text().split()[-3:])
            h2 += user + system
        except ValueError:
            pass
    out["h2load"] = h2 / wall
    out["kernel"] = st["irq"] + st["softirq"]
    processes = st["user"] + st["nice"] + st["system"]
    out["foreign"] = max(processes - sum(v for k, v in out.items() if k != "kernel"), 0.0)
    out["steal"] = st["steal"]
    out["total"] = processes + out["kernel"]
    return out


def _metrics(prefix: str) -> dict[str, Any]:
    a, b = _json(Path(f"{prefix}.m0")), _json(Path(f"{prefix}.m1"))
    if not a or not b:
        return {}
    ta, tb = a["total"], b["total"]
    d = {k: tb.get(k, 0) - ta.get(k, 0) for k in tb}
    per_worker = [
        wb.get("decisions", 0) - wa.get("decisions", 0) for wa, wb in zip(a["workers"], b["workers"], strict=False)
    ]
    d["per_worker"] = per_worker
    n = d.get("decision_seconds_count", 0)
    d["server_mean_ms"] = 1000 * d.get("decision_seconds_sum", 0) / n if n else None
    return d


def load_runs(results: Path) -> list[dict[str, Any]]:
    runs = []
    for row in (results / "runs.tsv").read_text().splitlines():
        if not row.strip():
            continue
        name, kind, clients, streams, procs, rep, prefix = row.split("\t")
        pre = Path(prefix)
        logs = sorted(pre.parent.glob(pre.name + ".log.*"))
        outs = sorted(pre.parent.glob(pre.name + ".out.*"))
        h2 = [parse_h2load(o.read_text()) for o in outs]
        stats = summarize(logs)
        m = _metrics(prefix)
        failed = stats.get("failed", 0) + sum(
            h.get("failed", 0) + h.get("errored", 0) + h.get("timeout", 0) + h.get("4xx", 0) + h.get("5xx", 0)
            for h in h2
        )
        degraded = m.get("decisions:degraded", 0)
        redis_errors = sum(v for k, v in m.items() if k.startswith("redis_errors"))
        runs.append(
            {
                "server": name,
                "kind": kind,
                "clients": int(clients),
                "streams": int(streams),
                "procs": int(procs),
                "rep": int(rep),
                "inflight": int(clients) * int(streams),
                "stats": stats,
                "failed": failed,
                "metrics": m,
                "degraded": degraded,
                "redis_errors": redis_errors,
                "clean": bool(stats.get("requests")) and failed == 0 and degraded == 0 and redis_errors == 0,
                "cpu": _cpu(prefix),
                "cmd": Path(f"{prefix}.cmd").read_text().strip() if Path(f"{prefix}.cmd").exists() else "",
            }
        )
    return runs


def _fmt_cpu(cpu: dict[str, float], server: str) -> str:
    if not cpu:
        return ""
    keep = [server, "redis", "h2load", "kernel", "foreign"] if server == "nbo" else [server, "h2load", "kernel"]
    keep += [] if server == "nbo" else ["foreign"]
    parts = [f"{k} {cpu[k]:.2f}" for k in keep if k in cpu]
    if cpu.get("steal", 0) >= 0.05:
        parts.append(f"steal {cpu['steal']:.2f}")
    return ", ".join(parts)


def _fmt_decisions(r: dict[str, Any]) -> str:
    m = r["metrics"]
    if not m:
        return ""
    total = m.get("decisions", 0)
    offers = m.get("decisions:none", 0)
    text = f"{total:.0f}: {offers:.0f} offer"
    others = {k[10:]: v for k, v in m.items() if k.startswith("decisions:") and k != "decisions:none" and v}
    if others:
        text += ", " + ", ".join(f"{v:.0f} {k}" for k, v in others.items())
    if r["redis_errors"]:
        text += f"; Redis errors {r['redis_errors']:.0f}"
    split = m.get("per_worker") or []
    if len(split) > 1 and total:
        text += " (workers " + "/".join(f"{100 * w / total:.0f}%" for w in split) + ")"
    return text


def table(runs: list[dict[str, Any]], server: str, best: set[int]) -> list[str]:
    nbo = server == "nbo"
    head = "| run | clients x streams | in flight | req/s | p50 ms | p90 ms | p99 ms | max ms | failed |"
    sep = "|---|---|---|---|---|---|---|---|---|"
    if nbo:
        head += " decisions (server metrics) | server ms |"
        sep += "---|---|"
    head += " CPU cores: who |"
    sep += "---|"
    lines = [head, sep]
    for r in sorted(runs, key=lambda r: (r["kind"] != "sweep", r["inflight"], r["rep"])):
        s = r["stats"]
        kind = f"{r['kind']} {r['rep']}" + (f" ({r['procs']} customers)" if r["procs"] > 1 else "")
        if id(r) in best:
            kind = f"**{kind}**"
        if not s.get("requests"):
            lines.append(f"| {kind} | {r['clients']} x {r['streams']} | {r['inflight']} | no requests |")
            continue
        row = (
            f"| {kind} | {r['clients']} x {r['streams']} | {r['inflight']} | {s['rps']:.0f} | {s['p50_ms']:.2f} | "
            f"{s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.1f} | {r['failed']} |"
        )
        if nbo:
            mean = r["metrics"].get("server_mean_ms")
            row += f" {_fmt_decisions(r)} | {'' if mean is None else f'{mean:.2f}'} |"
        row += f" {_fmt_cpu(r['cpu'], server)} |"
        lines.append(row)
    return lines


def best_per_level(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best clean sweep run at each concurrency level (over the repeats)."""
    levels: dict[tuple[int, int], dict[str, Any]] = {}
    for r in runs:
        if r["kind"] != "sweep" or not r["clean"]:
            continue
        key = (r["clients"], r["streams"])
        if key not in levels or r["stats"]["rps"] > levels[key]["stats"]["rps"]:
            levels[key] = r
    return sorted(levels.values(), key=lambda r: r["inflight"])


def _public_cmd(cmd: str) -> str:
    cmd = re.sub(r"(-d )\S+", r"\1loadtest/results/body.bin", cmd)
    cmd = re.sub(r"(--log-file )\S+", r"\1run.log", cmd)
    return cmd.replace("content-type:\\ application/grpc", "'content-type: application/grpc'").replace(
        "te:\\ trailers", "'te: trailers'"
    )


def _versions() -> str:
    def first_line(args: list[str]) -> str:
        try:
            return subprocess.run(args, check=False, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    import grpc

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} CPU(s) ({model}); {first_line(['h2load', '--version'])}; "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--customer", required=True)
    parser.add_argument("--multi", default="")
    opts = parser.parse_args()
    runs = load_runs(opts.results)
    out = [
        "# NBO load test",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {_versions()}.",
        "",
        f"`nbo serve` and the echo baseline, {opts.workers} worker processes each, run side by side; each "
        "concurrency level is run against NBO, then against echo. NBO: private Redis, "
        f"{opts.customers} synthetic customers, 100-offer catalog (`catalog.yaml` here). h2load: one "
        f"thread, {opts.duration:g} s measured after {opts.warmup:g} s warm-up per run. Body (`body.bin` here): "
        f"one Decide for customer {opts.customer} on WEB, max_offers 1, with context and events.",
        "",
        "CPU column: cores used during the run by the server's processes, Redis, h2load, the kernel "
        "(irq/softirq) and `foreign` = every other process on the machine (this box is shared; a run "
        "with much foreign CPU was disturbed). Bold rows: the best clean run of each level, used below.",
        "",
    ]
    headline: list[str] = []
    peaks: dict[str, dict[str, Any]] = {}
    for server, title in (("nbo", "NBO server (`nbo serve`)"), ("echo", "Echo baseline (`loadtest/echo_server.py`)")):
        mine = [r for r in runs if r["server"] == server]
        if not mine:
            continue
        best = best_per_level(mine)
        out += [f"## {title}", "", *table(mine, server, {id(r) for r in best}), ""]
        unclean = [r for r in mine if not r["clean"]]
        if unclean:
            out += [
                "Not clean (left out of the figures below): "
                + "; ".join(
                    f"{r['kind']} {r['rep']} {r['clients']}x{r['streams']}: {r['failed']} failed, "
                    f"{r['degraded']:.0f} degraded, {r['redis_errors']:.0f} Redis errors"
                    for r in unclean
                ),
                "",
            ]
        if not best:
            continue
        peak = max(best, key=lambda r: r["stats"]["rps"])
        knee = min((r for r in best if r["stats"]["rps"] >= 0.9 * peak["stats"]["rps"]), key=lambda r: r["inflight"])
        peaks[server] = peak
        ps, ks = peak["stats"], knee["stats"]
        text = (
            f"**{server}**: saturation **{ps['rps']:.0f} req/s** at {peak['inflight']} in flight "
            f"({peak['clients']} connections x {peak['streams']} streams): p50 {ps['p50_ms']:.2f} ms, "
            f"p99 {ps['p99_ms']:.2f} ms."
        )
        if knee is not peak:
            text += (
                f" Within 90 % of it already at {knee['inflight']} in flight ({knee['clients']} x {knee['streams']}): "
                f"{ks['rps']:.0f} req/s, p50 {ks['p50_ms']:.2f} ms, p99 {ks['p99_ms']:.2f} ms."
            )
        one = next((r for r in best if r["inflight"] == 1), None)
        if one:
            text += (
                f" One request at a time: {one['stats']['rps']:.0f} req/s, p50 {one['stats']['p50_ms']:.2f} ms, "
                f"p99 {one['stats']['p99_ms']:.2f} ms."
            )
        headline.append(text)
        out += [text, ""]
        if peak["cmd"]:
            out += ["Command of that run:", "", "```", _public_cmd(peak["cmd"]), "```", ""]
    if "nbo" in peaks and "echo" in peaks:
        ratio = peaks["nbo"]["stats"]["rps"] / peaks["echo"]["stats"]["rps"]
        headline.append(f"NBO reaches {ratio:.0%} of the echo baseline's throughput.")
    checks = (opts.results / "checks.md").read_text().strip() if (opts.results / "checks.md").exists() else ""
    out += ["## Checks", "", *(f"- {line}" for line in checks.splitlines() if line.strip()), ""]
    if opts.multi.strip():
        out += [f"Customers of the multi-customer run (one h2load process each): {opts.multi}.", ""]
    if (opts.results / "profile_top.txt").exists():
        out += ["py-spy profile of one NBO worker: `profile_top.txt`, raw stacks `profile.txt`.", ""]
    out += ["## Headline", "", *(f"- {h}" for h in headline), ""]
    (opts.results / "summary.md").write_text("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

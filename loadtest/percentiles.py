"""Latency percentiles from h2load per-request logs (--log-file), and h2load's own summary.

h2load's log has one tab-separated row per request: start time (us since the epoch), HTTP status
(-1 for a failed stream) and the time until the end of the response (us). Several logs (from
h2load processes run side by side) are merged.

    percentiles.py run.log [more.log ...]          # one human-readable line
    percentiles.py --json run.log                  # the same as JSON
    percentiles.py --h2load-out run.out run.log    # also parse h2load's stdout (req/s, failures)

Note: HTTP status 200 says nothing about the gRPC status, which travels in the trailers
(grpc-status); run.sh checks success separately (a real Decide call and the decision stream).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

PCTS = (50, 90, 99, 99.9)


def read_logs(paths: Iterable[Path]) -> np.ndarray:
    """Rows of (start_us, status, duration_us) as an int64 array of shape (n, 3)."""
    rows: list[np.ndarray] = []
    for path in paths:
        text = Path(path).read_text()
        if not text.strip():
            continue
        data = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2), ndmin=2, delimiter="\t")
        rows.append(data)
    return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)


def summarize(paths: Iterable[Path]) -> dict[str, Any]:
    data = read_logs(paths)
    n = len(data)
    out: dict[str, Any] = {"requests": n}
    if n == 0:
        return out
    start, status, dur = data[:, 0], data[:, 1], data[:, 2]
    ok = status == 200
    out["http_200"] = int(ok.sum())
    out["failed"] = int(n - ok.sum())
    span_s = float((start + dur).max() - start.min()) / 1e6
    out["span_s"] = round(span_s, 3)
    out["rps"] = round(n / span_s, 1) if span_s > 0 else None
    lat_ms = dur[ok] / 1000.0 if ok.any() else dur / 1000.0
    for p in PCTS:
        out[f"p{p:g}_ms"] = round(float(np.percentile(lat_ms, p)), 3)
    out["mean_ms"] = round(float(lat_ms.mean()), 3)
    out["max_ms"] = round(float(lat_ms.max()), 3)
    return out


_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def parse_h2load(text: str) -> dict[str, Any]:
    """The numbers of h2load's stdout summary (only those found)."""
    out: dict[str, Any] = {}
    if m := re.search(rf"finished in {_NUM}(m?s), {_NUM} req/s", text):
        secs = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
        out["finished_s"], out["h2load_rps"] = secs, float(m.group(3))
    if m := re.search(
        rf"requests: {_NUM} total, {_NUM} started, {_NUM} done, {_NUM} succeeded, {_NUM} failed, "
        rf"{_NUM} errored, {_NUM} timeout",
        text,
    ):
        for key, val in zip(
            ("total", "started", "done", "succeeded", "failed", "errored", "timeout"), m.groups(), strict=True
        ):
            out[key] = int(val)
    if m := re.search(rf"status codes: {_NUM} 2xx, {_NUM} 3xx, {_NUM} 4xx, {_NUM} 5xx", text):
        out["2xx"], out["3xx"], out["4xx"], out["5xx"] = (int(g) for g in m.groups())
    if m := re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text):
        out["h2load_min"], out["h2load_max"], out["h2load_mean"], out["h2load_sd"] = m.groups()
    return out


def line(s: dict[str, Any]) -> str:
    if not s.get("requests"):
        return "no requests logged"
    pcts = "  ".join(f"p{p:g} {s[f'p{p:g}_ms']:.2f} ms" for p in PCTS)
    return (
        f"{s['requests']} requests ({s['failed']} not HTTP 200) in {s['span_s']:.1f}s = {s['rps']:.0f} req/s  "
        f"{pcts}  mean {s['mean_ms']:.2f} ms  max {s['max_ms']:.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--h2load-out", type=Path, action="append", default=[], help="h2load stdout to parse")
    opts = parser.parse_args()
    result = summarize(opts.logs)
    if opts.h2load_out:
        result["h2load"] = [parse_h2load(p.read_text()) for p in opts.h2load_out]
    if opts.json:
        json.dump(result, sys.stdout)
        print()
    else:
        print(line(result))
        for h in result.get("h2load", []):
            print("h2load:", h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The stored `nbo retrain` comparisons: one JSON record per run in a Redis list, oldest first.

The list (`Keys.retrain_comparisons`) is only ever appended to (RPUSH), so the history of what
was compared, and why a champion stayed or a challenger went live, cannot be rewritten by a
later run.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import redis

from server.state.keys import Keys


def append_record(client: redis.Redis, keys: Keys, record: dict[str, Any]) -> int:
    """Append a run's record; its 1-based position in the list."""
    return int(client.rpush(keys.retrain_comparisons, json.dumps(record, allow_nan=False)))


def list_records(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(keys.retrain_comparisons, 0, -1)]


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _diff(figures: dict[str, Any] | None, group: str, name: str, digits: int) -> str:
    if not figures:
        return "-"
    d = figures[group][name]
    if d["estimate"] is None:
        return "n/a"
    low, high = (math.nan if d[k] is None else d[k] for k in ("low", "high"))
    return f"{d['estimate']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def table_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per run, oldest first: when, versions, counts, the differences and the verdict."""
    header = (
        f"{'#':>3}  {'run at (UTC)':<16}  {'champion':<24}  {'challenger':<24}  {'train':>7}  {'holdout':>7}  "
        f"{'AUC diff [95%]':<26}  {'log-loss diff [95%]':<26}  {'DR value diff [95%]':<26}  verdict"
    )
    lines = [header]
    for i, r in enumerate(records, 1):
        counts = r.get("counts") or {}
        f = r.get("figures")
        lines.append(
            f"{i:>3}  {_when(r.get('at')):<16}  {r.get('champion')!s:<24}  {r.get('challenger') or '-'!s:<24}  "
            f"{counts.get('train', '-'):>7}  {counts.get('holdout', '-'):>7}  "
            f"{_diff(f, 'difference', 'auc', 4):<26}  {_diff(f, 'difference', 'log_loss', 4):<26}  "
            f"{_diff(f, 'dr_difference', 'value', 3):<26}  {r.get('verdict')}"
        )
    return lines


def _fmt(x: float | None, digits: int = 4, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _iv(d: dict[str, Any], digits: int = 4, sign: bool = False) -> str:
    return f"{_fmt(d['estimate'], digits, sign)} [{_fmt(d['low'], digits, sign)}, {_fmt(d['high'], digits, sign)}]"


def record_lines(r: dict[str, Any]) -> list[str]:
    """A run's record for people: window and counts, both models' figures, the verdict and why."""
    w = r["window"]
    lines = [f"window {_when(w['since'])} .. {_when(w['until'])} UTC (reward window: {w['reward_window_days']:g} d)"]
    c = r.get("counts")
    if c:
        lines.append(
            f"exported {c['rows']:,} rows ({c['accepted']:,} accepted) from {c['decisions']:,} closed decisions; "
            f"trained on {c.get('train', 0):,} older rows, held out the newest {c.get('holdout', 0):,} "
            f"({c.get('holdout_accepted', 0):,} accepted)"
        )
    lines.append(f"champion {r['champion']}; challenger {r.get('challenger') or '-'}")
    f = r.get("figures")
    if f:
        lines.append(f"{'':<12}{'AUC':>8}{'log loss':>10}{'Brier':>9}{'ECE':>9}   (on {f['scored_rows']:,} rows)")
        for side in ("champion", "challenger"):
            m = f[side]
            lines.append(
                f"{side:<12}{_fmt(m['auc']):>8}{_fmt(m['log_loss']):>10}{_fmt(m['brier']):>9}{_fmt(m['ece']):>9}"
            )
        d = f["difference"]
        lines.append(
            f"difference (challenger - champion, {f['bootstrap']} paired bootstrap resamples, 95%): "
            f"AUC {_iv(d['auc'], sign=True)}, log loss {_iv(d['log_loss'], sign=True)}, "
            f"Brier {_iv(d['brier'], sign=True)}, ECE {_iv(d['ece'], sign=True)}"
        )
        for reward, label in (("value", "value per decision"), ("outcome", "acceptance rate")):
            lines.append(
                f"DR {label} of each model's greedy policy (95%): champion {_iv(f['dr_champion'][reward], 3)}, "
                f"challenger {_iv(f['dr_challenger'][reward], 3)}, "
                f"difference {_iv(f['dr_difference'][reward], 3, sign=True)}"
            )
    lines.append(f"verdict: {r['verdict']}: {r['reason']}")
    return lines

"""What a closed-loop run (`nbo simulate`) writes: the summary (Markdown, JSON), the plot and
the per-decision table."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.closed_loop_scoring import NEW_OFFER_WINDOW, PICKING, POLICIES, Scores, Skipped, diff_ci, ratio_ci
from training.scenarios import NEW_OFFER_ID

COLOURS = dict(zip(POLICIES, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=True))


@dataclass
class SimulationResult:
    scenario: str
    decisions: int
    evaluated: int
    control_or_degraded: int
    seconds: float
    reward: dict[str, float]  # expected reward (value) per evaluated decision, per policy
    acceptance: dict[str, float]  # expected acceptance rate per evaluated decision
    share_of_oracle: dict[str, float]
    regret: dict[str, float]  # total, vs the oracle
    vs_model_greedy: dict[str, float]  # mean per-decision difference and its 95% CI
    vs_model_greedy_after_change: dict[str, float] = field(default_factory=dict)
    reward_after_change: dict[str, float] = field(default_factory=dict)  # per decision, from the change on
    share_of_oracle_after_change: dict[str, float] = field(default_factory=dict)
    new_offer: dict[str, Any] = field(default_factory=dict)
    changed_offers: list[str] = field(default_factory=list)
    degraded: int = 0  # of control_or_degraded; more than a handful means the loop overloads Redis
    missing_records: int = 0  # decisions answered but absent from the log: lost log batches
    outside_top_tier: int = 0  # server awards below the best tier present (the epsilon floor)
    bandit: bool = True
    decisions_per_second: float = 0.0
    exported_rows: int = 0  # rows of log.parquet: the awards, in the dataset schema
    world: str = "default"
    # (model-greedy - server) / oracle, in points of the oracle's value, paired 95% CI
    price_of_exploring: dict[str, float] = field(default_factory=dict)
    # server - model-greedy per decision in the first and the second half of the decisions after the change
    vs_model_greedy_after_change_halves: list[dict[str, float]] = field(default_factory=list)
    # decisions where the server awarded a lower tier while a higher tier had an awardable
    # candidate (model-greedy has none by construction); the same count as outside_top_tier
    tier_violations: int = 0
    tier_violation_share: float = 0.0
    arm_inputs: list[dict[str, Any]] = field(default_factory=list)  # the catalog's bandit inputs, if any
    bandit_settings: dict[str, Any] = field(default_factory=dict)  # the catalog's bandit section
    outcome_retries: int = 0  # ReportOutcome and RecordConversion retries after UNAVAILABLE (an overloaded machine)
    # the programme's true lift against the universal control group (training/closed_loop_lift.py)
    true_lift: dict[str, float] = field(default_factory=dict)
    # what `nbo report` measured on the run's log: the programme lift's intervals, and whether
    # each covers the true lift
    reported_lift: dict[str, Any] = field(default_factory=dict)


def summarise(
    scenario: str,
    bandit: bool,
    decisions: int,
    scores: Scores,
    skipped: Skipped,
    change_at: int | None,
    seconds: float,
) -> SimulationResult:
    """Every policy's totals and the comparisons with model-greedy, overall and after the change."""
    n = len(scores.index)
    ev = {k: np.asarray(scores.ev[k], dtype=np.float64) for k in POLICIES}
    total = {k: float(ev[k].sum()) for k in POLICIES}
    oracle = total["oracle"] or 1.0
    violations = int(n - np.sum(scores.server_in_top_tier))
    result = SimulationResult(
        scenario=scenario,
        decisions=decisions,
        evaluated=n,
        control_or_degraded=skipped.control_group + skipped.degraded,
        seconds=round(seconds, 1),
        reward={k: total[k] / max(n, 1) for k in POLICIES},
        acceptance={k: float(np.mean(scores.p[k])) if n else 0.0 for k in POLICIES},
        share_of_oracle={k: total[k] / oracle for k in POLICIES},
        regret={k: total["oracle"] - total[k] for k in POLICIES},
        vs_model_greedy=diff_ci(ev["server"], ev["model_greedy"]),
        degraded=skipped.degraded,
        missing_records=skipped.missing,
        outside_top_tier=violations,
        bandit=bandit,
        price_of_exploring={
            k: 100 * v if k != "n" else v for k, v in ratio_ci(ev["model_greedy"] - ev["server"], ev["oracle"]).items()
        },
        tier_violations=violations,
        tier_violation_share=violations / n if n else 0.0,
    )
    if change_at is not None:
        index = np.asarray(scores.index)
        after = index >= change_at
        late = {k: v[after] for k, v in ev.items()}
        result.vs_model_greedy_after_change = diff_ci(late["server"], late["model_greedy"])
        result.reward_after_change = {k: float(v.mean()) if v.size else 0.0 for k, v in late.items()}
        oracle_after = float(late["oracle"].sum()) or 1.0
        result.share_of_oracle_after_change = {k: float(v.sum()) / oracle_after for k, v in late.items()}
        middle = change_at + (decisions - change_at) // 2
        halves = (after & (index < middle), index >= middle)
        result.vs_model_greedy_after_change_halves = [diff_ci(ev["server"][h], ev["model_greedy"][h]) for h in halves]
    return result


def plot(path: Path, scores: Scores, result: SimulationResult, change_at: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result.new_offer else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    x = np.asarray(scores.index)
    for k in POLICIES:
        ax.plot(x, np.cumsum(scores.ev[k]), color=COLOURS[k], label=f"{k} ({result.share_of_oracle[k]:.1%} of oracle)")
    if change_at is not None:
        ax.axvline(change_at, color="grey", linestyle=":")
    ax.set_xlabel("decision")
    ax.set_ylabel("cumulative expected reward (value)")
    ax.set_title(f"{result.scenario}: {result.decisions:,} decisions")
    ax.legend(fontsize=8)
    if result.new_offer:
        ax2 = axes[0][1]
        w = result.new_offer["windows"]
        xs = [v["from"] for v in w]
        for k in ("server", "oracle", "model_greedy"):
            ax2.plot(xs, [v[f"{k}_share"] for v in w], "-", marker="o", color=COLOURS[k], label=k)
            ax2.plot(xs, [v["contested"][f"{k}_share"] for v in w], ":", marker=".", color=COLOURS[k])
        ax2.set_xlabel(f"decisions since {NEW_OFFER_ID} was published (windows of {NEW_OFFER_WINDOW:,})")
        ax2.set_ylabel("share awarding it where it was a candidate")
        ax2.set_ylim(0, 1)
        ax2.set_title("new offer (dotted: contested decisions only)")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_decisions(path: Path, scores: Scores) -> None:
    """Every evaluated decision and what each policy earned on it, for checks beyond the summary."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "index",
                "decision_id",
                "world",
                "candidates",
                "top_tier",
                "server_in_top_tier",
                "new_offer_candidate",
                "new_offer_contested",
                *(f"ev_{k}" for k in POLICIES),
                *(f"p_{k}" for k in POLICIES),
                *(f"pick_{k}" for k in PICKING),
            ]
        )
        for i in range(len(scores.index)):
            out.writerow(
                [
                    scores.index[i],
                    scores.decision_id[i],
                    scores.world_index[i],
                    scores.candidates[i],
                    scores.top_tier[i],
                    int(scores.server_in_top_tier[i]),
                    int(scores.new_in_set[i]),
                    int(scores.new_contested[i]),
                    *(repr(scores.ev[k][i]) for k in POLICIES),
                    *(repr(scores.p[k][i]) for k in POLICIES),
                    *(scores.pick[k][i] for k in PICKING),
                ]
            )


def _ci(d: dict[str, float]) -> str:
    return f"{d['mean']:+.3f} (95% CI {d['low']:+.3f} to {d['high']:+.3f}, n={d['n']:,.0f})"


def _share_line(label: str, s: dict[str, float]) -> str:
    return (
        f"- {label}: server {s['server_share']:.1%}, oracle {s['oracle_share']:.1%}, "
        f"model-greedy {s['model_greedy_share']:.1%} (n={s['n']:,.0f})"
    )


def summary_markdown(r: SimulationResult) -> str:
    lines = [
        f"# Closed-loop simulation: {r.scenario}" + ("" if r.world == "default" else f" (world {r.world})"),
        "",
        f"{r.decisions:,} decisions ({r.evaluated:,} evaluated; {r.control_or_degraded:,} in the control group "
        f"or degraded, of which {r.degraded:,} degraded; {r.missing_records:,} missing from the log), "
        f"bandit and learner {'on' if r.bandit else 'off'}, {r.seconds:.0f} s "
        f"({r.decisions_per_second:,.0f} decisions/s in the loop"
        + (f"; {r.outcome_retries:,} outcome reports retried after UNAVAILABLE" if r.outcome_retries else "")
        + ").",
        "",
        "| policy | expected value / decision | acceptance | % of oracle | regret (total) |",
        "|---|---|---|---|---|",
    ]
    for k in POLICIES:
        lines.append(
            f"| {k} | {r.reward[k]:.3f} | {r.acceptance[k]:.2%} | {r.share_of_oracle[k]:.1%} | {r.regret[k]:,.0f} |"
        )
    if r.reward_after_change:
        lines += [
            "",
            "from the change on:",
            "",
            "| policy | expected value / decision | % of oracle |",
            "|---|---|---|",
            *(f"| {k} | {r.reward_after_change[k]:.3f} | {r.share_of_oracle_after_change[k]:.1%} |" for k in POLICIES),
        ]
    lines += ["", f"server - model_greedy per decision: {_ci(r.vs_model_greedy)}"]
    if r.vs_model_greedy_after_change:
        lines.append(f"after the change: {_ci(r.vs_model_greedy_after_change)}")
        first, second = r.vs_model_greedy_after_change_halves
        lines.append(f"- first half after the change: {_ci(first)}")
        lines.append(f"- second half after the change: {_ci(second)}")
    p = r.price_of_exploring
    lines.append(
        f"price of exploring, (model_greedy - server) / oracle: {p['mean']:+.2f} points of oracle value "
        f"(95% CI {p['low']:+.2f} to {p['high']:+.2f})"
    )
    lines.append(
        f"tier violations (server awarded a lower tier while a higher tier had an awardable candidate; "
        f"model-greedy: none by construction): {r.tier_violations:,} ({r.tier_violation_share:.2%})"
    )
    if r.arm_inputs:
        lines.append(
            "arm inputs: " + ", ".join(f"{i['feature']} ({i['center']:g} ± {i['scale']:g})" for i in r.arm_inputs)
        )
    if r.changed_offers:
        lines.append(f"offers whose response changed: {', '.join(r.changed_offers)}")
    lines += _lift_lines(r)
    if r.new_offer:
        no = r.new_offer
        half = no["half_of_oracle_share_from"]
        lines += [
            "",
            f"new offer {NEW_OFFER_ID} (published at decision {no['introduced_at']:,}): share of the decisions "
            "awarding it, among those whose candidate set held it (contested: it shared the best tier "
            "present with another candidate):",
            _share_line("first 10,000 decisions", no["first_10000"]),
            _share_line("first 10,000 decisions, contested", no["first_10000_contested"]),
            _share_line("decisions 8,000-10,000", no["decisions_8000_to_10000"]),
            _share_line("decisions 8,000-10,000, contested", no["decisions_8000_to_10000_contested"]),
            f"- the server first reached half the oracle's share in the window from {half:,} decisions"
            if half is not None
            else "- the server never reached half the oracle's share",
            "",
            "| decisions since | server | oracle | model-greedy | n | contested: server | oracle | model-greedy | n |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for w in no["windows"]:
            c = w["contested"]
            lines.append(
                f"| {w['from']:,} | {w['server_share']:.1%} | {w['oracle_share']:.1%} | "
                f"{w['model_greedy_share']:.1%} | {w['n']:,.0f} | {c['server_share']:.1%} | "
                f"{c['oracle_share']:.1%} | {c['model_greedy_share']:.1%} | {c['n']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def _lift_lines(r: SimulationResult) -> list[str]:
    """`nbo report`'s programme lift (report.html) against the run's true lift."""
    lift = r.reported_lift
    if not lift:
        return []
    if not lift["enough_data"]:
        return [f"programme lift (report.html): not enough data ({lift['note']})"]
    out = [
        f"programme lift against the universal control group ({lift['control_customers']:,} of "
        f"{lift['customers']:,} customers), nbo report (report.html) vs the truth:"
    ]
    for name, unit, scale in (("conversion_rate_diff", " pts", 100.0), ("value_per_customer_diff", "", 1.0)):
        if name in lift:
            x = lift[name]
            out.append(
                f"- {name}: {x['reported'] * scale:+.2f}{unit} (95% CI {x['low'] * scale:+.2f} to "
                f"{x['high'] * scale:+.2f}), true {x['true'] * scale:+.2f}{unit}: "
                + ("covered" if x["covered"] else "NOT covered")
            )
    return out

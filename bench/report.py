"""From rounds of load results to the side-by-side table, its ratios and the issue's targets.

Rounds are interleaved (A B C D, A B C D, ...), so round i of every server saw about the same
machine. A ratio is therefore the median over rounds of the paired ratio (A_i / B_i), which
cancels most of the drift of a shared machine; the other columns are medians over rounds,
errors are summed, memory is the peak over all rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.load import LoadResult

NIMBUS = "nimbus"
GATEWAY = "gateway"
MLFLOW = "mlflow"
FLOOR = "floor"
FLOOR_GATEWAY = "floor-gateway"

LABELS = {
    NIMBUS: "Nimbus predict (function port)",
    GATEWAY: "Nimbus predict via gateway",
    MLFLOW: "mlflow models serve",
    FLOOR: "floor: empty functions-framework",
    FLOOR_GATEWAY: "floor via gateway",
}

# The floor a server's "vs floor" is taken against: the same path with nothing in the handler.
# Through the gateway that is the empty handler behind the same gateway (the hop costs both
# the same); the floor behind the gateway itself is compared with the bare floor, which shows
# what the gateway's hop costs.
FLOOR_OF = {GATEWAY: FLOOR_GATEWAY}


@dataclass(frozen=True)
class Memory:
    """Peak memory of a server's process groups during its load rounds, in MiB."""

    rss_mib: float
    pss_mib: float


@dataclass(frozen=True)
class Summary:
    """One server's row of the table."""

    name: str
    rounds: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mib: float
    pss_mib: float
    vs_mlflow: float | None
    vs_floor: float | None
    floor: str = FLOOR  # the server vs_floor is measured against
    vs_bare_floor: float | None = None  # against FLOOR, when `floor` is another one

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets: the measured value against its limit."""

    name: str
    value: float
    limit: float
    at_least: bool
    unit: str = "x"
    note: str = ""
    reference: bool = False  # shown beside the targets, not one of them: "ref", not PASS/FAIL

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def verdict(self) -> str:
        if self.reference:
            return "ref "
        return "PASS" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def paired_ratio(numerator: Sequence[LoadResult], denominator: Sequence[LoadResult]) -> float:
    """Median over rounds of numerator_i / denominator_i throughput."""
    pairs = [
        top.requests_per_s / bottom.requests_per_s
        for top, bottom in zip(numerator, denominator, strict=False)
        if bottom.requests_per_s > 0
    ]
    return statistics.median(pairs) if pairs else float("nan")


def summarize(
    rounds: Mapping[str, Sequence[LoadResult]], memory: Mapping[str, Memory]
) -> list[Summary]:
    """One Summary per server, in the order given, with ratios to MLflow and to its floor
    (`FLOOR_OF`: the bare floor unless the same path's own floor was measured)."""
    summaries = []
    for name, results in rounds.items():
        peak = memory.get(name, Memory(0.0, 0.0))
        floor = FLOOR_OF.get(name, FLOOR)
        if floor not in rounds:
            floor = FLOOR
        bare = paired_ratio(results, rounds[FLOOR]) if FLOOR in rounds else None
        summaries.append(
            Summary(
                name=name,
                rounds=len(results),
                requests_per_s=statistics.median(r.requests_per_s for r in results),
                p50_ms=statistics.median(r.p50_ms for r in results),
                p99_ms=statistics.median(r.p99_ms for r in results),
                errors=sum(r.errors for r in results),
                rss_mib=peak.rss_mib,
                pss_mib=peak.pss_mib,
                vs_mlflow=paired_ratio(results, rounds[MLFLOW]) if MLFLOW in rounds else None,
                vs_floor=paired_ratio(results, rounds[floor]) if floor in rounds else None,
                floor=floor,
                vs_bare_floor=bare if floor != FLOOR else None,
            )
        )
    return summaries


def predict_targets(summaries: Sequence[Summary]) -> list[TargetCheck]:
    """The issue's predict targets, for the function port and for the gateway."""
    by_name = {summary.name: summary for summary in summaries}
    mlflow = by_name[MLFLOW]
    floor = by_name.get(FLOOR)
    # The floor's own tail says how much of a p99 is the machine rather than the server.
    tail_note = (
        f"the floor's own: {floor.p99_ms / floor.p50_ms:.1f}x" if floor and floor.p50_ms else ""
    )
    checks = []
    for name, where in ((NIMBUS, "function port"), (GATEWAY, "via gateway")):
        summary = by_name.get(name)
        if summary is None:
            continue
        assert summary.vs_mlflow is not None and summary.vs_floor is not None
        floor_note = (
            f"against the {LABELS[summary.floor]}; against the bare floor "
            f"{summary.vs_bare_floor:.2f}x"
            if summary.vs_bare_floor is not None
            else ""
        )
        checks += [
            TargetCheck(f"predict req/s ≥ 4x MLflow ({where})", summary.vs_mlflow, 4.0, True),
            TargetCheck(
                f"predict req/s ≥ 0.75x floor ({where})",
                summary.vs_floor,
                0.75,
                True,
                note=floor_note,
            ),
            TargetCheck(
                f"predict p99 ≤ 3x p50 at 4 connections ({where})",
                summary.p99_ms / summary.p50_ms if summary.p50_ms else float("inf"),
                3.0,
                False,
                note=tail_note,
            ),
            TargetCheck(f"predict errors = 0 ({where})", summary.errors, 0, False, unit=""),
        ]
    nimbus = by_name.get(NIMBUS)
    if nimbus is not None and mlflow.rss_mib:
        checks.append(
            TargetCheck(
                "predict process tree RSS ≤ MLflow's",
                nimbus.rss_mib / mlflow.rss_mib,
                1.0,
                False,
                note=f"{nimbus.rss_mib:.0f} vs {mlflow.rss_mib:.0f} MiB",
            )
        )
    return checks


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_predict_table(summaries: Sequence[Summary]) -> str:
    """The side-by-side table: throughput, latency, errors, memory and the two ratios."""
    header = (
        f"{'server':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'RSS MiB':>9}{'PSS MiB':>9}{'vs MLflow':>11}{'vs floor':>10}"
    )
    lines = [header, "-" * len(header)]
    notes: list[str] = []
    for s in summaries:
        mark = ""
        if s.floor != FLOOR:
            mark = "*" * (len(notes) + 1)
            notes.append(f"{mark} against the {LABELS.get(s.floor, s.floor)} (the same hop)")
        lines.append(
            f"{s.label:<34}{s.requests_per_s:>9.0f}{s.p50_ms:>9.2f}{s.p99_ms:>9.2f}"
            f"{s.errors:>8d}{s.rss_mib:>9.0f}{s.pss_mib:>9.0f}"
            f"{_ratio(s.vs_mlflow):>11}{_ratio(s.vs_floor) + mark:>10}"
        )
    return "\n".join(lines + notes)


def format_targets(checks: Sequence[TargetCheck]) -> str:
    """PASS/FAIL per target, with the measured value and the limit."""
    lines = []
    for check in checks:
        verdict = check.verdict
        sign = "≥" if check.at_least else "≤"
        value = f"{check.value:.2f}{check.unit}" if check.unit else f"{check.value:g}"
        limit = f"{check.limit:.3g}{check.unit}"
        note = f"  ({check.note})" if check.note else ""
        lines.append(f"{verdict}  {check.name:<52} {value:>9} (target {sign} {limit}){note}")
    return "\n".join(lines)

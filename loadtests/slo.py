"""The SLO gate of a headless run: thresholds against Locust's own statistics."""

from collections.abc import Callable
from dataclasses import dataclass

# Defaults from the article: a short question answered within 3 s, under 1 % failures; the time
# to first token bound keeps queueing visible even when answers are short.
DEFAULTS = {"slo_short_question_ms": 3000, "slo_short_question_percentile": 95,
            "slo_ttft_p99_ms": 2000, "slo_max_failure_ratio": 0.01}


@dataclass(frozen=True)
class Thresholds:
    short_question_ms: float
    short_question_percentile: float
    ttft_p99_ms: float
    max_failure_ratio: float


@dataclass(frozen=True)
class _Row:
    """One row of a run's statistics, live or from its CSV."""
    name: str
    count: int
    failures: int
    percentile: Callable[[float], float]  # percent (95, 99) -> ms


def _judge(requests: list[_Row], metrics: dict[str, _Row], thresholds: Thresholds, slo_kinds: list[str]) -> list[str]:
    """Request rows are named after the workload kind (`<kind> stream` / `<kind> plain`), metric rows
    `time_to_first_token <kind>`. The failure ratio is over requests (metric rows never fail); the
    total-time and first-token bounds apply to the kinds marked `slo` in the workload."""
    total = sum(row.count for row in requests)
    if total == 0:
        return ["no request completed: nothing to judge"]
    failures = sum(row.failures for row in requests)
    messages = []
    if failures / total > thresholds.max_failure_ratio:
        messages.append(f"failure ratio {failures / total:.2%} > {thresholds.max_failure_ratio:.2%} "
                        f"({failures} of {total} requests)")
    for row in requests:
        if row.name.split(" ")[0] in slo_kinds and row.count:
            value = row.percentile(thresholds.short_question_percentile)
            if value > thresholds.short_question_ms:
                messages.append(f"{row.name}: p{thresholds.short_question_percentile:g} total time "
                                f"{value:.0f} ms > {thresholds.short_question_ms:.0f} ms")
    for kind in slo_kinds:
        ttft = metrics.get(f"time_to_first_token {kind}")
        if ttft and ttft.count:
            value = ttft.percentile(99)
            if value > thresholds.ttft_p99_ms:
                messages.append(f"time_to_first_token {kind}: p99 {value:.0f} ms > {thresholds.ttft_p99_ms:.0f} ms")
    return messages


def broken(stats, thresholds: Thresholds, slo_kinds: list[str]) -> list[str]:
    """Messages for each threshold the run broke; empty when the SLO holds. `stats` is Locust's
    RequestStats."""
    rows = [(method, _Row(name, entry.num_requests, entry.num_failures,
                          lambda percent, entry=entry: entry.get_response_time_percentile(percent / 100)))
            for (name, method), entry in stats.entries.items()]
    return _judge([row for method, row in rows if method != "METRIC"],
                  {row.name: row for method, row in rows if method == "METRIC"}, thresholds, slo_kinds)


def broken_in_csv(rows: list[dict], thresholds: Thresholds, slo_kinds: list[str]) -> list[str]:
    """The same judgement from Locust's --csv stats rows, which hold every request the run
    finished (a request still in flight when the gate ran is in them too)."""
    column = f"{thresholds.short_question_percentile:g}%"
    if rows and column not in rows[0]:
        columns = ", ".join(name[:-1] for name in rows[0] if name.endswith("%"))
        raise ValueError(f"--slo-short-question-percentile {thresholds.short_question_percentile:g} is no column of "
                         f"Locust's CSV; choose one of {columns}")
    parsed = [(row["Type"], _Row(row["Name"], int(row["Request Count"]), int(row["Failure Count"]),
                                 lambda percent, row=row: float(row[f"{percent:g}%"])))
              for row in rows if row["Name"] != "Aggregated"]
    return _judge([row for kind, row in parsed if kind not in ("METRIC", "")],
                  {row.name: row for kind, row in parsed if kind == "METRIC"}, thresholds, slo_kinds)

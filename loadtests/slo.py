"""The SLO gate of a headless run: thresholds against Locust's own statistics."""

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


def broken(stats, thresholds: Thresholds, slo_kinds: list[str]) -> list[str]:
    """Messages for each threshold the run broke; empty when the SLO holds.

    `stats` is Locust's RequestStats: request rows are named after the workload kind
    (`<kind> stream` / `<kind> plain`), metric rows `time_to_first_token <kind>` (type METRIC).
    The total-time and first-token bounds apply to the kinds marked `slo` in the workload.
    """
    messages = []
    total = stats.total
    if total.num_requests == 0:
        return ["no request completed: nothing to judge"]
    if total.fail_ratio > thresholds.max_failure_ratio:
        messages.append(f"failure ratio {total.fail_ratio:.2%} > {thresholds.max_failure_ratio:.2%} "
                        f"({total.num_failures} of {total.num_requests} requests)")
    fraction = thresholds.short_question_percentile / 100
    for (name, method), entry in stats.entries.items():
        if method == "METRIC" or not entry.num_requests:
            continue
        if name.split(" ")[0] in slo_kinds:
            value = entry.get_response_time_percentile(fraction)
            if value > thresholds.short_question_ms:
                messages.append(f"{name}: p{thresholds.short_question_percentile:g} total time "
                                f"{value:.0f} ms > {thresholds.short_question_ms:.0f} ms")
    for kind in slo_kinds:
        ttft = stats.entries.get((f"time_to_first_token {kind}", "METRIC"))
        if ttft and ttft.num_requests:
            value = ttft.get_response_time_percentile(0.99)
            if value > thresholds.ttft_p99_ms:
                messages.append(f"time_to_first_token {kind}: p99 {value:.0f} ms > "
                                f"{thresholds.ttft_p99_ms:.0f} ms")
    return messages


def broken_in_csv(rows: list[dict], thresholds: Thresholds, slo_kinds: list[str]) -> list[str]:
    """The same judgement from Locust's --csv stats rows, which hold every request the run
    finished (a request still in flight when the gate ran is in them too)."""
    requests = [row for row in rows if row["Type"] not in ("METRIC", "") and row["Name"] != "Aggregated"]
    total = sum(int(row["Request Count"]) for row in requests)
    failures = sum(int(row["Failure Count"]) for row in requests)
    if total == 0:
        return ["no request completed: nothing to judge"]
    messages = []
    if failures / total > thresholds.max_failure_ratio:
        messages.append(f"failure ratio {failures / total:.2%} > {thresholds.max_failure_ratio:.2%} "
                        f"({failures} of {total} requests)")
    column = f"{thresholds.short_question_percentile:g}%"
    if rows and column not in rows[0]:
        columns = ", ".join(name[:-1] for name in rows[0] if name.endswith("%"))
        raise ValueError(f"--slo-short-question-percentile {thresholds.short_question_percentile:g} is no column of "
                         f"Locust's CSV; choose one of {columns}")
    for row in requests:
        if row["Name"].split(" ")[0] in slo_kinds and int(row["Request Count"]):
            value = float(row[column])
            if value > thresholds.short_question_ms:
                messages.append(f"{row['Name']}: p{thresholds.short_question_percentile:g} total time "
                                f"{value:.0f} ms > {thresholds.short_question_ms:.0f} ms")
    for row in rows:
        if row["Type"] == "METRIC" and row["Name"] in {f"time_to_first_token {kind}" for kind in slo_kinds} \
                and int(row["Request Count"]):
            value = float(row["99%"])
            if value > thresholds.ttft_p99_ms:
                messages.append(f"{row['Name']}: p99 {value:.0f} ms > {thresholds.ttft_p99_ms:.0f} ms")
    return messages

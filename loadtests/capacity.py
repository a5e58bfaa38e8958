"""`python -m loadtests.capacity --host URL`: how many requests a day this endpoint sustains.

Users rise in steps (1, 2, 4, ... each held --step-seconds so it is steady); each step is a
headless Locust run with the SLO gate of locustfile.py. The finder stops at the first step that
breaks the SLO, or at the time or request bound, and reports the highest sustained rate as
requests per day against the article's plan of 500 a day.
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from loadtests import slo, workload

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
ARTICLE_REQUESTS_PER_DAY = 500


def _percentile(row: dict | None, column: str) -> float | None:
    return float(row[column]) if row and row[column] not in ("", "N/A") else None


def step_figures(prefix: Path, seconds: float) -> dict:
    """One step's figures from Locust's stats CSV: rates, the short questions' total time p95 and
    first token p99, and each chat turn's first token (median), which shows what a conversation's
    history costs."""
    with open(f"{prefix}_stats.csv") as handle:
        rows = list(csv.DictReader(handle))
    requests = [r for r in rows if r["Type"] == "POST"]
    count = sum(int(r["Request Count"]) for r in requests)
    failures = sum(int(r["Failure Count"]) for r in requests)
    tokens = sum(int(r["Request Count"]) * float(r["Average Content Size"]) for r in requests)
    named = {r["Name"]: r for r in rows}
    short = [r for r in requests if r["Name"].startswith("short_question ")]
    short_p95 = max((_percentile(r, "95%") or 0 for r in short), default=None)
    turns = {}
    for name, row in named.items():
        if name.startswith("time_to_first_token chat turn "):
            turns[int(name.rsplit(" ", 1)[1])] = _percentile(row, "50%")
    return {"requests": count, "failures": failures, "rate": count / seconds,
            "tokens_per_s": tokens / seconds, "short_p95_ms": short_p95,
            "ttft_p99_ms": _percentile(named.get("time_to_first_token short_question"), "99%"),
            "chat_ttft_p50_ms_by_turn": dict(sorted(turns.items()))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True)
    parser.add_argument("--api-key", default=None, help="default: NAS_AI_API_KEY / OPENAI_API_KEY")
    parser.add_argument("--users", default="1,2,4,8", help="user counts of the steps, rising")
    parser.add_argument("--step-seconds", type=int, default=60)
    parser.add_argument("--max-seconds", type=int, default=600, help="bound on the whole search")
    parser.add_argument("--max-requests-per-step", type=int, default=2000)
    parser.add_argument("--think-time", type=float, default=1.0)
    parser.add_argument("--out", default="reports/capacity")
    for name, default in slo.DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=default, help=f"SLO threshold (default {default})")
    args, locust_extra = parser.parse_known_args(argv)  # e.g. --sessionless
    thresholds = slo.Thresholds(args.slo_short_question_ms, args.slo_short_question_percentile,
                                args.slo_ttft_p99_ms, args.slo_max_failure_ratio)
    locust_extra += [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in slo.DEFAULTS]
    slo_kinds = [kind.name for kind in workload.load() if kind.slo]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.max_seconds
    best, steps = None, []
    print(f"{'users':>5} {'req/s':>7} {'tokens/s':>9} {'short p95 ms':>12} {'short ttft p99 ms':>17} "
          f"{'failures':>8}  SLO   chat first token p50 by turn, ms")
    for users in [int(u) for u in args.users.split(",")]:
        if time.monotonic() + args.step_seconds + 60 > deadline:
            print(f"stopping: a step of {users} users would pass the {args.max_seconds} s bound")
            break
        prefix = out / f"users{users}"
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", args.host,
                   "--headless", "-u", str(users), "-r", str(users), "-t", f"{args.step_seconds}s",
                   "--stop-timeout", "60", "--csv", str(prefix), "--only-summary",
                   "--max-requests", str(args.max_requests_per_step), "--think-time", str(args.think_time),
                   "--loglevel", "WARNING", *locust_extra]
        if args.api_key:
            command += ["--api-key", args.api_key]
        started = time.monotonic()
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        figures = step_figures(prefix, min(time.monotonic() - started, args.step_seconds))
        # Judged again on the CSV, which holds every request the step finished: Locust's own gate
        # runs as the step ends and can miss a slow request that finished during its stop.
        with open(f"{prefix}_stats.csv") as handle:
            problems = slo.broken_in_csv(list(csv.DictReader(handle)), thresholds, slo_kinds)
        held = run.returncode == 0 and not problems
        steps.append(dict(figures, users=users, slo_met=held))
        ttft, short = (f"{figures[key]:.0f}" if figures[key] is not None else "-"
                       for key in ("ttft_p99_ms", "short_p95_ms"))
        turns = " ".join(f"{turn}:{ms:.0f}" for turn, ms in figures["chat_ttft_p50_ms_by_turn"].items()
                         if ms is not None)
        print(f"{users:>5} {figures['rate']:>7.2f} {figures['tokens_per_s']:>9.1f} {short:>12} {ttft:>17} "
              f"{figures['failures']:>8}  {'met   ' if held else 'broken'} {turns}")
        if not held:
            reasons = [line.removeprefix("SLO broken: ") for line in run.stderr.splitlines()
                       if line.startswith("SLO broken")]
            for reason in dict.fromkeys(reasons + problems):
                print(f"      SLO broken: {reason}")
            if run.returncode not in (0, 1):
                print(f"      locust exited {run.returncode}: {run.stderr[-1000:]}")
            break
        best = (users, figures)
    (out / "steps.json").write_text(json.dumps(steps, indent=1) + "\n")
    if best is None:
        print("capacity: not even the first step met the SLO")
        return 1
    users, figures = best
    per_day = figures["rate"] * 86400
    # What loadtests.cost reads.
    (out / "capacity.json").write_text(json.dumps({
        "requests_per_day": per_day, "users": users, "tokens_per_s": figures["tokens_per_s"],
        "completion_tokens_per_request": figures["tokens_per_s"] / figures["rate"] if figures["rate"] else 0,
        "short_ttft_p99_ms": figures["ttft_p99_ms"], "short_p95_ms": figures["short_p95_ms"],
        "chat_ttft_p50_ms_by_turn": figures["chat_ttft_p50_ms_by_turn"]}, indent=1) + "\n")
    print(f"capacity: {figures['rate']:.2f} requests/s sustained with {users} concurrent users = "
          f"{per_day:,.0f} requests/day, {per_day / ARTICLE_REQUESTS_PER_DAY:,.0f}x the article's "
          f"{ARTICLE_REQUESTS_PER_DAY} a day")
    return 0


if __name__ == "__main__":
    sys.exit(main())

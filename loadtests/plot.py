"""`python -m loadtests.plot PREFIX`: a PNG of time to first token and tokens/s over a run, from
the `PREFIX_stats_history.csv` that `locust --csv PREFIX --csv-full-history` writes."""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(rows: list[dict], name: str, column: str) -> tuple[list[float], list[float]]:
    start = float(rows[0]["Timestamp"])
    points = [(float(r["Timestamp"]) - start, float(r[column])) for r in rows
              if r["Name"] == name and r[column] not in ("", "N/A") and float(r[column]) > 0]
    return [p[0] for p in points], [p[1] for p in points]


def plot(prefix: str) -> Path:
    history = Path(f"{prefix}_stats_history.csv")
    with open(history) as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"{history} has no rows: was the run started with --csv-full-history?")
    figure, (ttft_axes, speed_axes) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for column in ("50%", "95%", "99%"):
        ttft_axes.plot(*_series(rows, "time_to_first_token short_question", column), label=f"p{column[:-1]}")
    ttft_axes.set_ylabel("time to first token,\nshort questions (ms)")
    ttft_axes.legend(loc="upper left")
    ttft_axes.grid(alpha=0.3)
    for column in ("50%", "95%"):
        speed_axes.plot(*_series(rows, "tokens_per_second", column), label=f"per request, p{column[:-1]}")
    users = _series(rows, "Aggregated", "User Count")
    users_axes = speed_axes.twinx()
    users_axes.step(*users, where="post", color="grey", alpha=0.5, label="users")
    users_axes.set_ylabel("users")
    speed_axes.set_ylabel("tokens/s")
    speed_axes.set_xlabel("seconds since start")
    speed_axes.legend(loc="upper left")
    speed_axes.grid(alpha=0.3)
    figure.suptitle(f"LLM load test: {Path(prefix).name}")
    figure.tight_layout()
    output = Path(f"{prefix}_llm.png")
    figure.savefig(output, dpi=100)
    return output


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(plot(sys.argv[1]))

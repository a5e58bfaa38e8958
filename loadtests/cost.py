"""`python -m loadtests.cost`: what a month of answers costs on the NAS against a cloud API, from
the capacity finder's measured figures (`reports/capacity/capacity.json`): the article's cost table
(cloud $300 a month against $15 of electricity; private deployment cheaper above 2,000 requests a
day), rebuilt from measurements and prices you can change.

The NAS's cost is its electricity: idle watts all day, plus the busy watts' extra for the share of
the day it answers (requests / the capacity it sustains at the SLO; past that capacity, another box).
Two views: the whole box (it runs for the assistant alone) and the extra over a NAS that runs
anyway for its files. The cloud's cost is its price per million prompt and answer tokens.
"""

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests import workload

DAYS_PER_MONTH = 365.25 / 12
CHARS_PER_TOKEN = 4  # English text with a Llama-style tokenizer: an estimate, stated as such
# Defaults, each from a public source (checked 2026-11-26); pass your own.
IDLE_WATTS = 14  # an Intel N5105 mini PC (N100 class) at the wall, idle: about 14 W (ora.it.com)
BUSY_WATTS = 28  # the same under full CPU load: 25-30 W
PRICE_PER_KWH = 0.18  # USD; EIA Electric Power Monthly table 5.6.A, April 2025: US residential 13.7-29.6 cents by division
CLOUD_INPUT_PER_M = 0.15  # USD per million prompt tokens: OpenAI gpt-4o-mini (openai.com/api/pricing)
CLOUD_OUTPUT_PER_M = 0.60  # USD per million answer tokens, the same
ARTICLE = {"cloud_per_month": 300, "nas_power_per_month": 15, "break_even_per_day": 2000, "hardware": 800}


@dataclass(frozen=True)
class Inputs:
    capacity_per_day: float  # requests a day one box sustains at the SLO (measured)
    prompt_tokens: float  # per request, on average
    completion_tokens: float  # per request, on average
    idle_watts: float = IDLE_WATTS
    busy_watts: float = BUSY_WATTS
    price_per_kwh: float = PRICE_PER_KWH
    cloud_input_per_m: float = CLOUD_INPUT_PER_M
    cloud_output_per_m: float = CLOUD_OUTPUT_PER_M
    hardware: float = 0.0  # USD per box, spread over amortize_months (0: the NAS is already there)
    amortize_months: float = 36


def _kwh_price_per_watt_month(inputs: Inputs) -> float:
    """USD for one watt drawn all month."""
    return 24 * DAYS_PER_MONTH / 1000 * inputs.price_per_kwh


def boxes(inputs: Inputs, per_day: float) -> int:
    return max(1, math.ceil(per_day / inputs.capacity_per_day))


def nas_per_month(inputs: Inputs, per_day: float, extra_only: bool = False) -> float:
    """USD a month: each box's idle watts (unless extra_only: the NAS runs anyway) and hardware,
    plus the busy watts' extra for the share of the day the boxes answer."""
    count = boxes(inputs, per_day)
    busy_share = per_day / inputs.capacity_per_day  # in box-days a day
    watts = (0 if extra_only else count * inputs.idle_watts) + (inputs.busy_watts - inputs.idle_watts) * busy_share
    hardware = count * inputs.hardware / inputs.amortize_months if inputs.amortize_months else 0
    return watts * _kwh_price_per_watt_month(inputs) + (0 if extra_only else hardware)


def cloud_per_request(inputs: Inputs) -> float:
    return (inputs.prompt_tokens * inputs.cloud_input_per_m + inputs.completion_tokens * inputs.cloud_output_per_m) / 1e6


def cloud_per_month(inputs: Inputs, per_day: float) -> float:
    return per_day * DAYS_PER_MONTH * cloud_per_request(inputs)


def break_even_per_day(inputs: Inputs, extra_only: bool = False) -> float | None:
    """Requests a day from which one box costs less than the cloud, up to its capacity; None if it
    never does. Past a box's capacity the next box's idle watts come on top: the chart shows where
    the NAS is cheaper then. Each box's fixed cost is the same, so if the first box's capacity does
    not reach the break-even, no number of boxes does."""
    marginal = (inputs.busy_watts - inputs.idle_watts) / inputs.capacity_per_day * _kwh_price_per_watt_month(inputs)
    cloud = DAYS_PER_MONTH * cloud_per_request(inputs)  # USD a month per request a day
    if cloud <= marginal:
        return None
    fixed = 0.0 if extra_only else nas_per_month(inputs, 0)  # one idle box, its hardware
    point = fixed / (cloud - marginal)
    return point if point <= inputs.capacity_per_day else None


def per_million_tokens(inputs: Inputs, per_day: float, extra_only: bool = False) -> float:
    tokens = per_day * DAYS_PER_MONTH * (inputs.prompt_tokens + inputs.completion_tokens) / 1e6
    return nas_per_month(inputs, per_day, extra_only) / tokens


def workload_prompt_tokens() -> float:
    """Prompt tokens of the workload mix per request, weighted, estimated from its characters."""
    kinds = workload.load()
    total = sum(kind.weight for kind in kinds)
    # A chat's earlier answers are counted at the kind's max_tokens: an upper bound.
    chars = sum(kind.weight / total * kind.mean_prompt_chars(kind.max_tokens * CHARS_PER_TOKEN) for kind in kinds)
    return chars / CHARS_PER_TOKEN


def table(inputs: Inputs, days: list[float]) -> list[dict]:
    return [{"requests_per_day": d, "boxes": boxes(inputs, d), "cloud": cloud_per_month(inputs, d),
             "nas": nas_per_month(inputs, d), "nas_extra": nas_per_month(inputs, d, extra_only=True)} for d in days]


def chart(inputs: Inputs, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(4 * ARTICLE["break_even_per_day"], 2.5 * inputs.capacity_per_day)
    days = [100 * (top / 100) ** (i / 400) for i in range(401)]  # 100 a day up, evenly on a log axis
    figure, axes = plt.subplots(figsize=(10, 6))
    axes.plot(days, [cloud_per_month(inputs, d) for d in days], label="cloud API (its token prices)")
    axes.plot(days, [nas_per_month(inputs, d) for d in days], label="NAS, whole box (electricity" +
              (", hardware" if inputs.hardware else "") + ")")
    axes.plot(days, [nas_per_month(inputs, d, extra_only=True) for d in days], label="NAS, extra over a NAS that runs anyway")
    axes.axvline(inputs.capacity_per_day, color="grey", linestyle=":", label="one box's measured capacity at the SLO")
    axes.scatter([ARTICLE["break_even_per_day"]] * 2, [ARTICLE["cloud_per_month"], ARTICLE["nas_power_per_month"]],
                 marker="x", color="black", label="the article's claim at 2,000 a day")
    axes.set_xlabel("requests a day")
    axes.set_ylabel("USD a month")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", default="reports/capacity/capacity.json",
                        help="the capacity finder's summary (requests_per_day, completion_tokens_per_request)")
    parser.add_argument("--prompt-tokens", type=float, default=None,
                        help="prompt tokens per request; default: the workload mix's, from its characters / 4")
    parser.add_argument("--idle-watts", type=float, default=IDLE_WATTS)
    parser.add_argument("--busy-watts", type=float, default=BUSY_WATTS)
    parser.add_argument("--price-per-kwh", type=float, default=PRICE_PER_KWH)
    parser.add_argument("--cloud-input-per-m", type=float, default=CLOUD_INPUT_PER_M)
    parser.add_argument("--cloud-output-per-m", type=float, default=CLOUD_OUTPUT_PER_M)
    parser.add_argument("--hardware", type=float, default=0.0, help="USD per box (the article: 800)")
    parser.add_argument("--amortize-months", type=float, default=36)
    parser.add_argument("--out", default="reports/cost.png")
    args = parser.parse_args(argv)
    try:
        measured = json.loads(Path(args.capacity).read_text())
    except (OSError, ValueError) as error:
        print(f"cost: no capacity summary at {args.capacity} ({error}): run python -m loadtests.capacity first",
              file=sys.stderr)
        return 2
    inputs = Inputs(measured["requests_per_day"], args.prompt_tokens or workload_prompt_tokens(),
                    measured["completion_tokens_per_request"], args.idle_watts, args.busy_watts, args.price_per_kwh,
                    args.cloud_input_per_m, args.cloud_output_per_m, args.hardware, args.amortize_months)
    print(f"measured: {inputs.capacity_per_day:,.0f} requests/day per box at the SLO, "
          f"{inputs.prompt_tokens:.0f} prompt + {inputs.completion_tokens:.0f} answer tokens per request")
    print(f"{'requests/day':>12} {'boxes':>5} {'cloud $/month':>14} {'NAS $/month':>12} {'NAS extra $/month':>18}")
    for row in table(inputs, [500, 2000, 10000, inputs.capacity_per_day]):
        print(f"{row['requests_per_day']:>12,.0f} {row['boxes']:>5} {row['cloud']:>14.2f} {row['nas']:>12.2f} "
              f"{row['nas_extra']:>18.2f}")
    for label, extra in (("whole box", False), ("extra over a NAS that runs anyway", True)):
        point = break_even_per_day(inputs, extra)
        print(f"break-even ({label}): " + (f"{point:,.0f} requests/day (one box, up to its capacity)"
                                           if point is not None else
                                           "never: the cloud costs less at every load") +
              f"; NAS at capacity {per_million_tokens(inputs, inputs.capacity_per_day, extra):.3f} USD per million "
              f"tokens against the cloud's {cloud_per_request(inputs) * 1e6 / (inputs.prompt_tokens + inputs.completion_tokens):.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"chart: {chart(inputs, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

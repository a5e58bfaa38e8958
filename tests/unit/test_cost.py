"""The cost report's arithmetic (loadtests/cost.py) against figures computed by hand.

One watt all month: 24 h x 30.4375 days = 730.5 h = 0.7305 kWh, at 0.20 USD/kWh 0.1461 USD."""

import json

import pytest

from loadtests import cost

INPUTS = cost.Inputs(capacity_per_day=10_000, prompt_tokens=300, completion_tokens=100, idle_watts=10,
                     busy_watts=30, price_per_kwh=0.20, cloud_input_per_m=1.0, cloud_output_per_m=2.0)
WATT_MONTH = 0.1461


def test_the_nas_pays_idle_watts_all_day_and_the_busy_extra_for_its_share_of_the_day():
    assert cost.nas_per_month(INPUTS, 5000) == pytest.approx((10 + 20 * 0.5) * WATT_MONTH)  # 2.922
    assert cost.nas_per_month(INPUTS, 5000, extra_only=True) == pytest.approx(20 * 0.5 * WATT_MONTH)
    # Past one box's capacity, another box: 3 boxes idle, 2.5 box-days busy.
    assert cost.boxes(INPUTS, 25_000) == 3
    assert cost.nas_per_month(INPUTS, 25_000) == pytest.approx((3 * 10 + 20 * 2.5) * WATT_MONTH)  # 11.688


def test_the_cloud_pays_per_token():
    assert cost.cloud_per_request(INPUTS) == pytest.approx((300 * 1.0 + 100 * 2.0) / 1e6)  # 0.0005
    assert cost.cloud_per_month(INPUTS, 5000) == pytest.approx(5000 * 30.4375 * 0.0005)  # 76.09


def test_break_even_where_the_idle_box_is_paid_by_what_the_cloud_would_cost():
    # 1.461 USD of idle watts / (0.0152188 cloud - 0.0002922 busy extra, USD a month per request a day)
    assert cost.break_even_per_day(INPUTS) == pytest.approx(1.461 / (30.4375 * 0.0005 - 20 / 10_000 * WATT_MONTH))
    assert cost.break_even_per_day(INPUTS) == pytest.approx(97.88, abs=0.01)
    assert cost.break_even_per_day(INPUTS, extra_only=True) == 0
    # With the article's 800 USD box over 36 months: 22.22 USD a month more to pay back.
    bought = cost.Inputs(**{**INPUTS.__dict__, "hardware": 800})
    assert cost.break_even_per_day(bought) == pytest.approx((1.461 + 800 / 36) / (30.4375 * 0.0005 - 0.0002922),
                                                            rel=1e-4)


def test_no_break_even_when_the_cloud_costs_less_per_request_or_one_box_cannot_reach_it():
    cheap_cloud = cost.Inputs(**{**INPUTS.__dict__, "cloud_input_per_m": 0.01, "cloud_output_per_m": 0.01})
    assert cost.break_even_per_day(cheap_cloud) is None  # 0.000122 < 0.000292 a month per request a day
    small_box = cost.Inputs(**{**INPUTS.__dict__, "capacity_per_day": 50})  # break-even would be past 50
    assert cost.break_even_per_day(small_box) is None


def test_cost_per_million_tokens_at_capacity():
    # 30 W all month for 10,000 x 30.4375 x 400 tokens = 121.75 million
    assert cost.per_million_tokens(INPUTS, 10_000) == pytest.approx(30 * WATT_MONTH / 121.75)


def test_the_report_reads_the_capacity_finders_summary_and_draws_its_chart(tmp_path, capsys):
    summary = tmp_path / "capacity.json"
    summary.write_text(json.dumps({"requests_per_day": 10_000, "completion_tokens_per_request": 100}))
    assert cost.main(["--capacity", str(summary), "--prompt-tokens", "300", "--idle-watts", "10",
                      "--busy-watts", "30", "--price-per-kwh", "0.2", "--cloud-input-per-m", "1",
                      "--cloud-output-per-m", "2", "--out", str(tmp_path / "cost.png")]) == 0
    printed = capsys.readouterr().out
    assert "break-even (whole box): 98 requests/day (one box, up to its capacity)" in printed
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cost.main(["--capacity", str(tmp_path / "missing.json")]) == 2


def test_the_workload_mixs_prompt_estimate_is_a_weighted_mean_of_its_characters():
    estimate = cost.workload_prompt_tokens()
    assert 20 < estimate < 1000  # short questions, a ~1,000-token document, chats: weighted

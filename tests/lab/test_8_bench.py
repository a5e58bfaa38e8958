"""The serving benchmark, short: one lab host alone behind its gateway, every stage of the run
(bandwidth, llama-bench, native llama-server direct, the stack), and output that is well formed.
The figures themselves belong in bench/results and the README, not in assertions."""

import csv
import subprocess
import sys

import pytest

from tests.lab.harness import ROOT, deployed

pytestmark = pytest.mark.lab
COLUMNS = {"users", "native_tokens_per_s", "stack_tokens_per_s", "stack_over_native", "native_ttft_p50_ms",
           "stack_ttft_p50_ms", "stack_share_of_ceiling", "front_cpu_us_per_token", "nginx_cpu_us_per_token",
           "failures", "llama_bench_prompt", "llama_bench_generation", "ceiling_tokens_per_s", "cpu",
           "stack_prompt_tokens_cached", "stack_prompt_tokens_read"}


def test_a_short_benchmark_run_measures_every_target_and_writes_its_table(deployment, tmp_path):
    deployed("inventory/lab_one.py")
    run = subprocess.run([sys.executable, "-m", "bench.serving", "--inventory", "inventory/lab_one.py",
                          "--users", "1,2", "--requests-per-user", "1", "--rounds", "1", "--max-tokens", "8",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "memory bandwidth" in run.stdout and "llama-bench: prompt" in run.stdout

    with open(tmp_path / "serving-llama-server.csv") as table:
        rows = list(csv.DictReader(table))
    assert [row["users"] for row in rows] == ["1", "2"]
    for row in rows:
        assert COLUMNS <= set(row), set(row) ^ COLUMNS
        assert row["failures"] == "0", run.stderr[-3000:]
        for column in ("native_tokens_per_s", "stack_tokens_per_s", "ceiling_tokens_per_s", "llama_bench_generation"):
            assert float(row[column]) > 0, (column, row)
        # The engine's prompt-token counter over the stack's run: every request reads some of its
        # prompt (at least the turn's end), and no run reads more than its requests could send.
        assert 0 < int(row["stack_prompt_tokens_read"]) and 0 <= int(row["stack_prompt_tokens_cached"]), row
        assert int(row["stack_prompt_tokens_read"]) + int(row["stack_prompt_tokens_cached"]) < 1000 * int(row["requests"])
        # CPU time per token of the stack's relays (the gateway is this host): 0 when a short run
        # took under a clock tick, never more than all the host's cores over the run (a misread
        # tick rate or process would be).
        all_cores_us_per_token = 1e6 * int(row["cpus"]) / float(row["stack_tokens_per_s"])
        for column in ("front_cpu_us_per_token", "nginx_cpu_us_per_token"):
            assert 0 <= float(row[column]) <= all_cores_us_per_token, (column, all_cores_us_per_token, row)
    assert (tmp_path / "serving-llama-server.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The gateway serves every lab host again for the tests after this one.
    deployed("inventory/lab.py")

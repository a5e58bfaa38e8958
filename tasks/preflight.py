"""Preflight: facts of the host and every data key checked before any operation changes anything.
Each refusal raises DeployError with the key or fact at fault and what to change."""

from pyinfra import host
from pyinfra.facts.files import File

from tasks import (
    budget,
    cpu_profile,
    engine,
    gateway,
    grafana,
    model_rollout,
    model_source,
    monitoring,
    service,
    topology,
)
from tasks.facts import NasHost, ServedModel
from tasks.plan import Plan
from tasks.settings import MAX_PARALLEL, DeployError, Settings, resolve

SUPPORTED_OS = {"debian": 12, "ubuntu": 22}  # minimum major version of each


def _check_os(facts: dict) -> None:
    minimum = SUPPORTED_OS.get(facts["os_id"])
    try:
        major = int(facts["os_version"].split(".")[0])
    except ValueError:
        major = 0
    if minimum is None or major < minimum:
        raise DeployError(f"{host.name}: {facts['os_id'] or 'unknown OS'} {facts['os_version']} is not "
                          "supported: use Debian 12 or later, or Ubuntu 22.04 or later")
    if not facts["systemd"]:
        raise DeployError(f"{host.name}: systemd is not running; the stack needs it for its units")


def _check_cgroups(facts: dict, settings: Settings) -> None:
    if facts["cgroup_fs"] != "cgroup2fs" and not settings.preflight_allow_cgroup_v1:
        found = facts["cgroup_fs"] or "nothing"
        raise DeployError(
            f"{host.name}: cgroup v2 is not mounted at /sys/fs/cgroup (found {found}): the "
            "slice's MemoryHigh and memory accounting need it. Boot with "
            "systemd.unified_cgroup_hierarchy=1, or set preflight_allow_cgroup_v1 = True to "
            "deploy with weaker limits")


def check() -> Plan:
    settings = resolve(host.name, host.data.dict())
    facts = host.get_fact(NasHost, store_dir=settings.model_store_dir, tsdb_dir=monitoring.TSDB_DIR)
    _check_os(facts)
    _check_cgroups(facts, settings)
    profile = cpu_profile.select(f"{facts['os_id']}{facts['os_version'].split('.')[0]}",
                                 facts["arch"], facts["cpu_flags"], settings.engine_cpu_profile_cap)
    if not profile.has_avx2 and not settings.preflight_allow_without_avx2:
        raise DeployError(
            f"{host.name}: this x86_64 CPU has no AVX2 (profile {profile.level}): llama.cpp decodes "
            "about 3-5 times slower here than on an AVX2 CPU of the same clock. To deploy anyway, "
            "set preflight_allow_without_avx2 = True for this host")
    limits = budget.limits(settings, facts["mem_bytes"], facts["cpus"])
    model = model_source.resolve(settings.model_name, settings.model_source, settings.model_sha256)
    if settings.engine_server == "llama-server":
        parallel, fits = budget.slots(model.size, model.metadata, settings.engine_context_size,
                                      limits.memory_high, settings.engine_parallel, MAX_PARALLEL,
                                      prompt_cache_bytes=settings.engine_prompt_cache_mib * budget.MIB)
    else:  # one request at a time per worker process
        parallel = settings.engine_workers
        if not 1 <= parallel <= limits.threads:
            raise DeployError(f"{host.name}: engine_workers {parallel} must be between 1 and the engine's "
                              f"{limits.threads} threads (each worker needs one)")
        fits = budget.check_fits(model.size, model.metadata, settings.engine_context_size, parallel,
                                 limits.memory_high, processes=parallel)
    model_path = f"{settings.model_store_dir}/{model.name}/{model.sha256}.gguf"
    present = host.get_fact(File, path=model_path)
    if not (present and present.get("size") == model.size) and facts["store_free_bytes"] < model.size * 1.1:
        raise DeployError(
            f"{host.name}: {facts['store_free_bytes'] >> 20} MiB free at {settings.model_store_dir}, "
            f"the model needs {model.size >> 20} MiB (+10 %): free space or move model_store_dir")
    if settings.engine_context_size > model.metadata.get(
            f"{model.metadata.get('general.architecture')}.context_length", 1 << 30):
        raise DeployError(f"engine_context_size {settings.engine_context_size} exceeds the model's "
                          "trained context length: lower it")
    roles = {"inference": topology.is_inference(), "gateway": topology.is_gateway(),
             "monitoring": topology.is_monitoring()}
    served = host.get_fact(ServedModel, config_path=model_rollout.config_path(settings),
                           rollback_path=model_rollout.ROLLBACK_PATH, unit=service.UNIT_NAME)
    # Each task's own checks of its data, before any task declares an operation.
    try:
        if roles["inference"]:
            engine.check(settings, profile)
            model_rollout.check(settings, model, served)
        if roles["gateway"]:
            gateway.check(settings)
        if roles["monitoring"]:
            monitoring.check(settings, facts["tsdb_free_bytes"] + facts["tsdb_used_bytes"])
            grafana.check(settings)
    except DeployError as error:
        raise DeployError(f"{host.name}: {error}") from None
    return Plan(host=host.name, **roles, settings=settings, facts=facts, profile=profile, limits=limits,
                budget=fits, model=model, model_path=model_path, bind_address=topology.engine_bind_address(),
                parallel=parallel, served=served)

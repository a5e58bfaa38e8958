"""Resource limits of the stack's slice and the memory budget a model must fit in."""

from dataclasses import dataclass

from tasks import gguf
from tasks.settings import DeployError, Settings

MIB = 1 << 20
# Python, FastAPI and llama.cpp's compute buffers around the weights and the KV cache.
ENGINE_OVERHEAD_BYTES = 384 * MIB
# The article's box: 6 GB of 8 for the service, 3.5 of 4 CPUs.
MEMORY_MAX_SHARE = 0.75
MEMORY_HIGH_SHARE = 0.90


@dataclass(frozen=True)
class Limits:
    memory_max: int
    memory_high: int
    cpu_quota_percent: int
    threads: int


def limits(settings: Settings, mem_bytes: int, cpus: int) -> Limits:
    memory_max = settings.service_memory_max or int(mem_bytes * MEMORY_MAX_SHARE) // MIB * MIB
    memory_high = settings.service_memory_high or int(memory_max * MEMORY_HIGH_SHARE) // MIB * MIB
    if memory_high > memory_max:
        raise DeployError(f"service_memory_high ({memory_high}) is above service_memory_max "
                          f"({memory_max}): lower it, or leave it unset for 90 % of the max")
    if memory_max > mem_bytes:
        raise DeployError(f"service_memory_max ({memory_max // MIB} MiB) is above the host's RAM "
                          f"({mem_bytes // MIB} MiB)")
    # The article leaves half a core of four to the NAS itself; a box with fewer than four cores
    # cannot spare it without halving inference speed.
    quota = settings.service_cpu_quota_percent or (cpus * 100 - 50 if cpus >= 4 else cpus * 100)
    if not 10 <= quota <= cpus * 100:
        raise DeployError(f"service_cpu_quota_percent {quota} must be between 10 and {cpus * 100} "
                          f"(this host has {cpus} CPUs)")
    # Threads beyond the quota are throttled mid-token and stall the others: whole CPUs only.
    threads = settings.engine_threads or max(1, quota // 100)
    if threads < 1 or threads > cpus:
        raise DeployError(f"engine_threads {threads} must be between 1 and {cpus} (CPUs of this host)")
    return Limits(memory_max, memory_high, quota, threads)


@dataclass(frozen=True)
class Budget:
    model_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    limit_bytes: int
    prompt_cache_bytes: int = 0  # llama-server's host-RAM cache of prompts moved out of slots

    @property
    def needed_bytes(self) -> int:
        return self.model_bytes + self.kv_cache_bytes + self.overhead_bytes + self.prompt_cache_bytes

    def describe(self) -> str:
        cache = f" + prompt cache {self.prompt_cache_bytes / MIB:.0f} MiB" if self.prompt_cache_bytes else ""
        return (f"model {self.model_bytes / MIB:.0f} MiB + KV cache {self.kv_cache_bytes / MIB:.0f} MiB{cache}"
                f" + runtime {self.overhead_bytes / MIB:.0f} MiB = {self.needed_bytes / MIB:.0f} MiB"
                f" against MemoryHigh {self.limit_bytes / MIB:.0f} MiB")


def slots(model_size: int, metadata: dict, context: int, limit: int, wanted: int | None,
          most: int, prompt_cache_bytes: int = 0) -> tuple[int, Budget]:
    """(parallel slots, budget): `wanted` if given and it fits, else the most (up to `most`)
    whose KV caches of `context` tokens each fit beside the weights (and the prompt cache)."""
    if wanted is not None:
        if wanted < 1:
            raise DeployError(f"engine_parallel {wanted} must be 1 or more")
        return wanted, check_fits(model_size, metadata, context, wanted, limit, prompt_cache_bytes=prompt_cache_bytes)
    chosen = 1, check_fits(model_size, metadata, context, 1, limit, prompt_cache_bytes=prompt_cache_bytes)
    for count in range(2, most + 1):
        try:
            chosen = count, check_fits(model_size, metadata, context, count, limit,
                                       prompt_cache_bytes=prompt_cache_bytes)
        except DeployError:
            break
    return chosen


def check_fits(model_size: int, metadata: dict, context: int, sequences: int, limit: int,
               processes: int = 1, prompt_cache_bytes: int = 0) -> Budget:
    """Refuse a model whose weights (shared through mmap), KV cache and runtime (one per
    process) would not stay under MemoryHigh."""
    try:
        kv = gguf.kv_cache_bytes(metadata, context, sequences)
    except gguf.GgufError as error:
        raise DeployError(f"cannot size the KV cache: {error}") from None
    budget = Budget(model_size, kv, ENGINE_OVERHEAD_BYTES * processes, limit, prompt_cache_bytes)
    if budget.needed_bytes > limit:
        raise DeployError(f"the model does not fit: {budget.describe()}. Choose a smaller model or "
                          "quantization, lower engine_context_size, or raise service_memory_high/max")
    return budget

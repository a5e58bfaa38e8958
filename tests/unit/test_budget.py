import pytest

from tasks import budget
from tasks.settings import DeployError, resolve

GIB = 1 << 30
SMOLLM2 = {"general.architecture": "llama", "llama.block_count": 30, "llama.embedding_length": 576,
           "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3}


def test_the_articles_nas_gets_its_limits():
    limits = budget.limits(resolve("nas", {}), 8 * GIB, 4)
    assert limits.memory_max == 6 * GIB
    assert limits.memory_high == int(6 * GIB * 0.9) // budget.MIB * budget.MIB
    assert limits.cpu_quota_percent == 350
    assert limits.threads == 3


def test_a_two_core_box_keeps_both_cores_for_inference():
    limits = budget.limits(resolve("nas", {}), 8 * GIB, 2)
    assert (limits.cpu_quota_percent, limits.threads) == (200, 2)


def test_overrides_win():
    limits = budget.limits(resolve("nas", {"service_memory_max": 4 * GIB, "service_cpu_quota_percent": 150,
                                           "engine_threads": 2}), 8 * GIB, 4)
    assert (limits.memory_max, limits.cpu_quota_percent, limits.threads) == (4 * GIB, 150, 2)


def test_memory_high_above_max_is_refused():
    with pytest.raises(DeployError, match="service_memory_high .* is above service_memory_max"):
        budget.limits(resolve("nas", {"service_memory_max": 2 * GIB, "service_memory_high": 3 * GIB}), 8 * GIB, 4)


def test_quota_beyond_the_cpus_is_refused():
    with pytest.raises(DeployError, match="service_cpu_quota_percent 800 must be between 10 and 400"):
        budget.limits(resolve("nas", {"service_cpu_quota_percent": 800}), 8 * GIB, 4)


def test_kv_cache_of_smollm2_at_2048_tokens():
    # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes x 2048 positions
    assert budget.gguf.kv_cache_bytes(SMOLLM2, 2048) == 30 * 3 * 128 * 2 * 2048


def test_a_model_that_does_not_fit_is_refused_with_the_figures():
    with pytest.raises(DeployError) as refused:
        budget.check_fits(7 * GIB, SMOLLM2, 2048, 1, 5529 * budget.MIB)
    message = str(refused.value)
    assert "model 7168 MiB + KV cache 45 MiB + runtime 384 MiB = 7597 MiB against MemoryHigh 5529 MiB" in message
    assert "lower engine_context_size" in message


def test_a_model_that_fits_reports_its_budget():
    fits = budget.check_fits(100 * budget.MIB, SMOLLM2, 2048, 1, 5 * GIB)
    assert fits.needed_bytes == 100 * budget.MIB + 45 * budget.MIB + budget.ENGINE_OVERHEAD_BYTES


def _slot_budget(limit_mib: int, wanted=None):
    from tasks.budget import slots
    # A model of 1 GiB whose KV cache is 64 MiB per slot at this context.
    metadata = {"general.architecture": "llama", "llama.block_count": 16, "llama.embedding_length": 2048,
                "llama.attention.head_count": 16, "llama.attention.head_count_kv": 16}
    return slots(1 << 30, metadata, 512, limit_mib << 20, wanted, 8)


def test_llama_server_gets_as_many_slots_as_the_budget_holds_at_most_eight():
    (_, one) = _slot_budget(4096, 1)
    per_slot = one.kv_cache_bytes
    room = 1024 + 384 + 3 * per_slot / (1 << 20)  # weights + runtime + three slots
    assert _slot_budget(int(room) + 1)[0] == 3
    assert _slot_budget(1 << 16)[0] == 8
    with pytest.raises(DeployError, match="the model does not fit"):
        _slot_budget(1024)


def test_a_slot_count_asked_for_must_fit():
    assert _slot_budget(1 << 16, 2)[0] == 2
    with pytest.raises(DeployError, match="the model does not fit"):
        _slot_budget(1500, 8)
    with pytest.raises(DeployError, match="engine_parallel 0 must be 1 or more"):
        _slot_budget(1 << 16, 0)


def test_the_prompt_cache_takes_its_room_from_the_slots_and_is_named_in_a_refusal():
    from tasks.budget import slots
    metadata = {"general.architecture": "llama", "llama.block_count": 16, "llama.embedding_length": 2048,
                "llama.attention.head_count": 16, "llama.attention.head_count_kv": 16}
    per_slot = _slot_budget(4096, 1)[1].kv_cache_bytes >> 20  # 64 MiB
    room = 1024 + 384 + 3 * per_slot + 1
    assert slots(1 << 30, metadata, 512, room << 20, None, 8)[0] == 3
    count, fits = slots(1 << 30, metadata, 512, room << 20, None, 8, prompt_cache_bytes=2 * per_slot << 20)
    assert count == 1 and fits.prompt_cache_bytes == 2 * per_slot << 20
    assert fits.needed_bytes == (1024 + 384 + per_slot + 2 * per_slot) << 20
    with pytest.raises(DeployError, match=r"prompt cache 4096 MiB .* against MemoryHigh"):
        slots(1 << 30, metadata, 512, room << 20, None, 8, prompt_cache_bytes=4 << 30)

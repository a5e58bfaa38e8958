import pytest

from tasks import cpu_profile
from tasks.settings import DeployError

V3 = {"sse4_2", "ssse3", "popcnt", "avx", "avx2", "fma", "f16c", "bmi2"}
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
# What these machines advertise: AMX that the OS does not enable.
ADVERTISES_AMX = V4 | {"amx_tile", "amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni"}


def test_best_level_is_chosen():
    assert cpu_profile.select("debian12", "x86_64", V4).level == "x86-64-v4"
    assert cpu_profile.select("debian12", "x86_64", V3).level == "x86-64-v3"
    assert cpu_profile.select("debian12", "x86_64", {"sse4_2", "ssse3", "popcnt"}).level == "x86-64-v2"


def test_cap_lowers_the_profile_so_one_build_serves_a_fleet():
    assert cpu_profile.select("debian12", "x86_64", V4, cap="x86-64-v3").level == "x86-64-v3"


def test_unknown_cap_is_refused():
    with pytest.raises(DeployError, match="engine_cpu_profile_cap `v3` is not a profile of x86_64"):
        cpu_profile.select("debian12", "x86_64", V4, cap="v3")


def test_flags_never_enable_what_a_cpu_merely_advertises():
    args = cpu_profile.select("debian12", "x86_64", ADVERTISES_AMX).cmake_args()
    assert "-DGGML_NATIVE=OFF" in args
    for flag in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "GGML_AVX512_VNNI", "GGML_AVX_VNNI"):
        assert f"-D{flag}=OFF" in args
    assert "-DGGML_AVX512=ON" in args


def test_v3_build_has_no_avx512():
    args = cpu_profile.select("debian12", "x86_64", V4, cap="x86-64-v3").cmake_args()
    assert "-DGGML_AVX512=OFF" in args and "-DGGML_AVX2=ON" in args


def test_profile_name_includes_os_so_builds_match_the_glibc():
    profile = cpu_profile.select("ubuntu22", "x86_64", V3)
    assert profile.name == "ubuntu22-x86_64-x86-64-v3"


def test_without_avx2_the_profile_says_so():
    assert not cpu_profile.select("debian12", "x86_64", {"sse4_2", "ssse3", "popcnt"}).has_avx2


def test_arm64_dotprod():
    profile = cpu_profile.select("debian12", "aarch64", {"fp", "asimd", "asimddp", "fphp"})
    assert profile.level == "armv8.2-a+dotprod"
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod" in profile.cmake_args()
    assert profile.has_avx2  # the AVX2 refusal is for x86_64 only


def test_unsupported_architecture_is_refused():
    with pytest.raises(DeployError, match="architecture riscv64 is not supported"):
        cpu_profile.select("debian12", "riscv64", set())

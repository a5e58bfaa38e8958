"""CPU profiles: which engine build a host can run, and the CMake flags that build it.

Never `-march=native`: a CPU can advertise an instruction set the OS does not enable (AMX on
these machines), and such a build faults at the first token. Each profile names its instruction
sets explicitly, so one build serves every host of the same profile.
"""

from dataclasses import dataclass

from tasks.settings import DeployError

# x86-64 micro-architecture levels (the psABI's), as /proc/cpuinfo names their flags.
X86_LEVELS: list[tuple[str, frozenset[str]]] = [
    ("x86-64-v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
                             "avx", "avx2", "fma", "f16c", "bmi2"})),
    ("x86-64-v3", frozenset({"avx", "avx2", "fma", "f16c", "bmi2"})),
    ("x86-64-v2", frozenset({"sse4_2", "ssse3", "popcnt"})),
]
X86_CMAKE = {
    "x86-64-v4": {"GGML_AVX": "ON", "GGML_AVX2": "ON", "GGML_FMA": "ON", "GGML_F16C": "ON",
                  "GGML_BMI2": "ON", "GGML_AVX512": "ON"},
    "x86-64-v3": {"GGML_AVX": "ON", "GGML_AVX2": "ON", "GGML_FMA": "ON", "GGML_F16C": "ON",
                  "GGML_BMI2": "ON", "GGML_AVX512": "OFF"},
    "x86-64-v2": {"GGML_AVX": "OFF", "GGML_AVX2": "OFF", "GGML_FMA": "OFF", "GGML_F16C": "OFF",
                  "GGML_BMI2": "OFF", "GGML_AVX512": "OFF"},
}
# ARM64 NAS CPUs: Cortex-A55/A76 (RK3588, Raspberry Pi 5) have dot-product; older A53/A72 do not.
ARM_LEVELS: list[tuple[str, frozenset[str]]] = [
    ("armv8.2-a+dotprod", frozenset({"asimd", "asimddp", "fphp"})),
    ("armv8-a", frozenset({"asimd"})),
]
# Flags that no profile turns on: the extras a CPU may advertise but an OS may not enable.
ALWAYS_OFF = {"GGML_NATIVE": "OFF", "GGML_AVX_VNNI": "OFF", "GGML_AVX512_VBMI": "OFF",
              "GGML_AVX512_VNNI": "OFF", "GGML_AVX512_BF16": "OFF", "GGML_AMX_TILE": "OFF",
              "GGML_AMX_INT8": "OFF", "GGML_AMX_BF16": "OFF", "LLAVA_BUILD": "OFF"}


@dataclass(frozen=True)
class CpuProfile:
    os: str          # e.g. debian12: a build links against that release's glibc
    arch: str        # x86_64 or aarch64
    level: str       # e.g. x86-64-v3

    @property
    def name(self) -> str:
        return f"{self.os}-{self.arch}-{self.level}"

    @property
    def has_avx2(self) -> bool:
        return self.arch != "x86_64" or self.level in ("x86-64-v3", "x86-64-v4")

    def cmake_args(self) -> str:
        flags = dict(ALWAYS_OFF)
        if self.arch == "x86_64":
            flags.update(X86_CMAKE[self.level])
        else:
            flags["GGML_CPU_ARM_ARCH"] = self.level
        return " ".join(f"-D{key}={value}" for key, value in sorted(flags.items()))


def select(os: str, arch: str, cpu_flags: set[str], cap: str | None = None) -> CpuProfile:
    """The best profile a host's CPU runs, no higher than `cap` (engine_cpu_profile_cap)."""
    levels = {"x86_64": X86_LEVELS, "aarch64": ARM_LEVELS}.get(arch)
    if levels is None:
        raise DeployError(f"architecture {arch} is not supported: use an x86_64 or aarch64 host")
    names = [name for name, _ in levels]
    if cap is not None and cap not in names:
        raise DeployError(f"engine_cpu_profile_cap `{cap}` is not a profile of {arch}; "
                          f"use one of {', '.join(names)}")
    allowed = names[names.index(cap):] if cap else names
    for name, required in levels:
        if name in allowed and required <= cpu_flags:
            return CpuProfile(os=os, arch=arch, level=name)
    raise DeployError(f"this {arch} CPU lacks even {names[-1]} ({', '.join(sorted(levels[-1][1]))}): "
                      "llama.cpp cannot run here")

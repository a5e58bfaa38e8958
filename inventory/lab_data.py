"""The data every lab inventory shares: what makes this machine's hosts behave like NAS boxes
and lets the tests through. Data only, so importing it needs no lab up."""

LAB_DATA = {
    # A NAS's memory, whatever this machine has.
    "service_memory_max": 6 * 1024**3,
    # AVX2 without AVX-512, like the N100-class CPUs of most NAS boxes; one build then also
    # serves the lab's VMs (qemu TCG offers AVX2, not AVX-512).
    "engine_cpu_profile_cap": "x86-64-v3",
    # Containers see this machine's cgroup hierarchy, read-only: limits are configured, not
    # enforced (the VM tests prove enforcement). Where the machine has cgroup v1, so do they.
    "preflight_allow_cgroup_v1": True,
    # The lab's hosts share this machine's two cores: one inference thread each, as two real
    # NAS boxes would not share theirs. With two each, two busy engines put four spinning
    # threads on two cores and every request crawls (seen: 50 s instead of 2 s).
    "engine_threads": 1,
    # Tests and load tests share a few keys: let them through the article's 10/minute.
    "gateway_rate_per_minute": 600,
    "gateway_rate_burst": 20,
    "gateway_concurrent_per_key": 8,
    # Grafana is in no registry the lab can reach (not Debian, PyPI or npm): its dashboard is
    # checked against the lab's Prometheus instead (tests/lab/test_7_monitoring.py).
    "monitoring_grafana": None,
}

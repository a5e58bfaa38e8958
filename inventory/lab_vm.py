"""The lab's VM hosts (`python -m lab up --backend vm`): own kernel, enforced cgroup limits.
Their CPU under TCG emulation is too slow to compile: they unpack the installed engine of their
CPU profile from the controller's cache (deploy inventory/lab.py first)."""

from inventory.lab_hosts import lab_hosts

inference = lab_hosts(
    "vm",
    engine_build_on_host=False,
    engine_cpu_profile_cap="x86-64-v3",
    # Emulated CPUs load and warm up a model in minutes, not seconds.
    engine_ready_timeout_s=1800,
    model_probe_timeout_s=1800,  # the probe's 16-token completion: about a minute under TCG
    # Four 48-token answers would take ten minutes under TCG: the gate is proven on the containers.
    gateway_accept_requests=0,
    # Small enough that a test can exceed it on a 4 GB VM.
    service_memory_max=1024**3,
    monitoring_grafana=None,  # in no registry the lab reaches (see inventory/lab.py)
)
gateway = inference[:1]

"""The lab's VM hosts (`python -m lab up --backend vm`): own kernel, enforced cgroup limits.
Their CPU under TCG is too slow to compile: they take the engine build of their CPU profile
from the controller's cache (deploy inventory/lab.py first)."""

from inventory.lab_hosts import lab_hosts

inference = lab_hosts("vm", engine_build_on_host=False, engine_ready_timeout_s=1800)
gateway = inference[:1]

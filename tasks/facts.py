"""One fact with everything preflight needs, gathered in a single round trip per host."""

from pyinfra.api import FactBase

FIELDS_SCRIPT = r"""
echo "arch=$(uname -m)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os_id=$ID"; echo "os_version=$VERSION_ID"; fi
echo "cpu_flags=$(grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo | cut -d: -f2)"
echo "cpus=$(nproc --all)"
echo "mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
echo "cgroup_fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null)"
echo "systemd=$([ -d /run/systemd/system ] && echo yes || echo no)"
dir=STORE_DIR; while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
echo "store_free_kib=$(df -Pk "$dir" | awk 'NR==2 {print $4}')"
dir=TSDB_DIR; while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
echo "tsdb_free_kib=$(df -Pk "$dir" | awk 'NR==2 {print $4}')"
echo "tsdb_used_kib=$(du -sk TSDB_DIR 2>/dev/null | cut -f1)"
"""


class NasHost(FactBase):
    """{"arch", "os_id", "os_version", "cpu_flags" (set), "cpus", "mem_bytes", "cgroup_fs",
    "systemd" (bool), "store_free_bytes", "tsdb_free_bytes", "tsdb_used_bytes"}: the free bytes of
    the model store's disk and of Prometheus's, and what Prometheus's samples take now."""

    def command(self, store_dir: str, tsdb_dir: str) -> str:
        return (FIELDS_SCRIPT.replace("STORE_DIR", "'" + store_dir.replace("'", "") + "'")
                .replace("TSDB_DIR", "'" + tsdb_dir.replace("'", "") + "'"))

    def process(self, output) -> dict:
        raw = dict(line.split("=", 1) for line in output if "=" in line)
        return {
            "arch": raw.get("arch", ""),
            "os_id": raw.get("os_id", ""),
            "os_version": raw.get("os_version", ""),
            "cpu_flags": set(raw.get("cpu_flags", "").split()),
            "cpus": int(raw.get("cpus") or 1),
            "mem_bytes": int(raw.get("mem_kib") or 0) * 1024,
            "cgroup_fs": raw.get("cgroup_fs", ""),
            "systemd": raw.get("systemd") == "yes",
            "store_free_bytes": int(raw.get("store_free_kib") or 0) * 1024,
            "tsdb_free_bytes": int(raw.get("tsdb_free_kib") or 0) * 1024,
            "tsdb_used_bytes": int(raw.get("tsdb_used_kib") or 0) * 1024,
        }


class ServedModel(FactBase):
    """What the engine of this host serves: {"model": model.json or None, "rollback": the
    engine's record of a model it went back from, or None, "active": the unit runs}."""

    def command(self, config_path: str, rollback_path: str, unit: str) -> str:
        return (f"cat {config_path} 2>/dev/null || echo null; echo '%%'; cat {rollback_path} 2>/dev/null || echo null; "
                f"echo '%%'; systemctl is-active --quiet {unit} && echo true || echo false")

    def process(self, output) -> dict:
        import json

        model, rollback, active = "\n".join(output).split("%%")
        try:
            return {"model": json.loads(model), "rollback": json.loads(rollback), "active": json.loads(active)}
        except ValueError:  # a file cut by hand: serve as if nothing were known
            return {"model": None, "rollback": None, "active": json.loads(active or "false")}

"""What the lab tests share: the lab and pyinfra run as an operator runs them, the table of what
each deploy cost, the message of a failed deploy, and the VM that boots beside the container tests.

A module of its own, not the conftest: pytest loads a conftest under a name of its own, so state
kept there (the background VM, the deploy times) would exist twice.
"""

import contextlib
import csv
import os
import re
import runpy
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lab import config as lab_config
from lab import state as lab_state
from lab.waiting import wait_until
from tests.timing import DEPLOY_TIMES

ROOT = Path(__file__).resolve().parents[2]
ALTERNATIVE_INVENTORY = "inventory/lab_alternative.py"
PYINFRA = Path(sys.executable).parent / "pyinfra"

def _run(command: list[str], timeout: float, started=None) -> subprocess.CompletedProcess:
    """subprocess.run, with the process handed to `started` so that another thread can end it."""
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        if started:
            started(process)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def lab(*args: str, timeout: int = 900, nice: int = 0, started=None) -> subprocess.CompletedProcess:
    return _run(["nice", "-n", str(nice), sys.executable, "-m", "lab", *args], timeout, started)


def deploy(inventory: str, *args: str, timeout: int = 2400, who: str | None = None,
           nice: int = 0, started=None) -> subprocess.CompletedProcess:
    """`pyinfra -y <inventory> deploy.py <args>` as an operator runs it; its time goes in the
    session's table of deploys."""
    who = who or os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    began = time.monotonic()
    result = _run(["nice", "-n", str(nice), str(PYINFRA), "-y", inventory, "deploy.py", *args],
                  timeout, started)
    DEPLOY_TIMES.append({"who": who, "inventory": inventory, "args": args, "rc": result.returncode,
                         "seconds": time.monotonic() - began})
    return result


# pyinfra's lines: `--> Starting operation: <name>`, then `[host] ...` for what each host did.
_OPERATION = re.compile(r"--> Starting operation: (.*?)\s*$")
_HOST_LINE = re.compile(r"^\s*\[([^\]]+)\]\s+(?:nested\s+)?(.*)$")
_NOISE = re.compile(r"^(Success|No changes|Changes|Ready:|Loaded fact|Connected)\b")


def deploy_failure(result: subprocess.CompletedProcess) -> str:
    """What a failed deploy says about its failure: each failing operation with the lines its
    hosts printed (the command's error output among them), then pyinfra's last lines."""
    output = (result.stdout + "\n" + result.stderr).splitlines()
    failures, operation, lines = [], "(before any operation: preflight)", []
    for line in output:
        started = _OPERATION.search(line)
        if started:
            if any("Error" in text for text in lines):
                failures.append((operation, lines))
            operation, lines = started.group(1), []
            continue
        host_line = _HOST_LINE.match(line)
        if host_line and not _NOISE.match(host_line.group(2)):
            lines.append(line.strip())
    if any("Error" in text for text in lines):
        failures.append((operation, lines))
    report = [f"deploy exited {result.returncode}"]
    for operation, lines in failures:
        report.append(f"failing operation: {operation}")
        report.extend(f"    {text}" for text in lines[-60:])
    report.append("last lines of the deploy's output:")
    report.extend(output[-25:])
    return "\n".join(report)


def deployed(inventory: str, *args: str, **options) -> subprocess.CompletedProcess:
    """A deploy that must succeed; if it does not, the assertion names the failing operation and
    shows its error output."""
    result = deploy(inventory, *args, **options)
    assert result.returncode == 0, deploy_failure(result)
    return result


def http_from(host, url: str, headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of a GET sent from a lab host, with the host's own python3."""
    script = ("import sys, urllib.request, urllib.error\n"
              f"request = urllib.request.Request({url!r}, headers={headers or {}!r})\n"
              "try:\n    response = urllib.request.urlopen(request, timeout=30)\n"
              "except urllib.error.HTTPError as error:\n    response = error\n"
              "print(response.status)\nprint(response.read().decode())\n")
    result = host.run(f"python3 -c {shlex.quote(script)}")
    assert result.rc == 0, result.stderr
    status, _, body = result.stdout.partition("\n")
    return int(status), body


def engine_metrics(gateway, engine: str) -> list[str]:
    """The lines of an engine's /metrics (`host:port`), read from a gateway host (a caller its
    firewall lets in)."""
    status, body = http_from(gateway, f"http://{engine}/metrics")
    assert status == 200, body
    return body.splitlines()


def engine_requests_served(gateway, engine: str) -> float:
    """An engine's count of requests answered 200."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in engine_metrics(gateway, engine)
               if line.startswith("nas_ai_engine_requests_total{") and 'status="200"' in line)


def changed_operations(output: str) -> int:
    """The `Success` column of pyinfra's Grand total row: operations that changed something."""
    match = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    assert match, output[-3000:]
    return 0 if match.group(2) == "-" else int(match.group(2))


@contextlib.contextmanager
def ssh_tunnel(name: str, remote: str):
    """The URL of a loopback-only service of a lab host (`remote`, host:port as the host sees it),
    reached as an operator would: through an SSH tunnel."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    tunnel = subprocess.Popen(["ssh", "-F", str(lab_config.SSH_CONFIG), "-N", "-o", "ExitOnForwardFailure=yes",
                               "-L", f"127.0.0.1:{local}:{remote}", name])

    def listening() -> bool:
        assert tunnel.poll() is None, f"the SSH tunnel to {name} exited with {tunnel.returncode}"
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", local)) == 0

    try:
        wait_until(listening, 30, f"the SSH tunnel to {name}:{remote}", interval=0.2)
        yield f"http://127.0.0.1:{local}"
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


def inventory_hosts(inventory: str) -> dict[str, list[tuple[str, dict]]]:
    """The groups of a pyinfra inventory file, as pyinfra reads them."""
    groups = runpy.run_path(str(ROOT / inventory))
    return {name: value for name, value in groups.items()
            if isinstance(value, list) and value and isinstance(value[0], tuple)}


def lab_host(name: str):
    import testinfra
    return testinfra.get_host(f"ssh://{name}", ssh_config=str(lab_config.SSH_CONFIG), sudo=True)


@contextlib.contextmanager
def locust_load(gateway_url: str, api_key: str, prefix, seconds: int, stream_share: float = 1):
    """4 users (streaming, unless stream_share says otherwise) for `seconds` (bounded in requests
    too); yields the process. Afterwards the caller reads `requests_and_failures(prefix)`."""
    env = dict(os.environ, NAS_AI_API_KEY=api_key)
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--host", gateway_url,
         "--headless", "-u", "4", "-r", "4", "-t", f"{seconds}s", "--max-requests", "3000",
         "--stream-share", str(stream_share),
         "--think-time", "0.5", "--csv", str(prefix), "--only-summary",
         # The users' model is whichever serves: llama-server serves one, whatever the request names.
         "--model", "smollm2-135m-instruct"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
        process.wait(timeout=seconds + 120)
    finally:
        if process.poll() is None:
            process.kill()


def requests_and_failures(prefix) -> tuple[int, int, list[str]]:
    with open(f"{prefix}_stats.csv") as stats:
        rows = [row for row in csv.DictReader(stats) if row["Type"] == "POST"]
    errors = []
    if os.path.exists(f"{prefix}_failures.csv"):
        with open(f"{prefix}_failures.csv") as failures:
            errors = [f"{row['Occurrences']}x {row['Error']}" for row in csv.DictReader(failures)]
    return sum(int(r["Request Count"]) for r in rows), sum(int(r["Failure Count"]) for r in rows), errors



@contextlib.contextmanager
def small_disk(name: str, path: str, size_mib: int):
    """A volume of its own at `path` on lab container `name`, holding what `path` held: an ext4
    image on a loop device of this machine, mounted in the container's mount namespace, so a NAS
    disk can fill up without filling this machine's. Unmounted (lazily: the engine may hold a file
    open) and detached when the block ends; what was written to it is gone, what `path` held is back."""
    nspawn = lab_state.pid_alive(lab_config.HOSTS_DIR / name / "pid")
    init = subprocess.run(["pgrep", "-P", str(nspawn)], capture_output=True, text=True, check=True).stdout.split()[0]

    def inside(script: str, check: bool = True) -> None:
        # The pid namespace too: umount reads /proc/self, the container's /proc there.
        subprocess.run(["nsenter", "-t", init, "-m", "-p", "--", "sh", "-euc", script], check=check, timeout=120)

    scratch = Path(tempfile.mkdtemp(prefix="lab-disk-"))
    device = None
    try:
        image = scratch / "disk.img"
        subprocess.run(["truncate", "-s", f"{size_mib}M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                                check=True).stdout.strip()
        node, staging = f"/dev/lab-{Path(device).name}", f"/run/lab-{Path(device).name}"
        try:
            inside(f"mknod {node} b 7 {os.minor(os.stat(device).st_rdev)}; mkdir -p {staging}; mount {node} {staging}; "
                   f"chown $(stat -c %u:%g {path}) {staging}; chmod $(stat -c %a {path}) {staging}; "
                   f"cp -a {path}/. {staging}/; umount {staging}; rmdir {staging}; mount {node} {path}")
            yield
        finally:
            # Wherever the volume is mounted (its path, or the staging point of a copy that failed).
            inside(f"awk -v d={node} '$1 == d {{print $2}}' /proc/self/mounts | xargs -r -n1 umount -l; "
                   f"rm -f {node}; rmdir {staging} 2>/dev/null || true", check=False)
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def fill(host, path: str, leave_bytes: int = 0, name: str = "lab-filler") -> str:
    """Fill the volume holding `path` (a file of its own there) until `leave_bytes` are free; returns
    the file to remove."""
    free = int(host.check_output(f"df -B1 --output=avail {path} | tail -1"))
    filler = f"{path}/{name}"
    # The file system needs some blocks for the file's own extents: the last MiB goes byte by byte.
    host.check_output(f"fallocate -l {max(free - leave_bytes - (1 << 20), 4096)} {filler}")
    if leave_bytes == 0:
        host.run(f"dd if=/dev/zero of={filler} bs=64k oflag=append conv=notrunc status=none")  # until ENOSPC
    return filler


class BackgroundVm:
    """The VM's boot and deploy, in a thread beside the container tests. Under TCG they take
    minutes of CPU, most of which the container tests leave idle (SSH round trips, waits for
    alerts); `lab up`, qemu and the deploy run at the lowest priority, so the load tests and the
    benchmark keep their cores when they need them."""

    NICE = 19

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._outcome: dict = {}
        self._stopping = threading.Event()
        self._deploying: subprocess.Popen | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="background-vm", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            up = lab("up", "--backend", "vm", "--nodes", "1", "--nice", str(self.NICE), nice=self.NICE)
            self._outcome["up"] = up
            self._outcome["up_seconds"] = time.monotonic() - started
            DEPLOY_TIMES.append({"who": "VM, in the background", "inventory": "(lab up --backend vm)",
                                 "args": (), "rc": up.returncode, "seconds": self._outcome["up_seconds"]})
            if up.returncode == 0 and not self._stopping.is_set():
                self._outcome["deploy"] = deploy("inventory/lab_vm.py", who="VM, in the background",
                                                 nice=self.NICE, started=self._track)
        except Exception as error:  # reported by wait(), in the VM tests
            self._outcome["error"] = error
        self._outcome["seconds"] = time.monotonic() - started

    def _track(self, process: subprocess.Popen) -> None:
        self._deploying = process
        if self._stopping.is_set():
            process.terminate()

    def wait(self) -> dict:
        """The VM booted and deployed: started now if no container deploy started it."""
        self.start()
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome

    def stop(self) -> None:
        """Before `lab down` and at the session's end, whatever happened to the VM tests: let a
        `lab up` finish (stopping it halfway could leave a VM that no state file names), end a
        deploy, and wait for the thread."""
        self._stopping.set()
        if self._deploying is not None and self._deploying.poll() is None:
            self._deploying.terminate()
        if self._thread is not None:
            self._thread.join()


BACKGROUND_VM = BackgroundVm()

"""What the lab started, kept in one JSON file that `down`, `status` and the inventories read."""

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab import config
from tasks import atomic


def load() -> dict:
    if config.STATE_FILE.exists():
        return json.loads(config.STATE_FILE.read_text())
    return {"hosts": {}}


def save(state: dict) -> None:
    atomic.write_text(config.STATE_FILE, json.dumps(state, indent=1, sort_keys=True))


@contextmanager
def locked() -> Iterator[None]:
    """One writer of the state at a time: two `lab up` at once (the VM's in the background, the
    alternative scenario's in the foreground) would otherwise each save without the other's hosts."""
    config.HOME.mkdir(parents=True, exist_ok=True)
    with open(config.HOME / "lab.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def editing() -> Iterator[dict]:
    """The state as it is now, saved when the block ends, under the lock."""
    with locked():
        current = load()
        yield current
        save(current)


def pid_alive(pid_file: str | Path) -> int | None:
    """The pid recorded in pid_file if that process still runs."""
    try:
        pid = int(Path(pid_file).read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return None
    return pid


def memory_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (a container's whole tree)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total

"""Templates live in files/<task>/ beside the task that renders them; this renders them and
installs what they render: configs that must pass their daemon's check before they go live, unit
files, and the services that run on them."""

import hashlib
from io import StringIO
from pathlib import Path

import jinja2
from pyinfra import host
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import files, server, systemd

FILES = Path(__file__).parent.parent / "files"
SYSTEMD_DIR = "/etc/systemd/system"
_environment = jinja2.Environment(loader=jinja2.FileSystemLoader(FILES), undefined=jinja2.StrictUndefined,
                                  keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **variables) -> str:
    return _environment.get_template(template).render(**variables)


def put_text(name: str, text: str, dest: str, mode: str, user: str = "root", group: str = "root"):
    return files.put(name=name, src=StringIO(text), dest=dest, user=user, group=group, mode=mode)


class Unchanged:
    """Stands for an operation that was not needed: the live file already holds the text."""
    will_change = False


def install_checked(name: str, text: str, dest: str, check: str, mode: str = "0644"):
    """Put `text` at `dest` only once `check` passes. A check that takes the file's path (`{path}`:
    nft, promtool, amtool) runs on a staged copy, and the live file is never touched by a bad
    one. A check that reads a whole directory (nginx -t, mtail) runs with the new file in place,
    and the previous file is restored when it fails. Returns the installing operation."""
    if host.get_fact(Sha256File, path=dest) == hashlib.sha256(text.encode()).hexdigest():
        return Unchanged()
    staged = f"{dest}.staged"
    put_text(f"Stage {name}", text, staged, mode)
    refused = f'echo "{name}: the new configuration failed its check; the live one is unchanged" >&2'
    if "{path}" in check:
        script = f"""set -e
if ! {check.replace("{path}", staged)}; then
    rm -f {staged}
    {refused}
    exit 1
fi
mv -f {staged} {dest}"""
    else:
        script = f"""set -e
if [ -e {dest} ]; then cp -p {dest} {dest}.previous; fi
mv -f {staged} {dest}
if ! {check}; then
    if [ -e {dest}.previous ]; then mv -f {dest}.previous {dest}; else rm -f {dest}; fi
    {refused}
    exit 1
fi
rm -f {dest}.previous"""
    return server.shell(name=f"Check {name} and install it", commands=[script])


def put_unit_file(name: str, text: str, path: str):
    """A unit, slice or drop-in: pass the operation to `running` so systemd rereads it."""
    if not path.startswith(SYSTEMD_DIR + "/"):
        raise ValueError(f"{path} is not under {SYSTEMD_DIR}")
    return put_text(name, text, path, "0644")


def running(name: str, unit: str, unit_files=(), restarted: bool = False, reloaded: bool = False):
    """`unit` running and enabled. A changed unit file means a daemon-reload and a restart (a
    reload would keep the old unit's settings); otherwise a reload when asked."""
    unit_changed = any(op.will_change for op in unit_files)
    restart = restarted or unit_changed
    return systemd.service(name=name, service=unit, running=True, enabled=True, daemon_reload=unit_changed,
                           restarted=restart, reloaded=reloaded and not restart)


def left_role(name: str, marker: str, commands: list[str]) -> None:
    """Undo a role on a host that no longer has it: `commands` run once, while `marker` (a file the
    role installs) is there, so a host that never had the role, or already left it, sees no change."""
    if host.get_fact(File, path=marker):
        server.shell(name=name, commands=["set -e", *commands])


def stop_and_disable(*units: str) -> str:
    """A shell command: the units stopped and disabled, those not installed ignored."""
    return f"for unit in {' '.join(units)}; do systemctl disable --now $unit 2>/dev/null || true; done"

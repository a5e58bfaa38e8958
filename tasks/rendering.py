"""Templates live in files/<task>/ beside the task that renders them; this renders them and
installs configs that must pass their daemon's check before they go live."""

import hashlib
from io import StringIO
from pathlib import Path

import jinja2
from pyinfra import host
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, server

FILES = Path(__file__).parent.parent / "files"
_environment = jinja2.Environment(loader=jinja2.FileSystemLoader(FILES), undefined=jinja2.StrictUndefined,
                                  keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **variables) -> str:
    return _environment.get_template(template).render(**variables)


def put_text(name: str, text: str, dest: str, mode: str, user: str = "root", group: str = "root"):
    return files.put(name=name, src=StringIO(text), dest=dest, user=user, group=group, mode=mode)


def install_checked(name: str, text: str, dest: str, check: str, mode: str = "0644") -> bool:
    """Put `text` at `dest` only if `check` (run with the new file in place) passes; otherwise
    restore the previous file and fail. Returns whether the live file will change."""
    if host.get_fact(Sha256File, path=dest) == hashlib.sha256(text.encode()).hexdigest():
        return False
    staged = f"{dest}.staged"
    put_text(f"Stage {name}", text, staged, mode)
    server.shell(name=f"Check {name} and install it", commands=[f"""set -e
if [ -e {dest} ]; then cp -p {dest} {dest}.previous; fi
mv -f {staged} {dest}
if ! {check}; then
    if [ -e {dest}.previous ]; then mv -f {dest}.previous {dest}; else rm -f {dest}; fi
    echo "{name}: the new configuration failed its check; the previous one is back" >&2
    exit 1
fi
rm -f {dest}.previous"""])
    return True

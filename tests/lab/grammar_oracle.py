"""llama.cpp's own verdict on GBNF grammars, from the engine the deploy built: the oracle of the
grammar check's differential test (tests/lab/test_5_grammar.py).

The engine's build directory holds llama-cpp-python's wheel (the bindings alone) and native.tar.gz
(bin/, lib/ with libllama.so). A virtualenv of its own, beside the unpacked libraries in a work
directory, runs a worker (this file as a script) that loads a model's vocabulary once, then forks a
child per grammar to call `llama_sampler_init_grammar`, as llama-cpp-python does for a request's
`grammar`: an abort, a segfault or a hang in one child is that grammar's verdict, not the run's end.
"""

import base64
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ACCEPTED, REFUSED, CRASHED = "accepted", "refused", "crashed"
CHILD_SECONDS = 5.0
# Address space of a child: a grammar that makes llama.cpp allocate without end (`{3,1}` loops
# forever) must fail there, not push the machine, which runs the lab too, out of memory.
CHILD_MEMORY_BYTES = 256 << 20
REFUSED_EXIT = 3


@dataclass(frozen=True)
class Verdict:
    outcome: str  # ACCEPTED, REFUSED or CRASHED
    detail: str  # what llama.cpp printed, or why the child ended

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED


def prepare(build_dir: Path, work_dir: Path) -> tuple[Path, Path]:
    """The oracle's Python and the directory of libllama.so, made once per build in work_dir."""
    wheel = next(build_dir.glob("llama_cpp_python-*.whl"))
    work_dir = work_dir / build_dir.name
    python, lib_dir, ready = work_dir / "venv" / "bin" / "python", work_dir / "lib", work_dir / ".ready"
    if ready.exists():
        return python, lib_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(build_dir / "native.tar.gz") as archive:
        archive.extractall(work_dir, members=[m for m in archive.getmembers() if m.name.startswith("lib")],
                           filter="tar")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(work_dir / "venv")], check=True)
    # The bindings only: the package's __init__ (numpy, jinja2, diskcache) is skipped by the worker.
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", str(wheel), "typing-extensions"], check=True)
    ready.touch()
    return python, lib_dir


def verdicts(build_dir: Path, model: Path, grammars: list[str], work_dir: Path | None = None,
             parallel: int | None = None, child_seconds: float = CHILD_SECONDS) -> list[Verdict]:
    """llama.cpp's verdict on each grammar, in order."""
    work_dir = work_dir or Path(tempfile.gettempdir()) / "nas-ai-grammar-oracle"
    python, lib_dir = prepare(build_dir, work_dir)
    results: dict[int, Verdict] = {}
    payload = []
    for index, grammar in enumerate(grammars):
        try:
            # As llama-cpp-python passes it: UTF-8, then a C string (cut at a NUL).
            payload.append([index, base64.b64encode(grammar.encode("utf-8")).decode()])
        except UnicodeEncodeError as error:
            results[index] = Verdict(REFUSED, f"llama-cpp-python raises before llama.cpp: {error}")
    worker = subprocess.run(
        [str(python), __file__, "--worker", str(model), str(parallel or os.cpu_count() or 1), str(child_seconds)],
        input=json.dumps(payload), capture_output=True, text=True, check=False,
        # ggml's abort would otherwise attach gdb to print a backtrace: slow, and loud.
        env={**os.environ, "LLAMA_CPP_LIB_PATH": str(lib_dir), "GGML_NO_BACKTRACE": "1"}, timeout=600)
    if worker.returncode != 0:
        raise RuntimeError(f"grammar oracle worker failed ({worker.returncode}):\n{worker.stderr[-4000:]}")
    for index, outcome, detail in json.loads(worker.stdout):
        results[index] = Verdict(outcome, detail)
    return [results[index] for index in range(len(grammars))]


# The worker: run by the oracle's own Python, with the standard library and the bindings only.

def _import_bindings():
    import importlib.util
    import types
    spec = importlib.util.find_spec("llama_cpp")
    package = types.ModuleType("llama_cpp")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["llama_cpp"] = package
    import llama_cpp.llama_cpp as bindings
    return bindings


def _child(bindings, vocab, grammar: bytes, output_fd: int) -> None:
    import resource
    os.dup2(output_fd, 1)  # stdout carries the worker's answer: nothing else may write there
    os.dup2(output_fd, 2)
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    sampler = bindings.llama_sampler_init_grammar(vocab, grammar, b"root")
    os._exit(0 if sampler else REFUSED_EXIT)


def _outcome(status: int | None, stderr: str, seconds: float) -> tuple[str, str]:
    # llama.cpp's own lines name the reason; parse() also prints the whole grammar after them.
    message = " | ".join(line[:200] for line in stderr.splitlines() if "grammar" in line or "GGML" in line)
    if status is None:
        return CRASHED, f"no answer within {seconds} s; {message}"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return ACCEPTED, message
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == REFUSED_EXIT:
        return REFUSED, message
    if os.WIFSIGNALED(status):
        return CRASHED, f"signal {os.WTERMSIG(status)}; {message}"
    return CRASHED, f"exit {os.WEXITSTATUS(status)}; {message}"


def _worker(model: str, parallel: int, seconds: float) -> None:
    bindings = _import_bindings()
    bindings.llama_backend_init()
    params = bindings.llama_model_default_params()
    params.vocab_only = True
    loaded = bindings.llama_model_load_from_file(model.encode(), params)
    if not loaded:
        raise SystemExit(f"cannot load the vocabulary of {model}")
    vocab = bindings.llama_model_get_vocab(loaded)
    pending = [(index, base64.b64decode(text)) for index, text in json.load(sys.stdin)]
    pending.reverse()
    running: dict[int, tuple[int, float, int]] = {}  # pid -> index, start, the fd of its output
    answers = []
    while pending or running:
        while pending and len(running) < parallel:
            index, grammar = pending.pop()
            output_fd, path = tempfile.mkstemp(prefix="grammar-oracle-")
            os.unlink(path)
            pid = os.fork()
            if pid == 0:
                _child(bindings, vocab, grammar, output_fd)
            running[pid] = (index, time.monotonic(), output_fd)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for late, (index, started, output_fd) in list(running.items()):
                if time.monotonic() - started > seconds:
                    os.kill(late, signal.SIGKILL)
                    os.waitpid(late, 0)
                    del running[late]
                    answers.append([index, *_outcome(None, _read(output_fd), seconds)])
            time.sleep(0.0005)
            continue
        index, _, output_fd = running.pop(pid)
        answers.append([index, *_outcome(status, _read(output_fd), seconds)])
    json.dump(answers, sys.stdout)


def _read(output_fd: int) -> str:
    os.lseek(output_fd, 0, os.SEEK_SET)
    with os.fdopen(output_fd, "rb") as output:
        return output.read().decode("utf-8", "replace")


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))

"""The engine builds: llama-cpp-python[server] at one pinned version and llama.cpp's native
`llama-server` (and `llama-bench`) from the llama.cpp source that very sdist vendors, compiled once
per CPU profile with the same CMake flags.

The first host of a profile compiles both; they must each run a real inference on the host before
they are kept. The controller then caches them, and every other host of the profile (and every
later deploy) installs them without compiling.
"""

import hashlib
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, python, server

from tasks import preflight
from tasks.cpu_profile import CpuProfile
from tasks.settings import CONTROLLER_CACHE_DIR, ENGINE_PACKAGE, ENGINE_VERSION

FILES = Path(__file__).parent.parent / "files" / "engine"
CACHE_DIR = CONTROLLER_CACHE_DIR / "engine"
RUNTIME_PACKAGES = ["python3-venv", "libgomp1"]
BUILD_PACKAGES = ["build-essential", "cmake", "pkg-config", "python3-dev", "python3-venv"]
# The native tools only, statically linked. No prebuilt web UI: it would be fetched from a model
# hub at build time; no OpenSSL: llama-server fetches nothing.
NATIVE_CMAKE = ("-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF "
                "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON "
                "-DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF")
NATIVE_TOOLS = ("llama-server", "llama-bench")
SDIST = f"{ENGINE_PACKAGE.replace('-', '_')}-{ENGINE_VERSION}.tar.gz"

# build id -> the host that compiles it in this run (the first host of its CPU profile).
_builders: dict[str, str] = {}


PYTHON_PACKAGES = '"${wheel}[server]" prometheus-client uvloop httptools'


def build_id(profile: CpuProfile) -> str:
    """What is compiled: changes only with the version or the CMake flags."""
    recipe = profile.cmake_args() + NATIVE_CMAKE
    return f"{ENGINE_VERSION}-{profile.name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def install_id(profile: CpuProfile) -> str:
    """What is installed from a build: also changes with the Python packages beside it."""
    recipe = PYTHON_PACKAGES + (FILES / "constraints.txt").read_text()
    return f"{build_id(profile)}-py{hashlib.sha256(recipe.encode()).hexdigest()[:6]}"


def cached_build(build: str) -> list[Path] | None:
    """The wheel and the native tools' archive of a build, if the controller has both."""
    wheels = sorted((CACHE_DIR / build).glob("*.whl"))
    native = CACHE_DIR / build / "native.tar.gz"
    return [wheels[0], native] if wheels and native.exists() else None


def builder_in_this_run(profile: CpuProfile) -> str | None:
    return _builders.get(build_id(profile))


def paths() -> dict[str, str]:
    plan = preflight.plan()
    engine = f"{plan.settings.system_install_dir}/engine"
    build, installed = build_id(plan.profile), install_id(plan.profile)
    return {
        "engine": engine,
        "app": f"{engine}/app",
        "constraints": f"{engine}/constraints.txt",
        "wheels": f"{engine}/wheels/{build}",
        "build": f"{engine}/builds/{installed}",
        "current": f"{engine}/current",
        "python": f"{engine}/current/venv/bin/python",
        "llama_server": f"{engine}/current/bin/llama-server",
    }


def _keep_build(wheels_dir: str, build: str, builder: bool) -> None:
    """Execute time, on the builder: keep its verified wheel and native tools on the controller."""
    if not builder:
        return
    sudo = bool(host.data.get("_sudo", False))
    ok, output = host.run_shell_command(f"ls {wheels_dir}/*.whl {wheels_dir}/native.tar.gz", _sudo=sudo)
    if not ok:
        raise OperationError(f"no wheel and native tools in {wheels_dir} on {host.name}")
    for remote in (line.strip() for line in output.stdout_lines):
        target = CACHE_DIR / build / Path(remote).name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        if not host.get_file(remote, str(partial), _sudo=sudo):
            raise OperationError(f"download of {remote} from {host.name} failed")
        partial.rename(target)


def _upload_build(wheels_dir: str, build: str, builder: bool) -> None:
    """Execute time, on the other hosts of the profile: upload what the builder kept."""
    if builder:
        return
    sudo = bool(host.data.get("_sudo", False))
    artifacts = cached_build(build)
    if artifacts is None:
        raise OperationError(f"no engine build {build} on the controller: its build host "
                             f"{_builders.get(build, '(none)')} failed; see its output above")
    host.run_shell_command(f"mkdir -p {wheels_dir}", _sudo=sudo)
    for artifact in artifacts:
        if not host.put_file(str(artifact), f"{wheels_dir}/{artifact.name}", _sudo=sudo):
            raise OperationError(f"upload of {artifact.name} to {host.name} failed")


def _install_verified(p: dict, model_path: str) -> None:
    """A fresh virtualenv with the wheel and the native tools beside it, kept only if a real
    inference succeeds with each."""
    build, venv = p["build"], f"{p['build']}/venv"
    script = f"""set -e
rm -rf {build}
mkdir -p {build}/bin
python3 -m venv {venv}
wheel=$(ls {p['wheels']}/*.whl)
{venv}/bin/pip install --quiet --disable-pip-version-check -c {p['constraints']} {PYTHON_PACKAGES}
tar -xzf {p['wheels']}/native.tar.gz -C {build}/bin
if ! PYTHONPATH={p['app']} {venv}/bin/python -m nas_ai_engine smoke {model_path} --llama-server {build}/bin/llama-server; then
    rm -rf {build}
    echo "engine build {Path(build).name} failed its smoke inference: not installed" >&2
    exit 1
fi
touch {build}/verified"""
    server.shell(name="Install the engine build and prove it with a real inference",
                 commands=[script])


def install() -> bool:
    plan = preflight.plan()
    p = paths()
    build = build_id(plan.profile)
    apt.packages(name="Install the engine's runtime packages", packages=RUNTIME_PACKAGES,
                 no_recommends=True, cache_time=24 * 3600, update=True)
    for directory in (p["engine"], p["app"], f"{p['engine']}/builds", f"{p['engine']}/wheels"):
        files.directory(name=f"Engine directory {directory}", path=directory,
                        user="root", group="root", mode="0755")
    files.put(name="Engine dependency pins", src=str(FILES / "constraints.txt"),
              dest=p["constraints"], user="root", group="root", mode="0644")
    changed = False
    files.directory(name="Engine app package", path=f"{p['app']}/nas_ai_engine",
                    user="root", group="root", mode="0755")
    for module in sorted((FILES / "nas_ai_engine").glob("*.py")):
        changed |= files.put(name=f"Engine app {module.name}", src=str(module),
                             dest=f"{p['app']}/nas_ai_engine/{module.name}", user="root",
                             group="root", mode="0644").will_change

    if not host.get_fact(File, path=f"{p['build']}/verified"):
        changed = True
        builder = cached_build(build) is None and \
            _builders.setdefault(build, host.name) == host.name
        if builder:
            apt.packages(name="Install the engine's build tools", packages=BUILD_PACKAGES,
                         no_recommends=True, cache_time=24 * 3600)
            cmake = shlex.quote(plan.profile.cmake_args())
            work = f"{p['engine']}/buildenv"
            server.shell(
                name=f"Compile {ENGINE_PACKAGE} {ENGINE_VERSION} and llama-server for CPU profile {plan.profile.name}",
                commands=[f"""set -e
rm -rf {p['wheels']} {work}
mkdir -p {p['wheels']} {work}/src
python3 -m venv {work}/venv
{work}/venv/bin/pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d {work} {ENGINE_PACKAGE}=={ENGINE_VERSION}
CMAKE_ARGS={cmake} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) {work}/venv/bin/pip wheel \
    --quiet --disable-pip-version-check --no-deps -w {p['wheels']} {work}/{SDIST}
tar -xzf {work}/{SDIST} -C {work}/src --strip-components=1
cmake -S {work}/src/vendor/llama.cpp -B {work}/native {NATIVE_CMAKE} {plan.profile.cmake_args()} > {work}/cmake.log
cmake --build {work}/native --parallel $(nproc) --target {' '.join(NATIVE_TOOLS)} > {work}/build.log
tar -czf {p['wheels']}/native.tar.gz -C {work}/native/bin {' '.join(NATIVE_TOOLS)}
rm -rf {work}"""])
            _install_verified(p, plan.model_path)
        # Both ops are in every installing host's sequence (each acts on its own hosts), so
        # pyinfra runs them in this order: the builder's install, keep, upload, the others' install.
        python.call(name="Keep the verified engine build on the controller",
                    function=_keep_build, wheels_dir=p["wheels"], build=build, builder=builder)
        python.call(name="Upload the engine build of this CPU profile",
                    function=_upload_build, wheels_dir=p["wheels"], build=build, builder=builder)
        if not builder:
            _install_verified(p, plan.model_path)

    selected = files.link(name="Select the engine build", path=p["current"],
                          target=f"builds/{Path(p['build']).name}", user="root", group="root")
    return changed or selected.will_change

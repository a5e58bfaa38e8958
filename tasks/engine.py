"""The engine: llama.cpp compiled once per CPU profile, from the source that one pinned
llama-cpp-python sdist vendors, as shared libraries with `llama-server` and `llama-bench` linked
against them; llama-cpp-python's Python package loads those same libraries instead of compiling
its own copy.

The first host of a profile compiles, installs the engine (a virtualenv with the pinned Python
packages, the binaries, the libraries) and proves it with a real inference of each server; the
controller then caches the whole installed engine as one archive. Every other host of the profile,
and every later deploy, unpacks that archive and proves it the same way: no compiler, no pip.
"""

import hashlib
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, python, server

from tasks import atomic
from tasks.cpu_profile import CpuProfile
from tasks.plan import Plan
from tasks.settings import CONTROLLER_CACHE_DIR, ENGINE_PACKAGE, ENGINE_VERSION, DeployError, Settings

FILES = Path(__file__).parent.parent / "files" / "engine"
CACHE_DIR = CONTROLLER_CACHE_DIR / "engine"
RUNTIME_PACKAGES = ["python3-venv", "libgomp1"]
BUILD_PACKAGES = ["build-essential", "cmake", "pkg-config", "python3-dev", "python3-venv"]
# Shared libraries, found by the binaries through their RUNPATH ($ORIGIN/../lib) wherever the
# engine is unpacked. No prebuilt web UI: it would be fetched from a model hub at build time; no
# OpenSSL: llama-server fetches nothing.
NATIVE_CMAKE = ("-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "
                "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                "-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF "
                "-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF")
NATIVE_TOOLS = ("llama-server", "llama-bench")
# llama-cpp-python's own CMake build off: its wheel is then the Python package alone.
PYTHON_ONLY_CMAKE = "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"
SDIST = f"{ENGINE_PACKAGE.replace('-', '_')}-{ENGINE_VERSION}.tar.gz"
PYTHON_PACKAGES = '"${wheel}[server]" prometheus-client uvloop httptools'

# install id -> the host that installs it first in this run (the first host of its CPU profile
# that may build), whose proven engine every other host then unpacks.
_makers: dict[str, str] = {}


def build_id(profile: CpuProfile) -> str:
    """What is compiled: changes only with the version or the CMake flags."""
    recipe = profile.cmake_args() + NATIVE_CMAKE + PYTHON_ONLY_CMAKE
    return f"{ENGINE_VERSION}-{profile.name}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def install_id(profile: CpuProfile) -> str:
    """What is installed from a build: also changes with the Python packages beside it."""
    recipe = PYTHON_PACKAGES + (FILES / "constraints.txt").read_text()
    return f"{build_id(profile)}-py{hashlib.sha256(recipe.encode()).hexdigest()[:6]}"


def cached_build(build: str) -> list[Path] | None:
    """The Python package's wheel and the compiled archive (bin/, lib/) of a build, if the
    controller has both: a change of Python pins then reinstalls without compiling."""
    wheels = sorted((CACHE_DIR / build).glob("*.whl"))
    native = CACHE_DIR / build / "native.tar.gz"
    return [wheels[0], native] if wheels and native.exists() else None


def cached_engine(installed: str) -> Path | None:
    """The installed engine of a profile (venv, bin, lib) as one archive, if the controller has it."""
    archive = CACHE_DIR / "installed" / f"{installed}.tar.gz"
    return archive if archive.exists() else None


def maker_in_this_run(profile: CpuProfile) -> str | None:
    return _makers.get(install_id(profile))


def can_install_without_compiling(profile: CpuProfile) -> bool:
    """The controller has the installed engine or its compiled build, or a host of this run
    makes it."""
    return cached_engine(install_id(profile)) is not None or cached_build(build_id(profile)) is not None \
        or maker_in_this_run(profile) is not None


def check(settings: Settings, profile: CpuProfile) -> None:
    """Preflight: answers fit the context; a host that may not compile needs an engine it can install
    without compiling."""
    if settings.engine_max_tokens and settings.engine_max_tokens > settings.engine_context_size:
        raise DeployError(
            f"data key `engine_max_tokens` is {settings.engine_max_tokens}, above engine_context_size "
            f"({settings.engine_context_size}): no answer can be longer than the context; lower it or "
            "raise engine_context_size")
    if not settings.engine_build_on_host and not can_install_without_compiling(profile):
        raise DeployError(
            f"no engine for CPU profile {profile.name} on this controller, installed or "
            "compiled, and engine_build_on_host is False: deploy first to a host of that profile, "
            "or set engine_build_on_host = True (compiling takes minutes)")


def paths(plan: Plan) -> dict[str, str]:
    engine = f"{plan.settings.system_install_dir}/engine"
    build, installed = build_id(plan.profile), install_id(plan.profile)
    return {
        "engine": engine,
        "app": f"{engine}/app",
        "constraints": f"{engine}/constraints.txt",
        "wheels": f"{engine}/wheels/{build}",
        "archive": f"{engine}/wheels/{installed}.tar.gz",
        "build": f"{engine}/builds/{installed}",
        "current": f"{engine}/current",
        "python": f"{engine}/current/venv/bin/python",
        "llama_server": f"{engine}/current/bin/llama-server",
    }


def _fetch(remote: str, target: Path, sudo: bool) -> None:
    with atomic.replacing(target) as partial:
        if not host.get_file(remote, str(partial), _sudo=sudo):
            raise OperationError(f"download of {remote} from {host.name} failed")


def _keep(p: dict, build: str, installed: str, maker: bool, compiled: bool) -> None:
    """Execute time, on the maker: keep its proven engine (and what it compiled) on the controller."""
    if not maker:
        return
    sudo = bool(host.data.get("_sudo", False))
    _fetch(p["archive"], CACHE_DIR / "installed" / f"{installed}.tar.gz", sudo)
    if compiled:
        ok, output = host.run_shell_command(f"ls {p['wheels']}/*.whl", _sudo=sudo)
        if not ok:
            raise OperationError(f"no wheel in {p['wheels']} on {host.name}")
        for remote in [output.stdout_lines[0].strip(), f"{p['wheels']}/native.tar.gz"]:
            _fetch(remote, CACHE_DIR / build / Path(remote).name, sudo)
    host.run_shell_command(f"rm -f {p['archive']}", _sudo=sudo)


def _upload(artifacts: list[Path], remote_dir: str) -> None:
    sudo = bool(host.data.get("_sudo", False))
    host.run_shell_command(f"mkdir -p {remote_dir}", _sudo=sudo)
    for artifact in artifacts:
        if not host.put_file(str(artifact), f"{remote_dir}/{artifact.name}", _sudo=sudo):
            raise OperationError(f"upload of {artifact.name} to {host.name} failed")


def _upload_build(p: dict, build: str) -> None:
    """Execute time, on a maker whose Python pins changed: the compiled build from the controller."""
    artifacts = cached_build(build)
    if artifacts is None:
        raise OperationError(f"the controller's engine build {build} went missing during the deploy")
    _upload(artifacts, p["wheels"])


def _upload_engine(p: dict, installed: str, maker: bool) -> None:
    """Execute time, on the other hosts of the profile: the engine the maker proved."""
    if maker:
        return
    archive = cached_engine(installed)
    if archive is None:
        raise OperationError(f"no installed engine {installed} on the controller: the host that makes "
                             f"it, {_makers.get(installed, '(none)')}, failed; see its output above")
    _upload([archive], str(Path(p["archive"]).parent))


def _prove(p: dict, model_path: str) -> str:
    """Shell lines: a real inference with llama-cpp-python and with llama-server, or no engine.
    The caller marks the engine verified once everything else it does has succeeded."""
    build = p["build"]
    return f"""if ! PYTHONPATH={p['app']} {build}/venv/bin/python -m nas_ai_engine smoke {model_path} --llama-server {build}/bin/llama-server; then
    rm -rf {build}
    echo "engine {Path(build).name} failed its smoke inference: not installed" >&2
    exit 1
fi"""


def _compile(p: dict, profile: CpuProfile) -> None:
    work = f"{p['engine']}/buildenv"
    tools = " ".join(NATIVE_TOOLS)
    # The logs are long; a failing step shows its tail in the deploy's output.
    server.shell(
        name=f"Compile llama.cpp {ENGINE_PACKAGE} {ENGINE_VERSION} vendors, once, for CPU profile {profile.name}",
        commands=[f"""set -e
fail() {{ tail -n 40 "$1" >&2; exit 1; }}
rm -rf {p['wheels']} {work}
mkdir -p {p['wheels']} {work}/src {work}/out/bin {work}/out/lib
python3 -m venv {work}/venv
{work}/venv/bin/pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d {work} {ENGINE_PACKAGE}=={ENGINE_VERSION}
CMAKE_ARGS={shlex.quote(PYTHON_ONLY_CMAKE)} {work}/venv/bin/pip wheel --quiet --disable-pip-version-check \
    --no-deps -w {p['wheels']} {work}/{SDIST}
tar -xzf {work}/{SDIST} -C {work}/src --strip-components=1
cmake -S {work}/src/vendor/llama.cpp -B {work}/native {' '.join(shlex.quote(arg) for arg in NATIVE_CMAKE.split())} \
    {profile.cmake_args()} > {work}/cmake.log 2>&1 || fail {work}/cmake.log
cmake --build {work}/native --parallel $(nproc) --target {tools} > {work}/build.log 2>&1 || fail {work}/build.log
cp -a {' '.join(f'{work}/native/bin/{tool}' for tool in NATIVE_TOOLS)} {work}/out/bin
cp -a {work}/native/bin/lib*.so* {work}/out/lib
tar -czf {p['wheels']}/native.tar.gz -C {work}/out bin lib
rm -rf {work}"""])


def _install_and_prove(p: dict, model_path: str) -> None:
    """The maker: a fresh virtualenv with the Python package pointed at the compiled libraries,
    proven, then packed whole for the other hosts."""
    build = p["build"]
    server.shell(name="Install the engine and prove it with a real inference", commands=[f"""set -e
rm -rf {build}
mkdir -p {build}
tar -xzf {p['wheels']}/native.tar.gz -C {build}
python3 -m venv {build}/venv
wheel=$(ls {p['wheels']}/*.whl)
{build}/venv/bin/pip install --quiet --disable-pip-version-check -c {p['constraints']} {PYTHON_PACKAGES}
package=$(echo {build}/venv/lib/python3*/site-packages/llama_cpp)
ln -sfn "$(realpath --relative-to="$package" {build}/lib)" "$package/lib"
{_prove(p, model_path)}
tar -czf {p['archive']} -C {build} bin lib venv
touch {build}/verified"""])


def _unpack_and_prove(p: dict, model_path: str) -> None:
    build = p["build"]
    server.shell(name="Unpack the installed engine and prove it with a real inference", commands=[f"""set -e
rm -rf {build}
mkdir -p {build}
tar -xzf {p['archive']} -C {build}
rm -f {p['archive']}
{_prove(p, model_path)}
touch {build}/verified"""])


def install(plan: Plan) -> bool:
    p = paths(plan)
    build, installed = build_id(plan.profile), install_id(plan.profile)
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
        # A host may make the engine if it may compile, or if nothing is left to compile (only the
        # Python pins changed): installing the packages takes a minute even under emulation.
        build_cached = cached_build(build) is not None
        may_make = plan.settings.engine_build_on_host or build_cached
        maker = cached_engine(installed) is None and may_make and \
            _makers.setdefault(installed, host.name) == host.name
        compiled = maker and not build_cached
        if compiled:
            apt.packages(name="Install the engine's build tools", packages=BUILD_PACKAGES,
                         no_recommends=True, cache_time=24 * 3600)
            _compile(p, plan.profile)
        elif maker:
            python.call(name="Upload the compiled engine build of this CPU profile",
                        function=_upload_build, p=p, build=build)
        if maker:
            _install_and_prove(p, plan.model_path)
        # Both calls are in every installing host's sequence (each acts on its own hosts), so
        # pyinfra runs them in this order: the maker's install, keep, upload, the others' unpack.
        python.call(name="Keep the proven engine on the controller", function=_keep, p=p,
                    build=build, installed=installed, maker=maker, compiled=compiled)
        python.call(name="Upload the proven engine of this CPU profile", function=_upload_engine,
                    p=p, installed=installed, maker=maker)
        if not maker:
            _unpack_and_prove(p, plan.model_path)

    selected = files.link(name="Select the engine build", path=p["current"],
                          target=f"builds/{Path(p['build']).name}", user="root", group="root")
    return changed or selected.will_change

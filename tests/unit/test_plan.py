"""Tasks take the plan as a value: one made by hand drives them without an inventory or a host."""

import ast
from pathlib import Path

import tasks
from tasks import budget, engine, model_rollout, model_source, service
from tasks.cpu_profile import CpuProfile
from tasks.plan import Plan
from tasks.settings import resolve


def _plan(**data) -> Plan:
    settings = resolve("nas1", data)
    model = model_source.ModelFile(name="tiny", path=Path("/dev/null"), sha256="a" * 64, size=1 << 20, metadata={})
    return Plan(host="nas1", inference=True, gateway=False, monitoring=False, settings=settings, facts={},
                profile=CpuProfile("debian12", "x86_64", "x86-64-v3"),
                limits=budget.Limits(memory_max=6 << 30, memory_high=5 << 30, cpu_quota_percent=350, threads=3),
                budget=budget.Budget(1 << 20, 0, 0, 5 << 30), model=model,
                model_path="/data/models/tiny/" + "a" * 64 + ".gguf", bind_address="10.0.0.5", parallel=2)


def test_the_engine_config_follows_the_plan(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.secrets.BACKEND_KEY_FILE", tmp_path / "backend-key")
    config = service.engine_config(_plan(engine_server="llama-cpp-python", model_store_dir="/srv/models",
                                         system_install_dir="/opt/ai"))
    assert (config["server"], config["host"], config["workers"]) == ("llama-cpp-python", "10.0.0.5", 2)
    assert config["model_config"] == "/etc/nas-ai/model.json" and "path" not in config["model"]
    assert config["model"]["n_threads"] == 3
    assert config["native"]["binary"] == "/opt/ai/engine/current/bin/llama-server"
    assert config["api_key"] == (tmp_path / "backend-key").read_text().strip()


def test_llama_server_runs_one_front_with_the_plans_slots(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.secrets.BACKEND_KEY_FILE", tmp_path / "backend-key")
    config = service.engine_config(_plan())
    assert config["workers"] == 1 and "parallel" not in config["native"]  # the model's: model.json
    assert model_rollout.model_config(_plan())["parallel"] == 2


def test_engine_paths_name_the_profiles_build():
    paths = engine.paths(_plan())
    assert paths["build"].startswith("/opt/nas-ai/engine/builds/0.3.36-debian12-x86_64-x86-64-v3-")


def _task_imports(path: Path) -> set[str]:
    """The modules of tasks/ that a module of tasks/ imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "tasks":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks."):
            names.add(node.module.split(".")[1])
    return names


def test_the_task_modules_import_each_other_without_a_cycle():
    graph = {path.stem: _task_imports(path) for path in Path(tasks.__file__).parent.glob("*.py")}
    done, visiting = set(), []

    def visit(module):
        assert module not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(module):] + [module])
        if module in done:
            return
        visiting.append(module)
        for imported in graph.get(module, ()):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
    assert "preflight" not in set().union(*(graph[m] for m in graph if m != "preflight"))

"""Both engines behind the same stack: one data key switches the lab to llama-cpp-python (in one
process, then as two worker processes) and back to llama-server; each serves chat through the
gateway and reports itself in /health, and no process of the previous engine is left."""

import json

import openai
import pytest

from tests.lab.harness import deployed, http_from, lab_host

pytestmark = pytest.mark.lab
MODEL = "smollm2-135m-instruct"


def _engines(deployment) -> dict[str, str]:
    """{host: the `server` its engine's /health reports}, asked on each host at its bind address."""
    servers = {}
    for name, _ in deployment["groups"]["inference"]:
        host = lab_host(name)
        config = json.loads(host.check_output("cat /etc/nas-ai/engine.json"))
        status, body = http_from(host, f"http://{config['host']}:{config['port']}/health")
        assert status == 200, body
        servers[name] = json.loads(body)["server"]
    return servers


def _chat(gateway_url, api_key) -> None:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=120)
    for _ in range(2):  # reach both engines
        reply = client.chat.completions.create(model=MODEL, max_tokens=8,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content.strip()


def _engine_processes(deployment) -> list[list[str]]:
    """Per inference host, the commands of the engine's processes (nas-ai's)."""
    return [lab_host(name).check_output("ps -u nas-ai -o args=").splitlines()
            for name, _ in deployment["groups"]["inference"]]


def test_one_data_key_switches_the_engine_and_back(deployment, gateway_url, api_key):
    assert set(_engines(deployment).values()) == {"llama-server"}  # the default
    try:
        deployed("inventory/lab.py", "--data", "engine_server=llama-cpp-python")
        assert set(_engines(deployment).values()) == {"llama-cpp-python"}
        for processes in _engine_processes(deployment):
            assert len(processes) == 1 and "nas_ai_engine serve" in processes[0], processes
        _chat(gateway_url, api_key)

        # A worker per thread: the lab gives each host one thread, so this step asks for two.
        deployed("inventory/lab.py", "--data", "engine_server=llama-cpp-python", "--data", "engine_workers=2",
                 "--data", "engine_threads=2")
        for processes in _engine_processes(deployment):
            assert sum("nas_ai_engine worker" in p for p in processes) == 2, processes
        _chat(gateway_url, api_key)
    finally:
        deployed("inventory/lab.py")
    assert set(_engines(deployment).values()) == {"llama-server"}
    for processes in _engine_processes(deployment):
        assert sum("llama-server" in p for p in processes) == 1 and len(processes) == 2, processes
    _chat(gateway_url, api_key)

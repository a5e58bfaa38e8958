"""The deploy onto two lab hosts: it converges, a second run changes nothing, and bad data is
refused before any host is touched."""

import hashlib
import json

import pytest

from tasks.settings import BUNDLED_MODEL
from tests.lab.harness import changed_operations, deploy, deployed, http_from, lab_host

pytestmark = pytest.mark.lab


def test_first_deploy_converges(deployment):
    """Each inference host serves, at its bind address, the very model the deploy pinned."""
    first = deployment["first"]
    print(f"first deploy: {changed_operations(first.stdout + first.stderr)} operations changed in {deployment['seconds'][0]:.0f} s; "
          f"second: {deployment['seconds'][1]:.1f} s")
    for name, _ in deployment["groups"]["inference"]:
        host = lab_host(name)
        config = json.loads(host.check_output("cat /etc/nas-ai/engine.json"))
        status, body = http_from(host, f"http://{config['host']}:{config['port']}/health")
        assert status == 200, (name, body)
        health = json.loads(body)
        assert (health["status"], health["sha256"]) == ("ok", BUNDLED_MODEL["sha256"]), (name, health)
        model = json.loads(host.check_output("cat /etc/nas-ai/model.json"))
        assert model["path"].endswith(f"/{BUNDLED_MODEL['sha256']}.gguf"), name
        current = f"{model['path'].rsplit('/', 1)[0]}/current"
        assert host.file(current).linked_to == model["path"], name


def test_second_deploy_reports_no_changes(deployment):
    output = deployment["second"].stdout + deployment["second"].stderr
    assert changed_operations(output) == 0, output[-4000:]


@pytest.mark.parametrize("data, message", [
    (["--data", "engine_thread=2"], "unknown data key `engine_thread`; did you mean `engine_threads`?"),
    (["--data", "engine_port=eighty"], "data key `engine_port` must be int, got str 'eighty'"),
    (["--data", "engine_server=vllm"], "data key `engine_server` is 'vllm'; it must be one of 'llama-server', 'llama-cpp-python'"),
    (["--data", "model_source=/etc/hostname"], "model_sha256 is required for model_source `/etc/hostname`"),
    (["--data", "service_memory_max=536870912"], "the model does not fit: model 94 MiB + KV cache 45 MiB"),
    (["--data", "engine_cpu_profile_cap=x86-64-v2"], "this x86_64 CPU has no AVX2"),
    (["--data", "model_source=/etc/hostname",
      "--data", "model_sha256=" + hashlib.sha256(b"x").hexdigest()], "sha256 is "),
    (["--data", "monitoring_grafana=/nowhere/grafana.deb"], "give 'apt', None, or the path of a grafana .deb"),
])
def test_bad_data_is_refused_before_any_change(deployment, data, message):
    result = deploy("inventory/lab.py", *data)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-3000:]
    assert "--> Starting operation" not in output  # refused in preflight: no host was touched


def test_a_gateway_change_reloads_nginx_and_leaves_the_engines_alone(deployment):
    gateway = lab_host(deployment["groups"]["gateway"][0][0])
    engines = [lab_host(name) for name, _ in deployment["groups"]["inference"]]
    main_pids = [h.check_output("systemctl show -p MainPID --value nas-ai-engine") for h in engines]
    nginx_pid = gateway.check_output("systemctl show -p MainPID --value nginx")
    rate = deployment["groups"]["gateway"][0][1]["gateway_rate_per_minute"]
    try:
        deployed("inventory/lab.py", "--data", f"gateway_rate_per_minute={rate + 1}")
        assert f"rate={rate + 1}r/m" in gateway.check_output("cat /etc/nginx/conf.d/nas-ai.conf")
    finally:
        deployed("inventory/lab.py")
    assert [h.check_output("systemctl show -p MainPID --value nas-ai-engine") for h in engines] == main_pids
    assert gateway.check_output("systemctl show -p MainPID --value nginx") == nginx_pid  # reloaded, not restarted

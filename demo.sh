#!/usr/bin/env bash
# The whole stack on this machine: two lab hosts (containers), deployed with the bundled model.
# Prints the endpoint, an API key and a sample request. `sudo .venv/bin/python -m lab down` ends it.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
.venv/bin/python -m lab up --nodes 2
.venv/bin/pyinfra -y inventory/lab.py deploy.py
endpoint=$(.venv/bin/python -c "
import runpy; print('http://' + runpy.run_path('inventory/lab.py')['gateway'][0][1]['ssh_hostname'] + '/v1')")
key=$(.venv/bin/python -c "from tasks import secrets; print(next(iter(secrets.api_keys(None).values())))")
ssh_config=$(.venv/bin/python -c "from lab import config; print(config.SSH_CONFIG)")
# The monitoring host defaults to the first inference host, the gateway of inventory/lab.py.
monitor=$(.venv/bin/python -c "import runpy; print(runpy.run_path('inventory/lab.py')['gateway'][0][0])")
cat <<TXT

The NAS AI assistant is up.
  endpoint: $endpoint
  API key:  $key
  model:    smollm2-135m-instruct
  Prometheus and Alertmanager (loopback of the monitoring host, no authentication): tunnel to them
    ssh -F $ssh_config -L 9090:127.0.0.1:9090 -L 9093:127.0.0.1:9093 $monitor
    then http://127.0.0.1:9090 and http://127.0.0.1:9093

Try it:
  curl $endpoint/chat/completions -H "Authorization: Bearer $key" -H "Content-Type: application/json" \\
    -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hello!"}]}'
TXT

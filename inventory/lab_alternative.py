"""The lab's alternative scenario (`python -m lab up --scenario alternative`): two fresh containers
deployed with choices other than the defaults, so the tests prove them from scratch instead of
toggling data on the default deploy. The second host is the gateway and the monitoring host;
the first runs llama-cpp-python with two workers, the second llama-server; the model store, the
ports and the API keys (three clients, two with limits of their own) are not the defaults; TLS
is on."""

from inventory.lab_data import LAB_DATA
from inventory.lab_hosts import lab_api_keys, lab_hosts

ALTERNATIVE_DATA = {
    **LAB_DATA,
    "model_store_dir": "/srv/nas-ai/models",
    "system_config_dir": "/etc/nas-ai-alt",
    "engine_port": 8091,
    "gateway_port": 8088,
    "gateway_tls": "self-signed",
    "gateway_tls_port": 8443,
    "gateway_api_keys": lab_api_keys({
        "alice": {},                                         # the gateway_ limits of LAB_DATA
        "bob": {"rate_per_minute": 2, "rate_burst": 0},      # one request per 30 s
        "carol": {"concurrent": 1},                          # one request at a time
    }),
}
PER_HOST = [
    # A worker per thread: two on this host.
    {"engine_server": "llama-cpp-python", "engine_workers": 2, "engine_threads": 2},
    {"engine_server": "llama-server"},
]

inference = [(name, {**data, **extra})
             for (name, data), extra in zip(lab_hosts("container", scenario="alternative", **ALTERNATIVE_DATA),
                                            PER_HOST)]
gateway = inference[1:]
monitoring = inference[1:]

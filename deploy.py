"""The NAS AI assistant, deployed in the order it runs on each host:
`pyinfra inventory/<yours>.py deploy.py`."""

from tasks import (engine, firewall, gateway, grafana, model_store, monitoring, preflight, service, system,
                   topology)

preflight.check()                  # facts and data of every host, before any change
system.configure()                 # sysctl, system user, directories
if topology.is_inference():
    model_changed = model_store.install()   # <store>/<name>/<sha256>.gguf and `current`
    engine_changed = engine.install()       # per-CPU-profile build, proven by an inference
firewall.configure()               # engine and exporter ports open to their callers alone
if topology.is_inference():
    service.configure(engine_changed, model_changed)  # slice limits, hardened unit
if topology.is_gateway():
    gateway.configure()            # nginx: keys, limits, streaming, least_conn upstream
monitoring.exporters()             # node_exporter everywhere, nginx exporter and mtail on gateways
if topology.is_monitoring():
    monitoring.server()            # Prometheus and Alertmanager, targets from the inventory
    grafana.install()              # Grafana with the datasource and dashboard provisioned

"""The NAS AI assistant, deployed in the order it runs on each host:
`pyinfra inventory/<yours>.py deploy.py`."""

from tasks import engine, firewall, gateway, grafana, model_rollout, model_store, monitoring, preflight, service, system

plan = preflight.check()           # facts, data and each task's checks, before any change
system.configure(plan)             # sysctl, system user, directories
if plan.inference:
    model_store.install(plan)                   # <store>/<name>/<sha256>.gguf, verified
    engine_changed = engine.install(plan)       # per-CPU-profile build, proven by an inference
else:
    service.remove(plan)           # a host that left a role loses its services, configs, secrets
firewall_restarted = firewall.configure(plan)  # every port of the stack open to its callers alone
if plan.inference:
    # The engine is bound to its firewall: a restart of the firewall's unit stops it, so it restarts too.
    # Slice limits, hardened unit; a new model goes live by reload, probed, one host at a time.
    service.configure(plan, engine_changed or firewall_restarted)
if plan.gateway:
    gateway.configure(plan)        # nginx: keys, limits, streaming, least_conn upstream
else:
    gateway.remove(plan)
monitoring.exporters(plan)         # node_exporter everywhere, nginx exporter and mtail on gateways
if plan.monitoring:
    monitoring.server(plan)        # Prometheus and Alertmanager, targets from the inventory
    grafana.install(plan)          # Grafana with the datasource and dashboard provisioned
else:
    monitoring.remove_server(plan)
    grafana.remove(plan)
if plan.inference:
    model_rollout.verdict(plan)    # a host a failed rollout left untouched fails, once all else is done

"""The Grafana dashboard of the stack, built and typed with Grafana's grafana-foundation-sdk.

One row per node (repeated over the `node` variable): the gateway's answers by status, engine
requests and errors, time to first token and tokens/s, the queue, memory against the article's
80 %, CPU, disk I/O wait, model swaps, engine restarts.
"""

import json

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as models

UID = "nas-ai"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="nas-ai-prometheus")
NODE = 'node="$node"'

# (title, unit, role, [(legend, PromQL)]): a panel shows data on the nodes of its role (gateway,
# engine, or every node); the lab test checks each query so against a live Prometheus.
PANELS = [
    ("Gateway answers by status", "reqps", "gateway", [
        ("{{status}}", f"sum by (status) (rate(nas_ai_gateway_responses_total{{{NODE}}}[$__rate_interval]))")]),
    ("Engine requests by status", "reqps", "engine", [
        ("{{status}}", f"sum by (status) (rate(nas_ai_engine_requests_total{{{NODE}}}[$__rate_interval]))")]),
    ("Error ratio (5xx)", "percentunit", "engine", [
        ("5xx", f'(sum(rate(nas_ai_engine_requests_total{{{NODE}, status=~"5.."}}[$__rate_interval])) or vector(0))'
                f" / sum(rate(nas_ai_engine_requests_total{{{NODE}}}[$__rate_interval]))")]),
    ("Time to first token", "s", "engine", [
        (f"p{q}", f"histogram_quantile(0.{q}, sum by (le) "
                  f"(rate(nas_ai_engine_time_to_first_token_seconds_bucket{{{NODE}}}[$__rate_interval])))")
        for q in ("50", "95", "99")]),
    ("Prompt tokens per second: from a slot's cache, and read", "short", "engine", [
        ("cached {{cached}}", f"sum by (cached) (rate(nas_ai_engine_prompt_tokens_total{{{NODE}}}[$__rate_interval]))")]),
    ("Tokens generated per second", "short", "engine", [
        ("tokens/s", f"rate(nas_ai_engine_generated_tokens_total{{{NODE}}}[$__rate_interval])")]),
    ("Queue", "short", "engine", [
        ("in flight", f"nas_ai_engine_requests_in_flight{{{NODE}}}"),
        ("waiting", f"nas_ai_engine_requests_waiting{{{NODE}}}")]),
    ("Queue wait p90", "s", "engine", [
        ("p90", f"histogram_quantile(0.90, sum by (le) (rate(nas_ai_engine_queue_wait_seconds_bucket{{{NODE}}}[$__rate_interval])))")]),
    ("Memory used (alert at 80 %)", "percentunit", "node", [
        ("used", f"1 - node_memory_MemAvailable_bytes{{{NODE}}} / node_memory_MemTotal_bytes{{{NODE}}}")]),
    ("CPU busy", "percentunit", "node", [
        ("busy", f'1 - avg(rate(node_cpu_seconds_total{{{NODE}, mode="idle"}}[$__rate_interval]))')]),
    ("Disk I/O wait per operation (alert at 10 ms)", "s", "node", [
        ("{{device}}", f"(rate(node_disk_read_time_seconds_total{{{NODE}}}[$__rate_interval])"
                       f" + rate(node_disk_write_time_seconds_total{{{NODE}}}[$__rate_interval]))"
                       f" / (rate(node_disk_reads_completed_total{{{NODE}}}[$__rate_interval])"
                       f" + rate(node_disk_writes_completed_total{{{NODE}}}[$__rate_interval]) > 0)")]),
    ("Model swaps by result", "short", "engine", [
        ("{{result}}", f"sum by (result) (increase(nas_ai_engine_model_swaps_total{{{NODE}}}[$__rate_interval]))")]),
    ("Engine restarts", "short", "engine", [
        ("restarts", f'node_systemd_service_restart_total{{{NODE}, name="nas-ai-engine.service"}}')]),
]


def build() -> models.Dashboard:
    node = (dashboard.QueryVariable("node").label("Node").datasource(DATASOURCE)
            .query("label_values(up, node)").multi(True).include_all(True)
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED))
    row = dashboard.Row("Node $node").repeat("node")
    for title, unit, _role, queries in PANELS:
        panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(7).span(8)
        for ref, (legend, expr) in zip("ABCDEFGH", queries):
            panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
        row = row.with_panel(panel)
    return (dashboard.Dashboard("NAS AI assistant").uid(UID).tags(["nas-ai"]).refresh("30s")
            .time("now-6h", "now").with_variable(node).with_row(row).build())


def to_json() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def queries(roles: set[str]) -> list[str]:
    """The PromQL of the panels of these roles, as written (with $node and $__rate_interval)."""
    return [expr for _title, _unit, role, targets in PANELS if role in roles for _legend, expr in targets]


if __name__ == "__main__":
    print(to_json(), end="")

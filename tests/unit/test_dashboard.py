"""The Grafana dashboard: it decodes with Grafana's own typed models (grafana-foundation-sdk,
generated from Grafana's dashboard schema) back to the same JSON, and its panels are complete."""

import json

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from tasks import dashboard


def test_dashboard_round_trips_through_grafanas_schema_models():
    data = json.loads(dashboard.to_json())
    decoded = Dashboard.from_json(data)
    assert json.loads(json.dumps(decoded, cls=JSONEncoder, sort_keys=True)) == data
    assert data["uid"] == "nas-ai" and data["templating"]["list"][0]["name"] == "node"


def test_one_repeated_row_per_node_with_every_panel_queried():
    data = json.loads(dashboard.to_json())
    (row,) = data["panels"]
    assert row["type"] == "row" and row["repeat"] == "node"
    titles = [panel["title"] for panel in row["panels"]]
    for needed in ("Gateway answers by status", "Engine requests by status", "Error ratio (5xx)", "Time to first token", "Tokens generated per second",
                   "Queue", "Memory used (alert at 80 %)", "CPU busy", "Disk I/O wait per operation (alert at 10 ms)",
                   "Engine restarts"):
        assert needed in titles
    for panel in row["panels"]:
        assert panel["datasource"]["uid"] == dashboard.DATASOURCE.uid
        assert panel["targets"] and all('node="$node"' in t["expr"] for t in panel["targets"])
        assert panel["gridPos"]["w"] == 8 and panel["gridPos"]["h"] == 7

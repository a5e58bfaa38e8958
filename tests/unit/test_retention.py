"""Prometheus's size cap against the disk it has (tasks/monitoring.py): the cap must be reached
before the disk is full."""

import pytest

from tasks import monitoring
from tasks.settings import DeployError, resolve


@pytest.mark.parametrize(("size", "expected"), [
    ("2GB", 2 << 30), ("512MiB", 512 << 20), ("1.5GB", 3 << 29), ("100MB", 100 << 20), ("1024B", 1024),
    ("3KiB", 3072), ("1TB", 1 << 40), ("0", None),
])
def test_prometheus_sizes_are_powers_of_1024_whatever_the_spelling(size, expected):
    assert monitoring.retention_bytes(size) == expected


def _settings(size: str):
    return resolve("nas1", {"monitoring_retention_size": size})


def test_a_cap_within_80_percent_of_the_room_passes():
    monitoring.check(_settings("800MiB"), 1000 << 20)  # exactly 80 %
    monitoring.check(_settings("0"), 1 << 20)  # no size cap: the time cap alone, the operator's choice


def test_a_cap_over_80_percent_of_the_room_is_refused_with_the_largest_that_fits():
    with pytest.raises(DeployError) as refused:
        monitoring.check(_settings("2GB"), 250 << 20)
    message = str(refused.value)
    assert "monitoring_retention_size 2GB" in message
    assert "250 MiB are free for it at /var/lib/prometheus/metrics2" in message
    assert "at most 200MiB" in message
    assert monitoring.retention_bytes("200MiB") <= (250 << 20) * 0.8

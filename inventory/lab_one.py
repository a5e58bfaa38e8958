"""The lab's first container host alone (inference, gateway, monitoring), whatever else is up:
the serving benchmark needs a gateway whose only engine is the host it measures."""

from inventory.lab_data import LAB_DATA
from inventory.lab_hosts import lab_hosts

inference = lab_hosts("container", **LAB_DATA)[:1]
gateway = inference

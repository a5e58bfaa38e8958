"""The lab's container hosts (`python -m lab up`): every host serves, the first is the gateway."""

from inventory.lab_data import LAB_DATA
from inventory.lab_hosts import lab_hosts

inference = lab_hosts("container", **LAB_DATA)
gateway = inference[:1]

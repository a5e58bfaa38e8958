"""The alternative scenario (inventory/lab_alternative.py) with its gateway and monitoring roles
moved to its first host: the role-move test deploys this, then the alternative inventory again."""

from inventory.lab_alternative import inference

gateway = inference[:1]
monitoring = inference[:1]

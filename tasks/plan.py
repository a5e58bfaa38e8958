"""The plan of one host: what the deploy will make of it, computed by preflight before any change
and passed to every task (a task can be tried with a plan made by hand)."""

from dataclasses import dataclass

from tasks.budget import Budget, Limits
from tasks.cpu_profile import CpuProfile
from tasks.model_source import ModelFile
from tasks.settings import Settings


@dataclass(frozen=True)
class Plan:
    host: str
    inference: bool        # the roles of this host, from the inventory's groups
    gateway: bool
    monitoring: bool
    settings: Settings
    facts: dict
    profile: CpuProfile
    limits: Limits
    budget: Budget
    model: ModelFile
    model_path: str        # on the host
    bind_address: str      # where the engine listens
    parallel: int          # requests the engine serves at once (llama-server's slots, or workers)
    served: dict | None = None  # what the host's engine serves now (facts.ServedModel), None if unknown

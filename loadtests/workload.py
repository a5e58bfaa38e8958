"""The workload kept in workload.toml: kinds of request with weights, prompts and answer lengths."""

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

WORKLOAD_FILE = Path(__file__).with_name("workload.toml")


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    max_tokens: int
    slo: bool
    conversations: list[list[dict]]  # each a list of chat messages ending with the user's turn


def load(path: Path = WORKLOAD_FILE) -> list[Kind]:
    data = tomllib.loads(path.read_text())
    kinds = []
    for name, spec in data["kinds"].items():
        if "prompts" in spec:
            conversations = [[{"role": "user", "content": p}] for p in spec["prompts"]]
        elif "document" in spec:
            conversations = [[{"role": "user",
                               "content": f"{spec['instruction']}\n\n{spec['document'].strip()}"}]]
        else:
            conversations = [c["turns"] for c in spec["conversations"]]
        if not conversations or any(c[-1]["role"] != "user" for c in conversations):
            raise ValueError(f"workload kind {name}: needs prompts, a document or conversations "
                             "ending with a user turn")
        kinds.append(Kind(name, int(spec["weight"]), int(spec["max_tokens"]),
                          bool(spec.get("slo", False)), conversations))
    return kinds


def pick(kinds: list[Kind], rng: random.Random) -> tuple[Kind, list[dict]]:
    kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
    return kind, rng.choice(kind.conversations)

"""The workload kept in workload.toml: kinds of request with weights, prompts and answer lengths."""

import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

WORKLOAD_FILE = Path(__file__).with_name("workload.toml")


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    max_tokens: int
    slo: bool
    # Single-request kinds: each a list of chat messages ending with the user's turn. Multi-turn
    # kinds: each a conversation's script (an optional system message, then the user's questions),
    # whose requests a Conversation makes turn by turn.
    conversations: list[list[dict]]
    multi_turn: bool = False

    def mean_prompt_chars(self, answer_chars: float) -> float:
        """Characters of the messages one request of this kind sends, on average; a multi-turn
        request carries the earlier turns' answers too (`answer_chars` each)."""
        sizes = []
        for script in self.conversations:
            if not self.multi_turn:
                sizes.append(sum(len(m["content"]) for m in script))
                continue
            system = sum(len(m["content"]) for m in script if m["role"] == "system")
            questions = [len(m["content"]) for m in script if m["role"] == "user"]
            sizes += [system + sum(questions[:turn + 1]) + turn * answer_chars for turn in range(len(questions))]
        return sum(sizes) / len(sizes)


@dataclass
class Conversation:
    """One user's chat of a multi-turn kind, as a chat app sends it: each turn carries the whole
    history (the engine's own answers included) and the next question. A turn that failed is
    asked again; after the last turn the conversation is done."""
    script: list[dict]
    history: list[dict] = field(default_factory=list)
    answered_turns: int = 0

    def __post_init__(self):
        self.history = [m for m in self.script if m["role"] == "system"]
        self._questions = [m for m in self.script if m["role"] == "user"]

    @property
    def turn(self) -> int:
        """The number of the turn `messages()` asks, from 1."""
        return self.answered_turns + 1

    @property
    def done(self) -> bool:
        return self.answered_turns >= len(self._questions)

    def messages(self) -> list[dict]:
        return [*self.history, self._questions[self.answered_turns]]

    def answered(self, text: str) -> None:
        self.history += [self._questions[self.answered_turns], {"role": "assistant", "content": text}]
        self.answered_turns += 1


def load(path: Path = WORKLOAD_FILE) -> list[Kind]:
    data = tomllib.loads(path.read_text())
    kinds = []
    for name, spec in data["kinds"].items():
        multi_turn = False
        if "prompts" in spec:
            conversations = [[{"role": "user", "content": p}] for p in spec["prompts"]]
        elif "document" in spec:
            conversations = [[{"role": "user",
                               "content": f"{spec['instruction']}\n\n{spec['document'].strip()}"}]]
        else:
            multi_turn = True
            system = [{"role": "system", "content": spec["system"]}] if spec.get("system") else []
            conversations = [system + [{"role": "user", "content": turn} for turn in c["turns"]]
                             for c in spec.get("conversations", [])]
        if not conversations or any(c[-1]["role"] != "user" for c in conversations):
            raise ValueError(f"workload kind {name}: needs prompts, a document or conversations "
                             "of user turns")
        kinds.append(Kind(name, int(spec["weight"]), int(spec["max_tokens"]),
                          bool(spec.get("slo", False)), conversations, multi_turn))
    return kinds


def pick(kinds: list[Kind], rng: random.Random) -> tuple[Kind, list[dict]]:
    """A kind by weight and one of its scripts (a multi-turn kind's: a Conversation's)."""
    kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
    return kind, rng.choice(kind.conversations)

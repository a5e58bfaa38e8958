"""Which llama-server slot a generation request takes (its `id_slot`), chosen by the front.

llama-server fills each step's batch from its slots in slot order: a prompt in a lower slot is
read before any prompt in a higher one, up to the batch size. A 1,000-token document read in
slot 0 makes a short question in slot 5 wait for all of it (lab: first token 2.70 s), in slot 0
behind a document in slot 5 it waits one step (0.56 s). So the front places:

1. a conversation in the slot that holds its history, so only the new turn is read: the slot its
   session (the gateway's X-Nas-Ai-Session) last used, or the slot whose last request's messages
   begin this one's, the longest such (a chat app sends the whole history each turn; without a
   session, least_conn may have sent the turns between to another engine);
2. otherwise a short prompt in the lowest free slot and a long one (more than one batch) in the
   highest, choosing among slots that hold no conversation first, so a question does not evict a
   chat's history while another slot holds nothing worth keeping. A conversation that has not come
   back for two placements per slot counts as none (with a session on every request, as Open
   WebUI's user header gives, every slot would soon hold one and the order would be lost); what
   it held is in llama-server's prompt cache when that is on.
"""

import hashlib
import json
from dataclasses import dataclass

CHARS_PER_TOKEN = 4  # English text, roughly: bytes of a body per prompt token


@dataclass(frozen=True)
class Slot:
    """A ticket of a llama-server pool: its socket and one of its slots."""
    socket: str
    index: int


@dataclass(frozen=True)
class Placement:
    """What the choice needs to know of a request."""
    size: int                       # body bytes
    session: str | None = None
    digest: bytes | None = None     # of its messages
    prefixes: tuple[bytes, ...] = ()  # digests of its messages' shorter beginnings, longest first
    conversation: bool = False      # more than one message: a later turn may come back to it


@dataclass(frozen=True)
class Held:
    """What a slot holds after a request."""
    session: str | None
    digest: bytes | None
    conversation: bool
    used: int  # when it was last given, in placements


def _digests(messages: list) -> list[bytes]:
    """The digest of each beginning of `messages` (1, 2, ... messages), chained: one pass."""
    digests, chained = [], b""
    for message in messages:
        chained = hashlib.blake2b(chained + json.dumps(message, sort_keys=True, separators=(",", ":")).encode(),
                                  digest_size=16).digest()
        digests.append(chained)
    return digests


def placement_of(request: dict, size: int, session: str | None) -> Placement:
    """A chat's later turn repeats an earlier one's messages and adds answers and questions."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return Placement(size, session or None)
    digests = _digests(messages)
    return Placement(size, session or None, digests[-1], tuple(reversed(digests[:-1])),
                     conversation=bool(session) or len(messages) > 1)


class Slots:
    """Memory of what each slot of one pool holds, and the choice of a free one."""

    def __init__(self, long_prompt_bytes: int, count: int = 8):
        self.long_prompt_bytes = long_prompt_bytes
        self.stale_after = 2 * count  # placements since a conversation's last turn
        self.held: dict[int, Held] = {}
        self._placements = 0

    def choose(self, free: list[Slot], placement: Placement) -> Slot:
        if placement.session:
            for slot in free:
                if (held := self.held.get(slot.index)) and held.session == placement.session:
                    return self._give(slot, placement)
        if placement.prefixes:
            holding = {held.digest: index for index, held in self.held.items() if held.digest}
            free_indexes = {slot.index: slot for slot in free}
            for prefix in placement.prefixes:  # the longest first
                if holding.get(prefix) in free_indexes:
                    return self._give(free_indexes[holding[prefix]], placement)
        spare = [slot for slot in free if not (held := self.held.get(slot.index)) or not held.conversation
                 or self._placements - held.used >= self.stale_after]
        if not spare:  # every free slot holds a conversation: the one unused the longest
            return self._give(min(free, key=lambda slot: self.held[slot.index].used), placement)
        pick = max if placement.size > self.long_prompt_bytes else min
        return self._give(pick(spare, key=lambda slot: slot.index), placement)

    def _give(self, slot: Slot, placement: Placement) -> Slot:
        self._placements += 1
        self.held[slot.index] = Held(placement.session, placement.digest, placement.conversation, self._placements)
        return slot

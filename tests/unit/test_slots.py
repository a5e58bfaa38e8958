"""The front's choice of llama-server slot (files/engine/nas_ai_engine/slots.py)."""

from nas_ai_engine import slots

LONG = 2048  # bytes: a prompt longer than one batch of 512 tokens
FREE = [slots.Slot("sock", index) for index in range(4)]
QUESTION = [{"role": "user", "content": "What is RAID 1?"}]


def _turns(count: int) -> list[list[dict]]:
    """The messages of a chat's turns 1..count, each the last one's plus an answer and a question."""
    messages, turns = [{"role": "system", "content": "Be brief."}], []
    for turn in range(1, count + 1):
        messages = [*messages, {"role": "user", "content": f"question {turn}"}]
        turns.append(messages)
        messages = [*messages, {"role": "assistant", "content": f"answer {turn}"}]
    return turns


def test_short_prompts_take_the_lowest_free_slot_and_long_ones_the_highest():
    memory = slots.Slots(LONG)
    assert memory.choose(FREE, slots.placement_of({"messages": QUESTION}, 300, None)).index == 0
    assert memory.choose(FREE[1:], slots.placement_of({"messages": QUESTION}, 5000, None)).index == 3
    assert memory.choose(FREE[1:3], slots.placement_of({"messages": QUESTION}, 300, None)).index == 1


def test_a_sessions_turns_come_back_to_its_slot_and_others_keep_off_it():
    memory = slots.Slots(LONG)
    first = memory.choose(FREE, slots.placement_of({"messages": _turns(1)[0]}, 300, "alice:chat-1"))
    assert first.index == 0
    # A question without a conversation takes a slot that holds none, though slot 0 is lowest.
    assert memory.choose(FREE, slots.placement_of({"messages": QUESTION}, 300, None)).index == 1
    for messages in _turns(5)[1:]:
        placed = memory.choose(FREE, slots.placement_of({"messages": messages}, 3000, "alice:chat-1"))
        assert placed == first  # long by now, but its history is there
    # Another client's session of the same name is another session.
    assert memory.choose(FREE, slots.placement_of({"messages": _turns(1)[0]}, 300, "bob:chat-1")).index == 1


def test_a_sessionless_chat_finds_its_slot_by_the_messages_it_repeats():
    memory = slots.Slots(LONG)
    turns = _turns(3)
    assert memory.choose(FREE, slots.placement_of({"messages": turns[0]}, 300, None)).index == 0
    memory.choose(FREE[1:], slots.placement_of({"messages": QUESTION}, 300, None))  # slot 1, busy meanwhile
    assert memory.choose(FREE, slots.placement_of({"messages": turns[1]}, 400, None)).index == 0
    assert memory.choose(FREE, slots.placement_of({"messages": turns[2]}, 500, None)).index == 0
    # An edited history repeats nothing: a new place.
    edited = [*turns[2][:-2], {"role": "assistant", "content": "another answer"}, turns[2][-1]]
    assert memory.choose(FREE, slots.placement_of({"messages": edited}, 500, None)).index != 0


def test_when_every_free_slot_holds_a_conversation_the_one_unused_longest_is_taken():
    memory = slots.Slots(LONG)
    for index, session in enumerate(["a", "b", "c", "d"]):
        assert memory.choose(FREE[index:], slots.placement_of({"messages": _turns(1)[0]}, 300, session)).index == index
    memory.choose(FREE, slots.placement_of({"messages": _turns(2)[1]}, 300, "a"))  # a used again: b is oldest
    assert memory.choose(FREE, slots.placement_of({"messages": QUESTION}, 300, None)).index == 1


def test_requests_without_messages_are_placed_by_size_alone():
    memory = slots.Slots(LONG)
    placement = slots.placement_of({"prompt": "Once upon a time"}, 100, None)
    assert placement.digest is None and not placement.conversation
    assert memory.choose(FREE, placement).index == 0
    assert memory.choose(FREE, slots.placement_of({"prompt": "x" * 4000}, 4100, None)).index == 3


def test_a_conversation_that_does_not_come_back_frees_its_slot_for_the_order_by_length():
    memory = slots.Slots(LONG, count=4)
    for index, session in enumerate(["a", "b", "c", "d"]):  # every slot holds a conversation
        memory.choose(FREE[index:], slots.placement_of({"messages": _turns(1)[0]}, 300, session))
    # "d" keeps talking; a, b and c do not come back. 2 x 4 placements later a slot is stale.
    for _ in range(6):
        memory.choose(FREE[3:], slots.placement_of({"messages": _turns(2)[1]}, 300, "d"))
    assert memory.choose(FREE, slots.placement_of({"messages": QUESTION}, 300, None)).index == 0  # a's, 9 ago
    # c's turn was 8 placements ago now: the long document takes the highest stale slot, not d's.
    assert memory.choose(FREE, slots.placement_of({"messages": QUESTION}, 5000, None)).index == 2


def test_a_sessionless_chat_whose_turns_alternate_engines_finds_the_turn_this_engine_holds():
    memory = slots.Slots(LONG)
    turns = _turns(5)
    assert memory.choose(FREE, slots.placement_of({"messages": turns[0]}, 300, None)).index == 0
    memory.choose(FREE[1:], slots.placement_of({"messages": _turns(1)[0] + [{"role": "user", "content": "x"}]}, 300, None))
    # Turn 2 went to the other engine; turn 3 here begins with turn 1's messages.
    assert memory.choose(FREE, slots.placement_of({"messages": turns[2]}, 500, None)).index == 0
    assert memory.choose(FREE, slots.placement_of({"messages": turns[4]}, 700, None)).index == 0
    # A request that begins with a system prompt alone takes no conversation's slot for it.
    other = [turns[0][0], {"role": "user", "content": "something else"}]
    assert memory.choose(FREE, slots.placement_of({"messages": other}, 300, None)).index == 2

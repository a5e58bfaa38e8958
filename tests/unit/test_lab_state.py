"""lab/state.py: two writers of the lab's state (a `lab up` in the background, another in the
foreground) each keep the other's hosts."""

import threading

from lab import config, state


def test_a_second_writer_waits_and_keeps_the_first_ones_hosts(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "HOME", tmp_path)
    monkeypatch.setattr(config, "STATE_FILE", tmp_path / "lab.json")
    first_inside, second_done = threading.Event(), threading.Event()
    release_first = threading.Event()

    def first():
        with state.editing() as current:
            current["hosts"]["vm1"] = {"name": "vm1"}
            first_inside.set()
            release_first.wait(10)

    def second():
        first_inside.wait(10)
        with state.editing() as current:
            current["hosts"]["alt1"] = {"name": "alt1"}
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert first_inside.wait(10)
    assert not second_done.wait(0.5), "the second writer did not wait for the lock"
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert set(state.load()["hosts"]) == {"vm1", "alt1"}

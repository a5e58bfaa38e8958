"""Bounded waits for something to answer: a child's socket while it loads its model (the front),
llama-server's port (the smoke test of a new build), the engine's /health (`wait-ready`, which
systemd runs). Callers say what failed: each wait ends in a message of its own."""

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable


def ready_within(check: Callable[[], bool], timeout: float, interval: float) -> bool:
    """True as soon as `check()` is, probing every `interval` s; False after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def ready_within_async(check: Callable[[], Awaitable[bool]], timeout: float, interval: float) -> bool:
    """ready_within for an async check: the event loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


def answers_200(url: str) -> bool:
    """A GET of `url` answers 200; refused, unreachable, slow or another status: not yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False

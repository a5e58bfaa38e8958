"""Waiting, bounded, for something to become so: a lab host booted or powered off, an engine
healthy, a metric counted, an alert fired. The lab, the benchmark and the lab tests share it."""

import time
from collections.abc import Callable
from typing import Any


class TimedOut(TimeoutError):
    """The deadline passed; `last` is the check's last value, or the exception it last raised."""

    def __init__(self, message: str, last: Any):
        super().__init__(message)
        self.last = last


def wait_until(check: Callable[[], Any], timeout: float, what: str, *, interval: float = 1.0,
               ready: Callable[[Any], bool] = bool, retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Call `check` every `interval` s until `ready(its value)`, and return that value.

    An exception in `retry_on` counts as not ready yet (a host rebooting drops SSH); any other
    propagates. After `timeout` s: TimedOut, naming `what`, the timeout and the last outcome.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = check()
        except retry_on as error:
            last = error
        else:
            if ready(last):
                return last
        # Checked after a probe, so a slow probe that ends past the deadline still counts.
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    # A bare True/False/None says nothing more than "not yet".
    outcome = "" if last is None or isinstance(last, bool) else f" (last: {last!r})"
    raise TimedOut(f"timed out after {timeout:.0f} s waiting for {what}{outcome}", last)

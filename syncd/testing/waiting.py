"""Waiting for something another thread or process does, without a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], *, timeout: float = 30.0, what: str = "the condition"
) -> None:
    """Poll ``condition`` until it is true; ``AssertionError`` naming ``what`` after ``timeout``.

    The timeout is a bound on a hang, not a measurement: make it generous (tens of seconds), so a
    slow machine waits longer instead of failing.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)

"""settle_heap: start-up's garbage is collected, and what survives is left out of later
collections (the permanent generation), so a full collection no longer walks it."""

from __future__ import annotations

import gc
import weakref

from parity.heap import settle_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_settle_heap_collects_garbage_then_freezes_the_survivors() -> None:
    kept = Node()
    dropped = Node()
    gone = weakref.ref(dropped)
    del dropped
    try:
        settle_heap()
        assert gone() is None  # the cycle left by start-up was collected first
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # frozen: no generation holds it
        later = Node()
        assert any(o is later for o in gc.get_objects())  # what comes after is collected
    finally:
        gc.unfreeze()  # this is a test run: give the objects back to the collector

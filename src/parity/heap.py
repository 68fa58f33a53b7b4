"""The garbage collector once a long-running process has started (server and runner).

CPython's full (generation 2) collection walks every tracked object. After start-up a server
process tracks a few hundred thousand (SQLAlchemy, FastAPI, pydantic and web3 modules, compiled
statement caches), and one full collection holds the event loop for 250-350 ms on a small
machine: a stall for every request in flight, at times nobody chooses. What exists when start-up
is done lives as long as the process, so it is collected once and frozen (``gc.freeze``):
later collections leave it out and walk only what the process made since."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect what start-up left behind, then keep the survivors out of later collections.
    Call once, when start-up is done and before serving (never in a process that keeps
    creating and dropping whole applications, such as a test run: frozen objects are never
    collected)."""
    gc.collect()
    gc.freeze()

"""StakeReader: a figure says when it was asked of the node, the cache follows the clock, and a
fresh read bypasses it."""

from __future__ import annotations

from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.ledger.deps import StakeReader

WHO = "0x" + "22" * 20


class Counting(FakeChainClient):
    def __init__(self, chain: FakeChain, clock: FrozenClock) -> None:
        super().__init__(chain)
        self.clock = clock
        self.calls = 0

    async def stake_of(self, stake_id: str) -> int:
        self.calls += 1
        self.clock.advance(0.25)  # the node takes a while to answer
        return 7


async def test_a_read_is_stamped_before_the_node_answers_and_cached_for_the_ttl():
    clock = FrozenClock()
    client = Counting(FakeChain(), clock)
    reader = StakeReader(lambda: client, 10, clock)
    asked = clock.now()
    first = await reader.read(WHO)
    assert (first.amount, first.read_at, first.cached) == (7, asked, False)
    clock.advance(5)
    hit = await reader.read(WHO)
    assert (hit.read_at, hit.cached, client.calls) == (asked, True, 1)
    fresh = await reader.read(WHO, fresh=True)
    assert (fresh.cached, client.calls) == (False, 2) and fresh.read_at > asked
    clock.advance(10)
    assert not (await reader.read(WHO)).cached  # expired
    assert await reader.stake_of(WHO) == 7 and client.calls == 3

"""The LLM token relay between replicas: Redis against NATS (STREAM_BUS_URL), in-process beside.

Two replicas are two processes: the subscriber process opens a bus and subscribes ``--streams``
prompt keys (as the gateway does for each streaming client), the publisher process (this one)
opens another on the same Redis or NATS server and publishes ``--deltas`` deltas per key, open
loop at ``--rate`` deltas per second in all (each delta at its scheduled time, whatever the
previous ones cost; one task per key, as each runner streams in a request of its own), each
carrying its scheduled send time. Delivery latency = arrival at the
subscriber's queue - scheduled send (CLOCK_MONOTONIC is one clock for every process of the
machine). Also: the p50 of ``subscribers(key)`` (the listener count the runner's stream answer
carries: PUBSUB NUMSUB on Redis, one request answered by the holding replica on NATS), and the
CPU of both processes. ``local`` is the in-process bus (publisher and subscriber in one
process): the relay's own floor, no network.

    .venv/bin/python bench/stream_bus.py                                   # local, redis, nats
    .venv/bin/python bench/stream_bus.py --buses redis,nats --rate 5000 --streams 50

Redis and NATS URLs: ``--redis-url`` (default $PARITY_TEST_REDIS_URL or 127.0.0.1:6379) and
``--nats-url`` (default $PARITY_TEST_NATS_URL or 127.0.0.1:4222); a bus whose server does not
answer is skipped, saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from parity.llm.streams import LocalStreamBus, StreamBus, StreamEvent, Subscription, open_stream_bus


def _loop_policy() -> None:
    try:
        import uvloop  # the server's loop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


async def _read(sub: Subscription, n: int, out: list[int], lost: list[int]) -> None:
    """Read ``n`` deltas and the end of one key; latency in ns of each delta."""
    got = 0
    while True:
        event = await sub.next(30)
        if event is None or event.kind == "overflow":
            lost.append(n - got)
            return
        if event.kind == "end":
            if got < n:
                lost.append(n - got)
            return
        out.append(time.monotonic_ns() - int(event.text))
        got += 1


async def _subscriber(bus: StreamBus, keys: list[str], deltas: int, ready: Any) -> dict[str, Any]:
    latencies: list[int] = []
    lost: list[int] = []
    async with _Subscribed(bus, keys) as subs:
        ready()
        await asyncio.gather(*(_read(s, deltas, latencies, lost) for s in subs))
    return {"latencies": latencies, "lost": sum(lost)}


class _Subscribed:
    """Subscribe every key of ``keys`` on ``bus``; the subscriptions, in order."""

    def __init__(self, bus: StreamBus, keys: list[str]) -> None:
        self.bus, self.keys = bus, keys
        self._cms: list[Any] = []

    async def __aenter__(self) -> list[Subscription]:
        subs = []
        for key in self.keys:
            cm = self.bus.subscribe(key)
            subs.append(await cm.__aenter__())
            self._cms.append(cm)
        return subs

    async def __aexit__(self, *exc: object) -> None:
        for cm in reversed(self._cms):
            await cm.__aexit__(None, None, None)


def _subscriber_process(url: str, keys: list[str], deltas: int, conn: Connection) -> None:
    _loop_policy()

    async def run() -> dict[str, Any]:
        bus = open_stream_bus(url)
        try:
            cpu = time.process_time()
            result = await _subscriber(bus, keys, deltas, lambda: conn.send("ready"))
            result["cpu_s"] = time.process_time() - cpu
            return result
        finally:
            await bus.aclose()

    conn.send(asyncio.run(run()))


async def _publish(bus: StreamBus, keys: list[str], deltas: int, rate: float) -> float:
    """Open loop, one task per key (as each runner's stream is a request of its own): delta i of
    all (round robin over the keys) is due at t0 + i / rate and sent then unless its own key's
    previous publish is still being awaited; then that key's end. Returns how late the sends
    were at the median (ms)."""
    late: list[float] = []
    t0 = time.monotonic_ns() + 50_000_000

    async def stream(k: int, key: str) -> None:
        for seq in range(deltas):
            due = t0 + int((seq * len(keys) + k) * 1e9 / rate)
            while (now := time.monotonic_ns()) < due:
                await asyncio.sleep(max(0.0, (due - now) / 1e9))
            late.append((now - due) / 1e6)
            await bus.publish(key, StreamEvent("delta", 1, str(due), seq=seq))
        await bus.publish(key, StreamEvent("end", 1))

    await asyncio.gather(*(stream(k, key) for k, key in enumerate(keys)))
    return statistics.median(late)


async def _count_p50(bus: StreamBus, key: str, n: int = 50) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await bus.subscribers(key)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


async def _run_local(keys: list[str], deltas: int, rate: float) -> dict[str, Any]:
    bus = LocalStreamBus()
    ready = asyncio.Event()
    cpu = time.process_time()
    reader = asyncio.ensure_future(_subscriber(bus, keys, deltas, ready.set))
    await ready.wait()
    count = await _count_p50(bus, keys[0])
    late = await _publish(bus, keys, deltas, rate)
    result = await reader
    result.update(count_ms=count, late_ms=late, cpu_pub_s=time.process_time() - cpu, cpu_s=0.0)
    return result


async def _run_shared(url: str, keys: list[str], deltas: int, rate: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_subscriber_process, args=(url, keys, deltas, theirs))
    proc.start()
    bus = open_stream_bus(url)
    try:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, mine.recv) == "ready"
        if await bus.subscribers(keys[-1]) != 1:
            raise SystemExit(f"{url}: the other replica's subscription is not seen")
        count = await _count_p50(bus, keys[0])
        cpu = time.process_time()
        late = await _publish(bus, keys, deltas, rate)
        cpu_pub = time.process_time() - cpu
        result: dict[str, Any] = await loop.run_in_executor(None, mine.recv)
    finally:
        await bus.aclose()
        proc.join(30)
    result.update(count_ms=count, late_ms=late, cpu_pub_s=cpu_pub)
    return result


async def _answers(bus: StreamBus) -> bool:
    try:
        return await bus.ping()
    finally:
        await bus.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--buses", default="local,redis,nats")
    p.add_argument("--streams", type=int, default=20, help="prompt keys streamed at once")
    p.add_argument("--deltas", type=int, default=200, help="deltas per key")
    p.add_argument("--rate", type=float, default=2000.0, help="deltas per second in all")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("PARITY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    p.add_argument(
        "--nats-url", default=os.environ.get("PARITY_TEST_NATS_URL", "nats://127.0.0.1:4222")
    )
    args = p.parse_args()
    _loop_policy()
    urls = {"local": "", "redis": args.redis_url, "nats": args.nats_url}
    total = args.streams * args.deltas
    print(
        f"{args.streams} streams x {args.deltas} deltas = {total} deltas at {args.rate:g}/s "
        f"(open loop); latency = arrival at the other replica's subscriber - scheduled send"
    )
    print(
        f"{'bus':6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'lost':>5} {'count p50 ms':>13} "
        f"{'send late p50':>14} {'cpu pub s':>10} {'cpu sub s':>10} {'p50 / redis':>12}"
    )
    results: dict[str, dict[str, Any]] = {}
    for kind in args.buses.split(","):
        keys = [f"bench-{kind}-{os.getpid()}-{i}" for i in range(args.streams)]
        if kind == "local":
            result = asyncio.run(_run_local(keys, args.deltas, args.rate))
        else:
            if not asyncio.run(_answers(open_stream_bus(urls[kind]))):
                print(f"{kind:6} skipped: nothing answers at {urls[kind]}")
                continue
            result = asyncio.run(_run_shared(urls[kind], keys, args.deltas, args.rate))
        results[kind] = result
        lat = result["latencies"]
        p50 = _pct(lat, 0.5) if lat else float("nan")
        base = results.get("redis")
        ratio = p50 / _pct(base["latencies"], 0.5) if base and base["latencies"] else float("nan")
        print(
            f"{kind:6} {p50:8.3f} {_pct(lat, 0.99):8.3f} {max(lat) / 1e6:8.3f} "
            f"{result['lost']:5d} {result['count_ms']:13.3f} {result['late_ms']:14.3f} "
            f"{result['cpu_pub_s']:10.2f} {result['cpu_s']:10.2f} {ratio:12.2f}"
        )


if __name__ == "__main__":
    main()

"""Small puts into the local content store as its pack count grows.

Every upload to the embedded store becomes a pack of its own (merged only by storage GC), and
an FL round writes one small update per participant plus the new model. This measures the CPU
of one 10 KB put (the size of the digits MLP's update) straight on `LocalContentStore` (no
server, no HTTP), at several pack counts, beside the first count as the baseline.

    .venv/bin/python bench/store_packs.py                      # at 150, 1050, 3050 packs
    .venv/bin/python bench/store_packs.py --counts 100,500 --size 65536
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from parity.storage.local import LocalContentStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--counts", default="100,1000,3000", help="pack counts to measure after")
    p.add_argument("--size", type=int, default=9800, help="bytes per put")
    p.add_argument("--samples", type=int, default=50, help="puts measured at each count")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="parity-packs-") as tmp:
        store = LocalContentStore(Path(tmp))
        store._ensure_dirs()
        packs = 0
        baseline: float | None = None
        print(f"local store: CPU per put of {args.size} bytes (mean of {args.samples})")
        for target in (int(c) for c in args.counts.split(",")):
            while packs < target:
                store._put_batch([(os.urandom(args.size), True)])
                packs += 1
            data = [os.urandom(args.size) for _ in range(args.samples)]
            started = time.process_time()
            for blob in data:
                store._put_batch([(blob, True)])
            per_put = (time.process_time() - started) / args.samples * 1000
            packs += args.samples
            baseline = baseline or per_put
            print(
                f"{packs:6d} packs: {per_put:6.2f} ms, {per_put / baseline:5.2f} x the first count"
            )


if __name__ == "__main__":
    main()

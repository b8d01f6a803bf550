#!/usr/bin/env python3
"""Sums a heaptrack peak flamegraph by the leaf-most frame in src/.

    heaptrack -o ht BIN scan ...            # a build without #[global_allocator]
    heaptrack_print -f ht.zst --print-flamegraph ht.folded --flamegraph-cost-type peak
    scripts/heap-by-source.py ht.folded     # MB at the peak, by function (file)

Stacks with no frame of ours are listed under their RocksDB frame, or as
"other".
"""
import collections
import os
import re
import sys

src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
ours = {f for _, _, fs in os.walk(src) for f in fs if f.endswith(".rs")}
ours -= {"mod.rs", "lib.rs", "main.rs"}  # too common a name to tell apart

totals = collections.Counter()
for line in open(sys.argv[1]):
    stack, _, cost = line.rstrip().rpartition(" ")
    if not stack:
        continue
    frames = stack.split(";")
    key = None
    for f in reversed(frames):
        m = re.search(r"\(([\w]+\.rs)\)$", f)
        if m and m.group(1) in ours:
            key = f[:90]
            break
    if key is None:
        rocks = [f for f in frames if "rocksdb::" in f]
        key = "rocksdb: " + rocks[-1][:70] if rocks else "other: " + frames[-1][:70]
    totals[key] += int(cost)
for key, cost in totals.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 30):
    print(f"{cost / 1e6:8.1f} MB  {key}")
print(f"{sum(totals.values()) / 1e6:8.1f} MB  total at the peak")

#!/usr/bin/env python3
"""Kong records with the mapped fields mutated, for comparing two builds'
`convert` output (events and dead letters, errors included) on what the
fast paths of `decode::mapped` and the path scanner must treat exactly as
the general conversions do.

    scripts/mutate-kong.py KONG_INPUT [RECORDS] > kmut.jsonl
    for b in OLD NEW; do
      $b convert --input-format kong --allow-dead-letters --dead-letter dl-$(basename $b).jsonl kmut.jsonl > ev-$(basename $b).jsonl
    done
    cmp ev-OLD.jsonl ev-NEW.jsonl && cmp dl-OLD.jsonl dl-NEW.jsonl

Each of the first RECORDS (default 300) records gives six mutants: one to
three of the headers, times, status, ids, method, path and client IP set to
absent placeholders, escapes, numbers, numeric strings, arrays, objects,
booleans, or removed; some with non-ASCII left unescaped, some with a header
name in another case. Seeded: the same file on every run.
"""
import json
import random
import sys

random.seed(3)
path = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
VALUES = [None, "", "-", "--", "x", 'a"b', "a\\b", "é", "1793491198857",
          " 1793491198857 ", "1793491198.857", "2026-11-28T09:15:02.417Z",
          "28/Nov/2026:09:15:02 +0000", 1793491198857, 1793491198.857, -5, 0,
          200, "200", 999, 1000, True, [], ["n1", "n2"], [["x"]], {}, {"a": 1},
          "null"]
HEADERS = ["x-nonce", "x-timestamp", "x-api-key", "x-signature", "user-agent"]
with open(path) as f:
    records = [json.loads(line) for line, _ in zip(f, range(count))]
for rec in records:
    for _ in range(6):
        r = json.loads(json.dumps(rec))
        for _ in range(random.randint(1, 3)):
            target = random.choice(HEADERS + ["status", "started_at", "id", "username",
                                              "method", "uri", "client_ip"])
            value = random.choice(VALUES)
            if target == "status":
                d = r["response"]
            elif target in ("started_at", "client_ip"):
                d = r
            elif target in ("id", "method", "uri"):
                d = r["request"]
            elif target == "username":
                d = r.setdefault("consumer", {})
            else:
                d = r["request"]["headers"]
            if value is None:
                d.pop(target, None)
            else:
                d[target] = value
        line = json.dumps(r, separators=(",", ":"), ensure_ascii=random.random() < 0.3)
        if random.random() < 0.1:
            line = line.replace('"x-nonce"', '"X-Nonce"')
        print(line)

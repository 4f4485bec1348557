#!/usr/bin/env python3
"""zstd on the record bodies of a local-log segment: each record compressed alone (what the collector
does) against one frame per group of 8 records (what compressing a whole group commit would do), at
the record format's level and dictionary, and at negative levels. BENCHMARKS.md §16.

    python3 deploy/bench/zstd_groups.py DATA_DIR/log/00000000000000000000.log [RECORDS=20000]

Needs `zstandard` (`pip install zstandard`). Reads version 2 records of codec 0 or 2 (schemas/README.md), skips others.
"""
import struct
import sys
import time
from pathlib import Path

import zstandard as zs

HEADER = struct.Struct("<IIQ")  # payload length, CRC-32, offset (locallog/src/lib.rs)
DICT = zs.ZstdCompressionDict((Path(__file__).resolve().parents[2] / "schemas/src/records.dict").read_bytes())


def bodies(path, limit):
    dec = zs.ZstdDecompressor(dict_data=DICT)
    data = open(path, "rb").read(64 << 20)
    pos, out = 0, []
    while pos + HEADER.size <= len(data) and len(out) < limit:
        n, _, _ = HEADER.unpack_from(data, pos)
        record = data[pos + HEADER.size : pos + HEADER.size + n]
        if len(record) < n:
            break
        pos += HEADER.size + n
        if record[:3] == b"QF\x02" and record[3] == 2:
            out.append(dec.decompress(record[4:]))
        elif record[:3] == b"QF\x02" and record[3] == 0:
            out.append(record[4:])
    return out


def best_of(rounds, f):
    best = None
    for _ in range(rounds):
        t = time.perf_counter()
        size = f()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return size, best


def main():
    path = sys.argv[1]
    records = bodies(path, int(sys.argv[2]) if len(sys.argv) > 2 else 20000)
    if not records:
        sys.exit(f"no version 2 records in {path}")
    n = len(records)
    print(f"{n} records, {sum(map(len, records)) / n:.0f} bytes of body each")
    print(f"{'how':<34} {'bytes/record':>12} {'us/record':>10}")
    for level in [1, -1, -3, -5]:
        c = zs.ZstdCompressor(level=level, dict_data=DICT)
        size, dt = best_of(3, lambda: sum(len(c.compress(b)) for b in records))
        print(f"{f'per record, level {level}, dictionary':<34} {size / n:>12.0f} {dt / n * 1e6:>10.2f}")
    groups = [b"".join(records[i : i + 8]) for i in range(0, n, 8)]
    c = zs.ZstdCompressor(level=1, dict_data=DICT)
    size, dt = best_of(3, lambda: sum(len(c.compress(g)) for g in groups))
    print(f"{'one frame per 8, level 1, dict.':<34} {size / n:>12.0f} {dt / n * 1e6:>10.2f}")


if __name__ == "__main__":
    main()

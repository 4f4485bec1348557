#!/usr/bin/env python3
"""What one group commit's fdatasync costs on this disk, by how the log's file is laid out: appended to
(the file grows: its new length is written too), overwriting zeros written ahead (data only), or over
fallocate's unwritten extents (their conversion is metadata too). BENCHMARKS.md §21.

    python3 deploy/bench/fdatasync.py [DIR=/tmp] [WRITES=300] [BYTES=60000]

Prints the median and p95 in µs of pwrite + fdatasync of BYTES at the end of what was written, for each."""
import os, statistics, sys, time

def bench(path, layout, n, size):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        if layout == "zeros ahead":
            os.write(fd, b"\0" * (n * size))
            os.fsync(fd)
        elif layout == "fallocate":
            os.posix_fallocate(fd, 0, n * size)
            os.fsync(fd)
        data = os.urandom(size)
        times = []
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, data, i * size)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return statistics.median(times) * 1e6, times[int(n * 0.95)] * 1e6

directory = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
size = int(sys.argv[3]) if len(sys.argv) > 3 else 60000
print(f"{n} x (pwrite {size} B + fdatasync) in {directory}")
for layout in ["growing", "zeros ahead", "fallocate"]:
    median, p95 = bench(os.path.join(directory, "fdatasync-bench"), layout, n, size)
    print(f"{layout:<12} median {median:6.0f} µs   p95 {p95:6.0f} µs")

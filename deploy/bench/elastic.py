#!/usr/bin/env python3
"""Elastic pipeline workers: throughput with 1, 2 and 4 workers on the same stream, and the time a dead
worker's leases take to be taken over (BENCHMARKS.md §6).

    python3 deploy/bench/elastic.py --bin target/release/qoeflow [--viewers 8000] [--rounds 3]

Services, started here: the Kinesis emulator (deploy/local/kinesis.sh) and moto's server (S3 for the
dataset and the lineages' history, DynamoDB for the lease table; `moto[server]` from
tests/requirements.txt). A 4-shard stream is filled once by `qoeflow loadgen` through `qoeflow ingest`;
then, per round and per worker count K (alternating), K elastic workers (`qoeflow pipeline
--lease-table`, a fresh table, dataset prefix and data directories each time) start at once and drain
it. Drained = every lineage's progress file counts every record of the stream. Reported: wall time
from the workers' start, events/s, events/s per core (user + system CPU of the workers), and the
scaling ratio against one worker. Then, three times: two workers hold two leases each, one is killed
with SIGKILL, and the time until the other owns all four is measured (the default lease timeout, 10 s).
"""
import argparse, glob, json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STREAM = "bench"
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, within=60):
    deadline = time.time() + within
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def progress(data_dirs):
    """Per lineage (runner name): the largest (records, events) any worker's progress file shows."""
    best = {}
    for d in data_dirs:
        for path in glob.glob(f"{d}/pipeline/checkpoint-kinesis-*.json"):
            try:
                p = json.load(open(path))
            except (OSError, ValueError):
                continue
            name = os.path.basename(path)
            got = (p["stats"]["records"], p["stats"]["events"])
            best[name] = max(best.get(name, (0, 0)), got)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=f"{ROOT}/target/release/qoeflow")
    ap.add_argument("--viewers", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    counts = [int(k) for k in args.workers.split(",")]
    tmp = tempfile.mkdtemp(prefix="qoeflow-elastic-")
    procs = []

    def spawn(cmd, env=None, log=None):
        p = subprocess.Popen(cmd, env={**os.environ, **AWS, **(env or {})}, stdout=subprocess.DEVNULL,
                             stderr=open(log, "w") if log else subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        kport, mport = free_port(), free_port()
        spawn([f"{ROOT}/deploy/local/kinesis.sh", "run", str(kport), str(free_port())])
        spawn(["moto_server", "-H", "127.0.0.1", "-p", str(mport)])
        wait_port(kport)
        wait_port(mport)
        kinesis_url, moto_url = f"http://127.0.0.1:{kport}", f"http://127.0.0.1:{mport}"
        kin = boto3.client("kinesis", endpoint_url=kinesis_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        kin.create_stream(StreamName=STREAM, ShardCount=4)
        for _ in range(100):
            if kin.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            time.sleep(0.2)
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="bench")
        ddb = boto3.client("dynamodb", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")

        # Fill the stream once.
        iport = free_port()
        ingest = spawn([args.bin, "ingest", "--listen", f"127.0.0.1:{iport}", "--kinesis-stream", STREAM, "--kinesis-endpoint", kinesis_url],
                       {"QOEFLOW_LOG_LEVEL": "warn"})
        wait_port(iport)
        t0 = time.time()
        subprocess.run([args.bin, "loadgen", "--target", f"http://127.0.0.1:{iport}", "--viewers", str(args.viewers), "--duration", "10m",
                        "--speed", "20", "--seed", "7", "--quiet"], check=True, env={**os.environ, "QOEFLOW_LOG_LEVEL": "warn"})
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{iport}/metrics").read().decode()
        records = sum(int(float(l.rsplit(" ", 1)[1])) for l in metrics.splitlines() if l.startswith('qoeflow_ingest_requests_total{status="204"}'))
        ingest.terminate()
        ingest.wait()
        print(f"stream filled: {records} records (accepted beacons) in {time.time() - t0:.1f} s, 4 shards")

        env = {"AWS_ENDPOINT_URL": moto_url, "AWS_ALLOW_HTTP": "true", "QOEFLOW_LOG_LEVEL": "warn"}

        def workers(tag, k, extra_env=None):
            dirs = [f"{tmp}/{tag}-w{i}" for i in range(k)]
            ps = [spawn([args.bin, "pipeline", "--kinesis-stream", STREAM, "--kinesis-endpoint", kinesis_url, "--data-dir", d,
                         "--dataset", f"s3://bench/{tag}", "--lease-table", f"leases-{tag}"], {**env, **(extra_env or {})}, log=f"{d}.log")
                  for d in dirs]
            return ps, dirs

        results = {k: [] for k in counts}
        for r in range(args.rounds):
            for k in counts:
                tag = f"k{k}r{r}"
                start = time.time()
                ps, dirs = workers(tag, k)
                events = 0
                while True:
                    best = progress(dirs)
                    done = sum(v[0] for v in best.values())
                    if done >= records and len(best) == 4:
                        events = sum(v[1] for v in best.values())
                        break
                    if time.time() - start > 900:
                        sys.exit(f"{tag}: not drained in 900 s ({done} of {records} records)")
                    time.sleep(0.05)
                wall = time.time() - start
                cpu = sum(cpu_seconds(p.pid) for p in ps)
                for p in ps:
                    p.terminate()
                for p in ps:
                    p.wait()
                results[k].append((wall, events / wall, events / cpu))
                print(f"round {r + 1}, {k} worker(s): {events} events in {wall:.1f} s: {events / wall:,.0f} events/s, "
                      f"{events / cpu:,.0f} per core ({cpu:.1f} CPU s)")
        print()
        if args.rounds > 0:
            print("| workers | wall s | events/s | events/s per core | scaling (events/s vs 1 worker) |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            base = statistics.median(x[1] for x in results[counts[0]])
            for k in counts:
                wall = statistics.median(x[0] for x in results[k])
                rate = statistics.median(x[1] for x in results[k])
                per_core = statistics.median(x[2] for x in results[k])
                print(f"| {k} | {wall:.1f} | {rate:,.0f} | {per_core:,.0f} | {rate / base:.2f} |")

        # Takeover after kill -9, default lease timeout.
        takeovers = []
        for r in range(3):
            tag = f"takeover{r}"
            ps, dirs = workers(tag, 2)
            owners = {}
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    items = ddb.scan(TableName=f"leases-{tag}", ConsistentRead=True).get("Items", [])
                except ddb.exceptions.ResourceNotFoundException:
                    items = []  # the first worker has not created the table yet
                owners = {i["leaseKey"]["S"]: i.get("leaseOwner", {}).get("S") for i in items}
                held = sorted(owners.values(), key=str)
                if len(owners) == 4 and None not in held and len(set(held)) == 2 and held.count(held[0]) == 2:
                    break
                time.sleep(0.2)
            else:
                sys.exit(f"{tag}: leases not balanced 2/2: {owners}")
            victim_owner = owners["shardId-000000000000"]
            victim_dir = next(d for d in dirs if victim_owner.endswith(open(f"{d}/instance-id").read().strip()))
            victim = ps[dirs.index(victim_dir)]
            victim.send_signal(signal.SIGKILL)
            killed = time.time()
            while True:
                items = ddb.scan(TableName=f"leases-{tag}", ConsistentRead=True)["Items"]
                if all(i.get("leaseOwner", {}).get("S") not in (None, victim_owner) for i in items):
                    break
                if time.time() - killed > 120:
                    sys.exit(f"{tag}: not taken over in 120 s")
                time.sleep(0.05)
            takeovers.append(time.time() - killed)
            print(f"takeover {r + 1}: the killed worker's 2 leases owned by the survivor {takeovers[-1]:.2f} s after SIGKILL")
            for p in ps:
                p.kill()
                p.wait()
        print(f"takeover after kill -9 (lease timeout 10 s, renewals every 2.5 s): median {statistics.median(takeovers):.2f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()

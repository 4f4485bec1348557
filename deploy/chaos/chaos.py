#!/usr/bin/env python3
"""Chaos run: kill qoeflow with SIGKILL at random moments while `qoeflow loadgen` posts (retrying like an
SDK), restart it each time, and finally check every total qoeflow computed against the loadgen's truth:
nothing acknowledged lost, nothing counted twice.

    deploy/chaos/chaos.py serve   --bin target/release/qoeflow --kills 100
    deploy/chaos/chaos.py kinesis --bin target/release/qoeflow --kills 100

`serve` kills `qoeflow serve` (collector, local log and pipeline in one process). `kinesis` runs the
production shape on the Kinesis emulator (started here from deploy/local/kinesis.sh, unless
--kinesis-endpoint names one) and kills either the `qoeflow ingest` collector or the `qoeflow pipeline`
worker, at random. Totals are read back from the Parquet dataset with `qoeflow query`.

--clickhouse also writes to a ClickHouse server (started here from deploy/local/clickhouse.sh) and checks
its totals (read with FINAL) too. --outage SECONDS takes the services away for that long a third of the
way into the load: ClickHouse is killed (and restarted on its data), and in `kinesis` mode the Kinesis
endpoint stops answering (a proxy between qoeflow and the emulator drops every connection).

Exit status 0 when every total equals the truth; the report says what was done and what differed.
"""

import argparse
import json
import threading
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "chaos-key"
STREAM = "chaos"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos", "AWS_REGION": "us-east-1"}
# The pipeline's default reorder wait (5 s): beacons delayed by a restart, and overtaken ones (the
# loadgen's --overtake-by), come later than it and correct their views.
PIPELINE_ENV = {
    "QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS": "200",
    "QOEFLOW_LOG_LEVEL": "warn",
}

# The truth's keys as sums over `views` and over `qoe_window` (every view ended, so windows hold it all).
VIEWS_SQL = """SELECT count(*) AS views, sum(CAST(attempt AS BIGINT)) AS attempts, sum(CAST(started AS BIGINT)) AS starts,
 sum(CAST(vsf AS BIGINT)) AS vsf, sum(CAST(ebvs AS BIGINT)) AS ebvs,
 sum(CAST(playback_failure AS BIGINT)) AS playback_failures, sum(play_ms) AS play_ms, sum(stall_count) AS stall_count,
 sum(stall_ms) AS stall_ms, sum(seek_stall_ms) AS seek_stall_ms, sum(switches_up) AS switches_up,
 sum(switches_down) AS switches_down, sum(segments_hit) AS segments_hit, sum(segments_miss) AS segments_miss,
 sum(bytes_hit) AS bytes_hit, sum(bytes_hit + bytes_miss) AS bytes_total, sum(errors) AS errors,
 sum(fatal_errors) AS fatal_errors FROM views"""
WINDOWS_SQL = """SELECT sum(attempts) AS attempts, sum(starts) AS starts, sum(vsf) AS vsf, sum(ebvs) AS ebvs,
 sum(playback_failures) AS playback_failures, sum(play_ms) AS play_ms, sum(stall_count) AS stall_count,
 sum(stall_ms) AS stall_ms, sum(seek_stall_ms) AS seek_stall_ms, sum(switches_up) AS switches_up,
 sum(switches_down) AS switches_down, sum(segments_hit) AS segments_hit, sum(segments_miss) AS segments_miss,
 sum(bytes_hit) AS bytes_hit, sum(bytes_total) AS bytes_total, sum(errors) AS errors,
 sum(fatal_errors) AS fatal_errors FROM qoe_window"""
EVENTS_SQL = "SELECT count(*) AS events, count(DISTINCT view_id || '/' || CAST(seq AS VARCHAR)) AS distinct_events FROM events"


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, OSError):
        return None


class Proc:
    """A qoeflow process we can SIGKILL and start again with the same arguments."""

    def __init__(self, name, argv, env, log_path, ready_url=None):
        self.name, self.argv, self.env, self.log_path, self.ready_url = name, argv, env, log_path, ready_url
        self.p = None
        self.starts = 0

    def start(self):
        out = open(self.log_path, "ab")
        self.p = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out, start_new_session=True)
        self.starts += 1
        if self.ready_url:
            deadline = time.time() + 60
            while get(self.ready_url) != 200:
                if self.p.poll() is not None:
                    raise SystemExit(f"{self.name} exited with {self.p.returncode} at start; see {self.log_path}")
                if time.time() > deadline:
                    raise SystemExit(f"{self.name} did not answer {self.ready_url} within 60 s; see {self.log_path}")
                time.sleep(0.05)

    def kill9(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


def views_sql(table, b):
    return VIEWS_SQL.replace("FROM views", f"FROM {table}").replace("CAST(", b + "(").replace(" AS BIGINT)", ")")


def query(binary, data, sql):
    out = subprocess.run([binary, "query", "--data-dir", data, "--format", "json", sql],
                         capture_output=True, text=True, env={**os.environ, "QOEFLOW_LOG_LEVEL": "warn"})
    if out.returncode != 0:
        raise RuntimeError(f"qoeflow query failed: {out.stderr.strip()}")
    row = json.loads(out.stdout.splitlines()[0]) if out.stdout.strip() else {}
    return {k: int(v or 0) for k, v in row.items()}


def clickhouse_query(url, sql):
    """A row of ClickHouse (FINAL: one copy of each replayed row) as integers. Aliases get a `t_`
    prefix: ClickHouse would resolve an alias equal to a column name inside the other aggregates."""
    sql = re.sub(r" AS (\w+)", r" AS t_\1", sql)
    req = urllib.request.Request(url, data=(sql + " FORMAT JSONEachRow").encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            line = r.read().decode().strip().splitlines()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"ClickHouse refused {sql!r}: {e.read().decode().strip()}")
    row = json.loads(line[0]) if line else {}
    return {k.removeprefix("t_"): int(v or 0) for k, v in row.items()}


def start_clickhouse(work):
    http, tcp, data = free_port(), free_port(), os.path.join(work, "clickhouse")

    def start():
        p = subprocess.Popen(["bash", os.path.join(ROOT, "deploy/local/clickhouse.sh"), "run", str(http), str(tcp), data],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 90
        while get(f"http://127.0.0.1:{http}/ping") != 200:
            if p.poll() is not None or time.time() > deadline:
                raise SystemExit(f"ClickHouse did not start; see {data}/log")
            time.sleep(0.1)
        return p

    return start, f"http://127.0.0.1:{http}"


class Cuttable:
    """A TCP proxy to `upstream` that can be cut: while cut, every connection is dropped at once."""

    def __init__(self, upstream_port):
        self.upstream, self.cut = upstream_port, threading.Event()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(128)
        self.port = self.server.getsockname()[1]
        self.conns = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.server.accept()
            if self.cut.is_set():
                client.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            self.conns += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a, b):
        try:
            while not self.cut.is_set():
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def set_cut(self, cut):
        if cut:
            self.cut.set()
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []
        else:
            self.cut.clear()


def compare(truth, got):
    return {k: (truth[k], got[k]) for k in got if k in truth and truth[k] != got[k]}


def start_emulator(work):
    port = free_port()
    log_path = os.path.join(work, "kinesis.log")
    p = subprocess.Popen(["bash", os.path.join(ROOT, "deploy/local/kinesis.sh"), "run", str(port), str(free_port())],
                         stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, endpoint
        except OSError:
            if p.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the Kinesis emulator did not start; see {log_path}")
            time.sleep(0.1)


def kinesis_call(endpoint, action, body):
    """One Kinesis JSON API call (the emulator checks no signature)."""
    req = urllib.request.Request(endpoint, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"Kinesis_20131202.{action}",
        "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "Authorization": "AWS4-HMAC-SHA256 Credential=chaos/20260101/us-east-1/kinesis/aws4_request, "
                         "SignedHeaders=host, Signature=0",
    })
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def create_stream(endpoint, shards):
    kinesis_call(endpoint, "CreateStream", {"StreamName": STREAM, "ShardCount": shards})
    for _ in range(200):
        d = kinesis_call(endpoint, "DescribeStreamSummary", {"StreamName": STREAM})
        if d["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.1)
    raise SystemExit("the stream did not become ACTIVE")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["serve", "kinesis"])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/qoeflow"), help="the qoeflow binary")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--viewers", type=int, default=400)
    ap.add_argument("--duration", type=int, default=0, help="loadgen seconds [default: 1.2 s per kill, at least 20]")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    ap.add_argument("--work", help="working directory [default: a new temporary one]")
    ap.add_argument("--kinesis-endpoint", help="use this emulator instead of starting one")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--converge-timeout", type=int, default=180)
    ap.add_argument("--clickhouse", action="store_true", help="also write to ClickHouse and check it")
    ap.add_argument("--outage", type=int, default=0, help="seconds the services are away, a third of the way in")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="qoeflow-chaos-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    truth_path = os.path.join(work, "truth.json")
    duration = args.duration or max(20, int(args.kills * 1.2))
    env = {**os.environ, **PIPELINE_ENV}
    port = free_port()
    target = f"http://127.0.0.1:{port}"
    log(f"{args.mode}: {args.kills} kills, {args.viewers} viewers over {duration} s, seed {args.seed}, work {work}")

    emulator, proxy, clickhouse, ch_url = None, None, None, None
    procs = []
    ch_args = []
    if args.clickhouse or (args.outage and args.mode == "serve"):
        start_ch, ch_url = start_clickhouse(work)
        clickhouse = start_ch()
        ch_args = ["--clickhouse-url", ch_url]
    if args.mode == "serve":
        procs.append(Proc("serve", [args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--ingest-key", KEY,
                                    *ch_args], env, os.path.join(work, "serve.log"), f"{target}/healthz"))
    else:
        if args.kinesis_endpoint:
            endpoint = args.kinesis_endpoint
        else:
            emulator, endpoint = start_emulator(work)
        create_stream(endpoint, args.shards)
        if args.outage:
            proxy = Cuttable(int(endpoint.rsplit(":", 1)[1]))
            endpoint = f"http://127.0.0.1:{proxy.port}"
        kenv = {**env, **AWS_ENV}
        kinesis = ["--kinesis-stream", STREAM, "--kinesis-endpoint", endpoint]
        procs.append(Proc("ingest", [args.bin, "ingest", "--listen", f"127.0.0.1:{port}", "--ingest-key", KEY, *kinesis],
                          kenv, os.path.join(work, "ingest.log"), f"{target}/healthz"))
        procs.append(Proc("pipeline", [args.bin, "pipeline", "--data-dir", data, *kinesis, *ch_args], kenv,
                          os.path.join(work, "pipeline.log")))

    def outage():
        nonlocal clickhouse
        time.sleep(duration / 3)
        log(f"outage: the services are away for {args.outage} s")
        if clickhouse:
            os.killpg(clickhouse.pid, signal.SIGKILL)
            clickhouse.wait()
        if proxy:
            proxy.set_cut(True)
        time.sleep(args.outage)
        if proxy:
            proxy.set_cut(False)
        if clickhouse:
            clickhouse = start_ch()
        log("outage over: the services are back")

    loadgen = None
    outage_thread = None
    started = time.time()
    try:
        for p in procs:
            p.start()
        if args.outage:
            outage_thread = threading.Thread(target=outage, daemon=True)
            outage_thread.start()
        loadgen = subprocess.Popen(
            [args.bin, "loadgen", "--target", target, "--viewers", str(args.viewers), "--duration", f"{duration}s",
             "--seed", str(args.seed), "--key", KEY, "--truth", truth_path, "--quiet", "--duplicate-rate", "0.02",
             "--skew", "1m", "--reorder-rate", "0.05", "--overtake-by", "40s"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(work, "loadgen.log"), "ab"), text=True,
            env={**os.environ, "QOEFLOW_LOG_LEVEL": "warn"})
        kills = {p.name: 0 for p in procs}
        gap = duration / (args.kills + 1) if args.kills else 0
        for k in range(args.kills):
            time.sleep(rng.uniform(0.2, max(0.4, 1.6 * gap)))
            victim = rng.choice(procs)
            victim.kill9()
            kills[victim.name] += 1
            time.sleep(rng.uniform(0.0, 0.3))
            victim.start()
            if loadgen.poll() is not None:
                log(f"loadgen finished after {k + 1} kills")
        log(f"kills done: {kills}; waiting for the loadgen")
        out, _ = loadgen.communicate(timeout=duration + args.outage + 900)
        if outage_thread:
            outage_thread.join()
        print(out, end="")
        if loadgen.returncode != 0:
            log(f"FAIL: loadgen exited {loadgen.returncode}: not every beacon was acknowledged")
            return 1
        truth = json.load(open(truth_path))

        log("waiting for the pipeline to end every view")
        deadline = time.time() + args.converge_timeout
        views = {}
        while time.time() < deadline:
            try:
                views = query(args.bin, data, VIEWS_SQL)
            except RuntimeError as e:
                log(str(e))
            if views.get("views", 0) >= truth["views"]:
                break
            time.sleep(1)
        # One more epoch of margin, then stop cleanly and read the final dataset.
        time.sleep(2)
        for p in procs:
            p.stop()
        views, windows, events = query(args.bin, data, VIEWS_SQL), query(args.bin, data, WINDOWS_SQL), query(args.bin, data, EVENTS_SQL)
        wrong = {"views": compare(truth, views), "qoe_window": compare(truth, windows)}
        if ch_url:
            ch_views = clickhouse_query(ch_url, views_sql("qoeflow.views FINAL", "toInt64").replace("count(*)", "count()"))
            ch_windows = clickhouse_query(ch_url, WINDOWS_SQL.replace("FROM qoe_window", "FROM qoeflow.qoe_window FINAL"))
            wrong["clickhouse views"] = compare(truth, ch_views)
            wrong["clickhouse qoe_window"] = compare(truth, ch_windows)
            log(f"ClickHouse (FINAL): {ch_views['views']} views, {ch_windows['attempts']} attempts, {ch_windows['play_ms']} ms played")
        if events["events"] != events["distinct_events"]:
            wrong["events"] = {"rows": (events["distinct_events"], events["events"])}
        elapsed = time.time() - started
        restarts = {p.name: p.starts - 1 for p in procs}
        log(f"{sum(kills.values())} kills ({kills}), restarts {restarts}, {elapsed:.0f} s in all")
        log(f"truth: {truth['views']} views, {truth['attempts']} attempts, {truth['play_ms']} ms played; "
            f"qoeflow: {views['views']} views, {windows['attempts']} attempts, {windows['play_ms']} ms played; "
            f"{events['events']} event rows, each (view_id, seq) once: {events['events'] == events['distinct_events']}")
        if any(wrong.values()):
            log(f"FAIL: totals differ from the truth (truth, qoeflow): {json.dumps(wrong)}")
            return 1
        where = "Parquet and ClickHouse" if ch_url else "Parquet"
        log(f"OK: every total of `views` and `qoe_window` equals the truth ({len(views)} + {len(windows)} sums, {where}): "
            "nothing acknowledged lost, nothing counted twice")
        return 0
    finally:
        if loadgen and loadgen.poll() is None:
            loadgen.kill()
        for p in procs:
            p.kill9()
        for service in (emulator, clickhouse):
            if service and service.poll() is None:
                os.killpg(service.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())

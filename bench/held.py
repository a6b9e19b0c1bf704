#!/usr/bin/env python3
"""Many clients held at once: 10,000 idle keep-alive connections and 1,000 slow
streams on one release proxy, together. Reports the proxy's memory while they are held
and whether its probes and metrics keep answering (each probed every 100 ms, on a new
connection, as a kubelet or Prometheus would), then checks that it serves afterwards.

    cargo build --release -p switchboard-proxy -p switchboard-bench
    python3 bench/held.py                 # 10,000 idle + 1,000 streams, 10 s held
    python3 bench/held.py --scale 0.1     # a smoke run

Uses bench.py's upstream, manifests and bench-hold. Not part of the test command: it
needs 20,000 descriptors and a minute. Results: bench/README.md, "Idle connections and
slow streams".
"""

import argparse
import http.client
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def holder(mode: str, body: str, connections: int, port: int, work: Path, hold_s: int) -> subprocess.Popen:
    argv = [
        "taskset", "-c", bench.LOAD_CORE, str(bench.TARGET_DIR / "bench-hold"), mode,
        "--target", f"127.0.0.1:{port}",
        "--connections", str(connections),
        "--header", f"authorization: Bearer {bench.GATEWAY_KEY}",
        "--body-file", str(work / f"{body}.json"),
        "--hold", f"{hold_s}s",
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=bench.raise_fd_limit)


def probe(port: int, path: str) -> tuple[bool, float]:
    """One GET on a new connection: whether it got 200, and how long it took (ms)."""
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", path)
        ok = connection.getresponse().status == 200
        connection.close()
    except OSError:
        ok = False
    return ok, (time.perf_counter() - started) * 1000


class Prober(threading.Thread):
    """Probes `path` every 100 ms until stopped."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.results: list[tuple[bool, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.results.append(probe(self.port, self.path))
            time.sleep(0.1)

    def summary(self) -> str:
        latencies = sorted(ms for _, ms in self.results)
        failed = sum(1 for ok, _ in self.results if not ok)
        if not latencies:
            return f"{self.path}: no probes"
        p50 = latencies[len(latencies) // 2]
        return (f"{self.path}: {len(self.results)} probes, {failed} failed, "
                f"p50 {p50:.1f} ms, max {latencies[-1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="scale both connection counts")
    parser.add_argument("--hold", type=int, default=10, help="seconds to hold everything")
    args = parser.parse_args()
    idle = max(1, int(10_000 * args.scale))
    streams = max(1, int(1_000 * args.scale))

    with tempfile.TemporaryDirectory(prefix="switchboard-held-") as tmp:
        work = Path(tmp)
        for name, body in bench.BODIES.items():
            (work / f"{name}.json").write_text(bench.json.dumps(body))
        direct, upstream = bench.start_upstream(work)
        proxy = bench.start_switchboard(work, direct.port)
        assert proxy.service
        metrics_port = 9091  # start_switchboard leaves the proxy's default
        try:
            ok, _ = probe(proxy.port, "/readyz")
            assert ok, "the proxy is not ready"
            before = proxy.service.rss_mib()
            # Streams first: the idle holder's 10,000 set-ups would delay their start.
            hold_s = args.hold + 30
            holders = [
                holder("streams", "slow-stream", streams, proxy.port, work, hold_s),
                holder("idle", "chat", idle, proxy.port, work, hold_s),
            ]
            held = []
            for h in holders:
                assert h.stdout
                ready = h.stdout.readline().split()
                if not ready or ready[0] != "ready":
                    sys.exit(f"bench-hold failed: {h.stderr.read() if h.stderr else ''}")
                held.append((int(ready[1]), int(ready[2])))
            probers = [Prober(proxy.port, "/healthz"), Prober(proxy.port, "/readyz"),
                       Prober(metrics_port, "/metrics")]
            for p in probers:
                p.start()
            time.sleep(args.hold)
            during = proxy.service.rss_mib()
            for p in probers:
                p.stop.set()
                p.join()
            for h in holders:
                h.kill()
                h.wait(30)
            time.sleep(1)
            after_ok = any(probe(proxy.port, "/readyz")[0] for _ in range(20))
            print(f"held: {held[1][0]} idle ({held[1][1]} failed), {held[0][0]} streams ({held[0][1]} failed)")
            print(f"proxy RSS: {before:.1f} MiB before, {during:.1f} MiB while held, "
                  f"peak {proxy.service.peak_rss_mib():.1f} MiB")
            for p in probers:
                print(p.summary())
            print(f"serving after: {'yes' if after_ok else 'NO'}")
        finally:
            proxy.service.stop()
            upstream.stop()


if __name__ == "__main__":
    main()

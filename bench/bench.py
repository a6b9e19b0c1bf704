#!/usr/bin/env python3
"""Switchboard benchmark: direct-to-upstream, nginx and Switchboard, measured in one run.

Run it with bench/run.sh (which installs the tools and builds the binaries); see
bench/README.md for what is measured, how, and the performance budget.

`--also NAME=BINARY` measures another switchboard-proxy build beside this one, in the
same rounds (before and after a change). To add a target, write a function returning a
Target (see start_targets). To add a
scenario, append to SCENARIOS (latency at a rate, throughput at a concurrency) or to
HOLD_SCENARIOS (memory with many connections held open).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"

# Two cores: the proxy under test gets one, the upstream and the load generator the other.
PROXY_CORE = "1"
LOAD_CORE = "0"

GATEWAY_KEY = "sk-bench-gateway-key-7f3c9a1e"
PROVIDER_KEY = "sk-bench-provider-key-51d0b2"
PATH = "/v1/chat/completions"

# The same bodies go to every target. A typical short chat request: a system prompt and a
# question. Streams do not ask for usage, so Switchboard must add stream_options to meter
# them and drop the extra chunk: its real work, not a shortcut.
MESSAGES = [
    {
        "role": "system",
        "content": "You are a support assistant for an online bookshop. Answer in one or two "
        "sentences, politely, and say so when you do not know.",
    },
    {
        "role": "user",
        "content": "My order #48213 shows as shipped but the tracking link says the label was "
        "created three days ago and nothing since. Should I be worried?",
    },
]
BODIES = {
    "chat": {"model": "bench", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 200},
    "stream": {"model": "bench", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 200, "stream": True},
    "slow-stream": {"model": "bench-slow", "messages": MESSAGES, "stream": True},
}


# --- scenarios ---------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    """One oha run per target: open-loop at `rate` requests/s, or closed-loop at
    `concurrency` as fast as possible (rate None)."""

    name: str
    body: str
    concurrency: int
    rate: int | None = None


SCENARIOS = [
    Scenario("unloaded", "chat", concurrency=4, rate=100),
    Scenario("500 rps", "chat", concurrency=32, rate=500),
    Scenario("1000 rps", "chat", concurrency=64, rate=1000),
    Scenario("2000 rps", "chat", concurrency=128, rate=2000),
    Scenario("stream unloaded", "stream", concurrency=4, rate=100),
    Scenario("stream 1000 rps", "stream", concurrency=64, rate=1000),
    Scenario("max c=32", "chat", concurrency=32),
    Scenario("max c=256", "chat", concurrency=256),
]


@dataclass(frozen=True)
class HoldScenario:
    """Memory of a proxy with `connections` clients held open by bench-hold."""

    name: str
    mode: str  # bench-hold's mode: idle | streams
    body: str
    connections: int


HOLD_SCENARIOS = [
    HoldScenario("10k idle keep-alive", "idle", "chat", 10_000),
    HoldScenario("1k slow streams", "streams", "slow-stream", 1_000),
]


# --- processes ---------------------------------------------------------------------

def raise_fd_limit() -> None:
    """Lets a child hold 10,000+ connections."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited with {process.returncode}; see its log in the work directory")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{name} did not listen on port {port} within {timeout}s")


def descendants(pid: int) -> list[int]:
    """`pid` and its children (nginx's master and its worker)."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for child in children:
                pids.extend(descendants(int(child)))
    except OSError:
        pass
    return pids


def status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid`, from the scheduler's nanosecond counters
    (/proc/*/stat counts in 10 ms ticks, too coarse for short runs)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # the thread ended meanwhile
    return total / 1e9


@dataclass
class Service:
    name: str
    process: subprocess.Popen

    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def rss_mib(self) -> float:
        return sum(status_kib(p, "VmRSS") for p in self.pids()) / 1024

    def peak_rss_mib(self) -> float:
        return sum(status_kib(p, "VmHWM") for p in self.pids()) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, argv: list[str], core: str, port: int, work: Path,
          env: dict[str, str] | None = None) -> Service:
    log = open(work / f"{name}.log", "wb")
    process = subprocess.Popen(
        ["taskset", "-c", core, *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=raise_fd_limit,
        cwd=work,
        # Production settings, not the developer's: no RUST_BACKTRACE or RUST_LOG.
        env={k: v for k, v in os.environ.items() if not k.startswith("RUST_")} | (env or {}),
    )
    wait_for_port(port, process, name)
    return Service(name, process)


# --- targets -----------------------------------------------------------------------

@dataclass
class Target:
    """Something oha sends requests to. `service` is the proxy under test (None for the
    upstream itself), whose CPU and memory are measured."""

    name: str
    port: int
    service: Service | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"


NGINX_CONF = """\
# The reference: a plain reverse proxy, configured as one would for LLM traffic
# (no buffering, so server-sent events pass at once; keep-alive to the upstream).
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
    access_log {work}/nginx-access.log;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    upstream provider {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://provider;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""

MANIFESTS = """\
# The benchmark's gateway: one openai-compatible provider (the fake upstream), a route
# per model and one consumer key. Access logs go to a file, as nginx's do.
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: upstream}}
spec:
  type: openai-compatible
  endpoint: http://127.0.0.1:{upstream_port}/v1
  auth: {{secretRef: {{name: upstream, key: apiKey}}}}
  models:
    - name: bench
      pricing: {{inputPerMillion: 2.5, outputPerMillion: 10}}
    - name: bench-slow
  timeouts: {{connect: 2s, request: 300s}}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {{name: bench}}
spec:
  models: [bench]
  backends: [{{provider: upstream, model: bench}}]
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {{name: bench-slow}}
spec:
  models: [bench-slow]
  backends: [{{provider: upstream, model: bench-slow}}]
---
apiVersion: switchboard.dev/v1alpha1
kind: AIConsumer
metadata: {{name: bench}}
spec:
  keys: [{{secretRef: {{name: bench-key, key: key}}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: upstream}}
stringData: {{apiKey: {provider_key}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-key}}
stringData: {{key: {gateway_key}}}
"""


def start_upstream(work: Path) -> tuple[Target, Service]:
    port = free_port()
    service = start(
        "upstream",
        [str(TARGET_DIR / "bench-upstream"), "--listen", f"127.0.0.1:{port}"],
        LOAD_CORE,
        port,
        work,
    )
    # Direct requests measure the upstream and load generator alone: nothing under test.
    return Target("direct", port, None), service


def start_nginx(work: Path, upstream_port: int) -> Target:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, upstream_port=upstream_port))
    service = start("nginx", ["nginx", "-c", str(conf), "-e", str(work / "nginx-error.log")], PROXY_CORE, port, work)
    return Target("nginx", port, service)


def start_switchboard(work: Path, upstream_port: int, name: str = "switchboard",
                      binary: Path | None = None) -> Target:
    """The proxy under test; `name` and `binary` for another build beside it (`--also`)."""
    port = free_port()
    manifests = work / f"manifests-{name}"
    manifests.mkdir()
    (manifests / "gateway.yaml").write_text(
        MANIFESTS.format(upstream_port=upstream_port, provider_key=PROVIDER_KEY, gateway_key=GATEWAY_KEY)
    )
    service = start(
        name,
        [
            str(binary or TARGET_DIR / "switchboard-proxy"),
            "--manifests", str(manifests),
            "--listen", f"127.0.0.1:{port}",
            "--log-format", "json",
            # Metrics stay on; each proxy on a port of its own.
            "--metrics-listen", f"127.0.0.1:{free_port()}",
        ],
        PROXY_CORE,
        port,
        work,
    )
    return Target(name, port, service)


AGENTGATEWAY_CONF = """\
# agentgateway as an AI gateway in front of the fake upstream: its OpenAI provider for
# every model (it reads the model, the usage and streams), one worker thread, request
# log on (JSON, to the log file), metrics on their own port as always.
config:
  enableIpv6: false
  adminAddr: 127.0.0.1:{admin_port}
  statsAddr: 127.0.0.1:{stats_port}
  readinessAddr: 127.0.0.1:{readiness_port}
  workerThreads: 1
  logging:
    level: info
gateways:
  default:
    port: {port}
llm:
  models:
  - name: "*"
    provider: openAI
    params:
      baseUrl: http://127.0.0.1:{upstream_port}
      apiKey: {provider_key}
"""


def start_agentgateway(work: Path, upstream_port: int, binary: Path) -> Target:
    """agentgateway, built from source outside this repository (`--agentgateway`). It
    binds its gateway port on every address (it has no listen-address setting); the
    load still comes from 127.0.0.1. It checks no client key: Switchboard's
    authentication is work agentgateway does not do here."""
    port = free_port()
    conf = work / "agentgateway.yaml"
    conf.write_text(AGENTGATEWAY_CONF.format(
        port=port, upstream_port=upstream_port, provider_key=PROVIDER_KEY,
        admin_port=free_port(), stats_port=free_port(), readiness_port=free_port(),
    ))
    env = {"WORKER_THREADS": "1", "LOG_FORMAT": "json"}
    service = start("agentgateway", [str(binary), "-f", str(conf)], PROXY_CORE, port, work, env)
    return Target("agentgateway", port, service)


# --- measuring ---------------------------------------------------------------------

@dataclass
class Run:
    """One oha run against one target."""

    requests: int
    errors: int
    rps: float
    latency_ms: dict[str, float]  # p50, p90, p99, p99.9
    first_byte_ms: dict[str, float]
    cpu_us_per_request: float | None


PERCENTILES = ["p50", "p90", "p99", "p99.9"]


def oha(target: Target, scenario: Scenario, seconds: float, work: Path) -> Run:
    argv = [
        "taskset", "-c", LOAD_CORE, "oha",
        "--no-tui", "--output-format", "json", "--worker-threads", "1",
        "-z", f"{seconds}s", "-w",
        "-c", str(scenario.concurrency),
        "-m", "POST", "-T", "application/json",
        "-H", f"authorization: Bearer {GATEWAY_KEY}",
        "-D", str(work / f"{scenario.body}.json"),
    ]
    if scenario.rate:
        argv += ["-q", str(scenario.rate), "--latency-correction"]
    argv.append(target.url)
    cpu_before = target.service.cpu_seconds() if target.service else 0.0
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    cpu_after = target.service.cpu_seconds() if target.service else 0.0
    report = json.loads(out)
    ok = sum(n for code, n in report["statusCodeDistribution"].items() if code.startswith("2"))
    failed = sum(n for code, n in report["statusCodeDistribution"].items() if not code.startswith("2"))
    failed += sum(n for why, n in report["errorDistribution"].items() if "deadline" not in why)
    as_ms = lambda table: {p: (table.get(p) or 0.0) * 1000 for p in PERCENTILES}  # noqa: E731
    return Run(
        requests=ok,
        errors=failed,
        rps=ok / report["summary"]["total"],
        latency_ms=as_ms(report["latencyPercentiles"]),
        first_byte_ms=as_ms(report["firstBytePercentiles"]),
        cpu_us_per_request=(cpu_after - cpu_before) / ok * 1e6 if target.service and ok else None,
    )


def median_run(runs: list[Run]) -> Run:
    med = statistics.median
    cpu = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
    return Run(
        requests=int(med(r.requests for r in runs)),
        errors=sum(r.errors for r in runs),
        rps=med(r.rps for r in runs),
        latency_ms={p: med(r.latency_ms[p] for r in runs) for p in PERCENTILES},
        first_byte_ms={p: med(r.first_byte_ms[p] for r in runs) for p in PERCENTILES},
        cpu_us_per_request=med(cpu) if cpu else None,
    )


@dataclass
class Held:
    connections: int
    failed: int
    closed_while_held: int
    rss_mib: float


def hold(target: Target, scenario: HoldScenario, connections: int, work: Path) -> Held:
    """Opens the connections, reads the proxy's memory while they are held, lets go."""
    assert target.service
    argv = [
        "taskset", "-c", LOAD_CORE, str(TARGET_DIR / "bench-hold"), scenario.mode,
        "--target", f"127.0.0.1:{target.port}",
        "--connections", str(connections),
        "--header", f"authorization: Bearer {GATEWAY_KEY}",
        "--body-file", str(work / f"{scenario.body}.json"),
        "--hold", "3s",
    ]
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_fd_limit)
    assert holder.stdout
    ready = holder.stdout.readline().split()
    if not ready or ready[0] != "ready":
        holder.kill()
        sys.exit(f"bench-hold failed against {target.name}: {holder.stderr.read() if holder.stderr else ''}")
    time.sleep(1.5)  # let the proxy settle with everything in place
    rss = target.service.rss_mib()
    done = holder.stdout.readline().split()
    holder.wait(30)
    return Held(
        connections=int(ready[1]),
        failed=int(ready[2]),
        closed_while_held=int(done[2]) if len(done) > 2 else 0,
        rss_mib=rss,
    )


# --- the run -----------------------------------------------------------------------

@dataclass
class Results:
    runs: dict[str, dict[str, Run]] = field(default_factory=dict)  # scenario -> target -> run
    held: dict[str, dict[str, Held]] = field(default_factory=dict)
    rss_after_warmup: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float] = field(default_factory=dict)


def run_all(args: argparse.Namespace, work: Path) -> Results:
    for name, body in BODIES.items():
        (work / f"{name}.json").write_text(json.dumps(body))
    direct, upstream = start_upstream(work)
    targets = [direct]
    try:
        targets.append(start_nginx(work, direct.port))
        targets.append(start_switchboard(work, direct.port))
        for name, binary in args.also:
            targets.append(start_switchboard(work, direct.port, name, binary))
        if args.agentgateway:
            targets.append(start_agentgateway(work, direct.port, args.agentgateway))
        return measure(args, work, targets)
    finally:
        for target in targets:
            if target.service:
                target.service.stop()
        upstream.stop()


def measure(args: argparse.Namespace, work: Path, targets: list[Target]) -> Results:
    results = Results()
    proxies = [t for t in targets if t.service]
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    warmup = Scenario("warm-up", "chat", concurrency=32)
    for target in targets:
        oha(target, warmup, args.warmup * 2, work)
        oha(target, Scenario("warm-up", "stream", concurrency=32), args.warmup, work)

    for index, scenario in enumerate(scenarios):
        runs: dict[str, list[Run]] = {t.name: [] for t in targets}
        for round_ in range(args.rounds):
            # Alternate which proxy goes first, so neither always follows the other.
            order = [targets[0], *(proxies if (index + round_) % 2 == 0 else proxies[::-1])]
            for target in order:
                oha(target, scenario, args.warmup, work)  # warm-up, discarded
                run = oha(target, scenario, args.duration, work)
                runs[target.name].append(run)
                progress(scenario.name, target.name, run)
        results.runs[scenario.name] = {name: median_run(r) for name, r in runs.items()}

    for target in proxies:
        assert target.service
        results.rss_after_warmup[target.name] = target.service.rss_mib()
        results.peak_rss[target.name] = target.service.peak_rss_mib()

    for scenario in HOLD_SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        results.held[scenario.name] = {}
        count = max(1, int(scenario.connections * args.hold_scale))
        for target in proxies:
            held = hold(target, scenario, count, work)
            results.held[scenario.name][target.name] = held
            print(f"  {scenario.name:<22} {target.name:<12} {held.connections} held, "
                  f"{held.failed} failed, RSS {held.rss_mib:.1f} MiB", file=sys.stderr)
            time.sleep(2)  # let the connections close before the next target
    return results


def progress(scenario: str, target: str, run: Run) -> None:
    cpu = f"{run.cpu_us_per_request:.1f} µs CPU/req" if run.cpu_us_per_request is not None else ""
    print(
        f"  {scenario:<22} {target:<12} {run.rps:>9.0f} rps  p50 {run.latency_ms['p50']:.3f} ms  "
        f"p99 {run.latency_ms['p99']:.3f} ms  errors {run.errors}  {cpu}",
        file=sys.stderr,
    )


# --- reporting ---------------------------------------------------------------------

BUDGET_ADDED_P50_RATIO = 1.5
BUDGET_ADDED_P99_MS = 0.5
BUDGET_THROUGHPUT_RPS = 20_000
BUDGET_CPU_US = 50
BUDGET_TTFB_RATIO = 1.5
BUDGET_RSS_MIB = 30


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "–"
    return f"{ours / theirs:.2f}x"


def added(results: Results, scenario: str, target: str, percentile: str, first_byte: bool = False) -> float | None:
    runs = results.runs.get(scenario, {})
    if target not in runs or "direct" not in runs:
        return None
    table = "first_byte_ms" if first_byte else "latency_ms"
    return getattr(runs[target], table)[percentile] - getattr(runs["direct"], table)[percentile]


def report(results: Results, machine: dict[str, str], args: argparse.Namespace) -> str:
    lines: list[str] = []
    out = lines.append
    out(f"# Switchboard benchmark, {machine['date']}")
    out("")
    for key, value in machine.items():
        out(f"- {key}: {value}")
    out(f"- settings: {args.duration}s per measurement after {args.warmup}s warm-up, "
        f"{args.rounds} round(s) (median), proxies pinned to core {PROXY_CORE}, "
        f"upstream and oha to core {LOAD_CORE}")
    out("")

    def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
        """A markdown table; the first two columns are text, the rest numbers."""
        if not rows:
            return
        out(f"## {title}")
        out("")
        out("| " + " | ".join(columns) + " |")
        out("|---|---|" + "---:|" * (len(columns) - 2))
        for row in rows:
            out("| " + " | ".join(row) + " |")
        out("")

    table(
        "Latency at fixed open-loop rates (ms, oha with latency correction)",
        ["scenario", "target", "p50", "p90", "p99", "p99.9", "added p50", "added p99", "TTFB p50", "rps",
         "errors", "CPU µs/req"],
        [
            [scenario.name, target, fmt(run.latency_ms["p50"]), fmt(run.latency_ms["p90"]),
             fmt(run.latency_ms["p99"]), fmt(run.latency_ms["p99.9"]),
             fmt(added(results, scenario.name, target, "p50")), fmt(added(results, scenario.name, target, "p99")),
             fmt(run.first_byte_ms["p50"]), f"{run.rps:.0f}", str(run.errors), fmt(run.cpu_us_per_request, 1)]
            for scenario in SCENARIOS if scenario.rate and scenario.name in results.runs
            for target, run in results.runs[scenario.name].items()
        ],
    )
    table(
        "Maximum throughput at fixed concurrency (closed loop)",
        ["scenario", "target", "rps", "p50 ms", "p99 ms", "p99.9 ms", "errors", "CPU µs/req"],
        [
            [scenario.name, target, f"{run.rps:.0f}", fmt(run.latency_ms["p50"]), fmt(run.latency_ms["p99"]),
             fmt(run.latency_ms["p99.9"]), str(run.errors), fmt(run.cpu_us_per_request, 1)]
            for scenario in SCENARIOS if not scenario.rate and scenario.name in results.runs
            for target, run in results.runs[scenario.name].items()
        ],
    )

    proxies = list(results.rss_after_warmup)
    if proxies:
        out("## Memory of the proxy (MiB)")
        out("")
        held_names = list(results.held)
        out("| target | RSS after warm-up | peak RSS under load | " + " | ".join(f"RSS with {n}" for n in held_names) + " |")
        out("|---|---:|---:|" + "---:|" * len(held_names))
        for target in proxies:
            cells = []
            for name in held_names:
                held = results.held[name].get(target)
                if held is None:
                    cells.append("–")
                    continue
                note = f" ({held.connections} held, {held.failed} failed, {held.closed_while_held} closed)" \
                    if held.failed or held.closed_while_held else ""
                cells.append(f"{held.rss_mib:.1f}{note}")
            out(f"| {target} | {results.rss_after_warmup[target]:.1f} | {results.peak_rss[target]:.1f} | "
                + " | ".join(cells) + " |")
        out("")
        out("nginx's figures are its master and worker processes together.")
        out("")

    out("## Switchboard against nginx")
    out("")
    out("| figure | nginx | switchboard | ratio |")
    out("|---|---:|---:|---:|")
    rated = [s.name for s in SCENARIOS if s.rate and s.name in results.runs]
    for scenario in rated:  # "added" means nothing in closed loop, where the load generator paces
        for percentile in ("p50", "p99"):
            n, s = added(results, scenario, "nginx", percentile), added(results, scenario, "switchboard", percentile)
            out(f"| added {percentile} latency, {scenario} (ms) | {fmt(n)} | {fmt(s)} | {ratio(s, n)} |")
    for scenario in results.runs:
        runs = results.runs[scenario]
        if "nginx" in runs and "switchboard" in runs and not next(s for s in SCENARIOS if s.name == scenario).rate:
            out(f"| throughput, {scenario} (rps) | {runs['nginx'].rps:.0f} | {runs['switchboard'].rps:.0f} "
                f"| {ratio(runs['switchboard'].rps, runs['nginx'].rps)} |")
            n, s = runs["nginx"].cpu_us_per_request, runs["switchboard"].cpu_us_per_request
            out(f"| CPU per request, {scenario} (µs) | {fmt(n, 1)} | {fmt(s, 1)} | {ratio(s, n)} |")
    if "nginx" in results.rss_after_warmup and "switchboard" in results.rss_after_warmup:
        n, s = results.rss_after_warmup["nginx"], results.rss_after_warmup["switchboard"]
        out(f"| RSS after warm-up (MiB) | {n:.1f} | {s:.1f} | {ratio(s, n)} |")
    out("")

    out("## Budget (bench/README.md)")
    out("")
    out("| check | budget | measured | result |")
    out("|---|---|---|---|")
    for check, budget, measured, ok in budget_checks(results):
        verdict = "–" if ok is None else ("pass" if ok else "**MISS**")
        out(f"| {check} | {budget} | {measured} | {verdict} |")
    out("")
    return "\n".join(lines)


def budget_checks(results: Results):
    """(check, budget, measured, ok) for every budget line that this run measured."""
    def added_ratio_check(scenario: str, percentile: str, first_byte: bool, label: str, limit: float):
        n = added(results, scenario, "nginx", percentile, first_byte)
        s = added(results, scenario, "switchboard", percentile, first_byte)
        if n is None or s is None:
            return (label, f"≤ {limit}x nginx's", "not measured", None)
        # Within the noise of the clock, both adding nothing is a pass.
        ok = s <= limit * max(n, 0.01)
        return (label, f"≤ {limit}x nginx's", f"{s:.3f} ms vs {n:.3f} ms ({ratio(s, n)})", ok)

    yield added_ratio_check("unloaded", "p50", False, "added p50 latency, unloaded", BUDGET_ADDED_P50_RATIO)
    yield added_ratio_check("2000 rps", "p50", False, "added p50 latency at 2,000 rps", BUDGET_ADDED_P50_RATIO)
    s = added(results, "2000 rps", "switchboard", "p99")
    yield ("added p99 latency at 2,000 rps", f"< {BUDGET_ADDED_P99_MS} ms",
           "not measured" if s is None else f"{s:.3f} ms", None if s is None else s < BUDGET_ADDED_P99_MS)
    best = max((runs["switchboard"] for name, runs in results.runs.items()
                if name.startswith("max") and "switchboard" in runs), key=lambda r: r.rps, default=None)
    yield ("maximum throughput on one core", f"≥ {BUDGET_THROUGHPUT_RPS:,} rps",
           "not measured" if best is None else f"{best.rps:,.0f} rps", None if best is None else best.rps >= BUDGET_THROUGHPUT_RPS)
    cpu = best.cpu_us_per_request if best else None
    yield ("CPU per request at maximum throughput", f"≤ {BUDGET_CPU_US} µs",
           "not measured" if cpu is None else f"{cpu:.1f} µs", None if cpu is None else cpu <= BUDGET_CPU_US)
    yield added_ratio_check("stream unloaded", "p50", True, "added time to first streamed byte (p50)", BUDGET_TTFB_RATIO)
    rss = results.rss_after_warmup.get("switchboard")
    yield ("RSS after warm-up", f"< {BUDGET_RSS_MIB} MiB",
           "not measured" if rss is None else f"{rss:.1f} MiB", None if rss is None else rss < BUDGET_RSS_MIB)


def machine_description() -> dict[str, str]:
    def command(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = status_kib_from("/proc/meminfo", "MemTotal")
    revision = command("git", "rev-parse", "--short=12", "HEAD")
    if command("git", "status", "--porcelain", "--untracked-files=no") not in ("", "unknown"):
        revision += " (with uncommitted changes)"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": revision,
        "machine": f"{cpu}, {os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, Linux {platform.release()}",
        "tools": f"{command('nginx', '-v')}; {command('oha', '--version')}; {command('rustc', '--version')}",
    }


def status_kib_from(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def also_target(value: str) -> tuple[str, Path]:
    name, _, binary = value.partition("=")
    if not name or not binary or name in ("direct", "nginx", "switchboard"):
        raise argparse.ArgumentTypeError(f"expected NAME=BINARY with a new name, got {value!r}")
    return name, executable(binary)


def executable(path: str) -> Path:
    if not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError(f"{path} is not an executable")
    return Path(path).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of discarded warm-up before each (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="measure each scenario this many times, report the median")
    parser.add_argument("--hold-scale", type=float, default=1.0, help="scale the held connection counts (smoke runs)")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 s measurements, 1/10 of the held connections")
    parser.add_argument("--save", action="store_true", help="write the report to bench/results/<date>-<revision>.md")
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory (logs, configs)")
    parser.add_argument("--also", action="append", default=[], type=also_target, metavar="NAME=BINARY",
                        help="measure another switchboard-proxy build beside this one, in the same rounds "
                             "(before/after a change; repeatable)")
    parser.add_argument("--agentgateway", type=executable, metavar="BINARY",
                        help="also measure agentgateway, built from source outside this repository "
                             "(see bench/README.md)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.hold_scale = 1, 0.5, 0.1
    if os.cpu_count() is None or os.cpu_count() < 2:
        sys.exit("the benchmark needs two cores: one for the proxy, one for the upstream and load generator")
    for tool in ("oha", "nginx", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed; run bench/run.sh, which installs it")

    work = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    work.chmod(0o755)  # nginx's worker runs as an unprivileged user when started as root
    print(f"work directory: {work}", file=sys.stderr)
    try:
        results = run_all(args, work)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    machine = machine_description()
    text = report(results, machine, args)
    print(text)
    if args.save:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
        path = BENCH / "results" / f"{stamp}-{machine['revision'].split()[0]}.md"
        path.write_text(text + "\n")
        print(f"saved {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

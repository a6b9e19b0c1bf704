#!/usr/bin/env python3
"""The instruction-count guard: user-space instructions per proxied request, counted with
callgrind, against a committed baseline (bench/instructions.json).

Time on a shared machine moves by tens of percent between runs; instruction counts do
not, so a slowdown in the proxy's own code shows here as a number that grew. For each
scenario the release proxy runs under `valgrind --tool=callgrind` (every thread of the
proxy, nothing else: the client is this script and the upstream is bench-upstream,
neither under valgrind) with metrics on and the JSON access log on (stdout to
/dev/null). One client sends N requests one after another on one keep-alive
connection; the proxy is stopped with SIGTERM (it drains) and callgrind's total Ir is
read from its output file. Two runs per scenario, N_SMALL and N_LARGE requests, and

    per request = (Ir(N_LARGE) - Ir(N_SMALL)) / (N_LARGE - N_SMALL)

so start-up, the first request's one-time work (the upstream connection, lazy
statics) and shutdown cancel out.

    python3 bench/instructions.py            # --check: fail when a count grew > 10%
    python3 bench/instructions.py --update   # rewrite the baseline, median of 5 runs
                                             # (commit it with the change that
                                             # explains it)

Builds nothing: takes switchboard-proxy and bench-upstream from TARGET_DIR/release, built
as scripts/test.sh builds them (BUILD below). Python 3 stdlib only; needs valgrind.
Everything on 127.0.0.1, on free ports; every process it starts is killed when it
exits, whatever the reason. 20-45 s on two busy cores (--update: 2-2.5 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import http.client
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The build the baseline was measured on (features are unified over the packages built
# together, so build the same set).
BUILD = "cargo build --release --locked -p switchboard-proxy -p switchboard-operator -p switchboard-bench"
BASELINE = ROOT / "bench" / "instructions.json"

# A count more than this much over its baseline fails --check.
GROWTH_LIMIT = 0.10
# A count this much under its baseline is fine, but worth an --update (or the guard
# lets the next regression of that size through unnoticed).
DROP_NOTE = 0.10

# Requests in the two runs of a scenario. Start-up (about 76 million instructions, most
# of it compiling the manifests and loading root certificates) differs between runs by
# up to 70,000 (random hash seeds, timestamps): about 140 per request once divided by
# 500, under 0.1%. N_SMALL is past the first requests' one-time work; 500 more
# requests take 1-3 s under callgrind, next to 3.5 s for start-up and shutdown.
N_SMALL = 20
N_LARGE = 520

# One thread (--worker-threads 1: the current-thread runtime). With the default (one
# multi-thread worker per core, two here), counts were 1.5-2.6%
# higher and spread 0.6-0.8% over four runs instead of 0.2-0.3% (workers waking,
# stealing and parking each other a varying number of times); the request's own work
# is the same either way.
WORKER_THREADS = "1"

# A scenario over the limit is measured this many more times and judged on the median,
# so one unlucky run does not fail a build.
CONFIRM_RUNS = 2

# A new baseline is the median of this many runs per scenario (2-2.5 minutes).
UPDATE_RUNS = 5

# What the counts depend on besides the code; recorded with the baseline.
SETTINGS = {"SWITCHBOARD_WORKER_THREADS": int(WORKER_THREADS), "n_small": N_SMALL, "n_large": N_LARGE}

# Wall-clock bounds (seconds). Under callgrind the proxy is about 50 times slower.
START_TIMEOUT = 60
REQUEST_TIMEOUT = 30
STOP_TIMEOUT = 60
# The whole run, per run of each scenario: a check (one run, two more for a scenario over
# the limit) takes 20-45 s here; the deadline bounds it whatever happens.
DEFAULT_DEADLINE = 170

GATEWAY_KEY = "sk-instr-consumer-key-0001"
UPSTREAM_KEY = "sk-upstream-instr"

# bench/common.sh's gateway: an openai-compatible provider (bench-upstream) serving the
# priced model `m`, route `r`, consumer `c`.
MANIFESTS = """\
apiVersion: v1
kind: Secret
metadata: {{name: up}}
stringData: {{key: {upstream_key}}}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {{name: up}}
spec:
  type: openai-compatible
  endpoint: http://127.0.0.1:{upstream_port}/v1
  auth: {{secretRef: {{name: up, key: key}}}}
  models: [{{name: m, pricing: {{inputPerMillion: 1, outputPerMillion: 2}}}}]
---
apiVersion: switchboard.dev/v1alpha1
kind: AIConsumer
metadata: {{name: c}}
spec:
  keys: [{{secretRef: {{name: ck, key: key}}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: ck}}
stringData: {{key: {gateway_key}}}
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {{name: r}}
spec:
  models: [m]
  backends: [{{provider: up, model: m}}]
"""

# The benchmark's request (bench/bench.py): a system prompt and a question.
SYSTEM = (
    "You are a support assistant for an online bookshop. Answer in one or two "
    "sentences, politely, and say so when you do not know."
)
QUESTION = (
    "My order #48213 shows as shipped but the tracking link says the label was "
    "created three days ago and nothing since. Should I be worried?"
)
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    path: str
    headers: dict[str, str]
    body: bytes
    # The kind of answer expected: "chat", "stream" or "anthropic".
    answered: str

    def ok(self, answer: bytes) -> bool:
        """Whether `answer` is a whole, proxied answer (not an error)."""
        if self.answered == "chat":
            return b'"chat.completion"' in answer and b'"usage"' in answer
        if self.answered == "stream":
            # Every chunk relayed, [DONE] at the end, and the usage chunk the proxy
            # asked for removed (the client did not ask for it).
            return (
                answer.count(b"data: ") == 11
                and answer.rstrip().endswith(b"data: [DONE]")
                and b'"prompt_tokens"' not in answer
            )
        return b'"type":"message"' in answer and b'"end_turn"' in answer


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


OPENAI_HEADERS = {"authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json"}
SCENARIOS = [
    Scenario(
        "chat",
        "POST /v1/chat/completions, passed through to an openai-compatible provider",
        "/v1/chat/completions",
        OPENAI_HEADERS,
        _json({"model": "m", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 200}),
        "chat",
    ),
    Scenario(
        "stream",
        "the same with stream: true (usage requested upstream, read, removed)",
        "/v1/chat/completions",
        OPENAI_HEADERS,
        _json({"model": "m", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 200, "stream": True}),
        "stream",
    ),
    Scenario(
        "anthropic",
        "POST /v1/messages to the same provider, translated both ways",
        "/v1/messages",
        {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"},
        _json(
            {
                "model": "m",
                "max_tokens": 200,
                "system": SYSTEM,
                "messages": [{"role": "user", "content": QUESTION}],
                "temperature": 0.2,
            }
        ),
        "anthropic",
    ),
]


class Failure(Exception):
    """A measurement that could not be made (not a regression)."""


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self, cap: float) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise Failure(f"gave up: the whole run took more than {self.seconds:.0f} s")
        return min(cap, left)


# --- processes ---------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []


def die_with_parent() -> None:
    """In the child: SIGKILL when this script dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    # Its own process group, so that stopping it stops anything it started.
    process = subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent, **kwargs)
    STARTED.append(process)
    return process


def kill_all() -> None:
    for process in STARTED:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    STARTED.clear()


def on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream(binary: Path, deadline: Deadline) -> tuple[subprocess.Popen, int]:
    # Port 0: bench-upstream prints the address it got.
    process = spawn(
        [str(binary), "--listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout
    ready, _, _ = select.select([process.stdout], [], [], deadline.left(START_TIMEOUT))
    line = process.stdout.readline().decode() if ready else ""
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not match:
        raise Failure(f"bench-upstream did not start (said {line.strip()!r})")
    return process, int(match.group(1))


def wait_listening(process: subprocess.Popen, port: int, deadline: Deadline, log: Path, stderr: Path) -> None:
    end = time.monotonic() + deadline.left(START_TIMEOUT)
    while time.monotonic() < end:
        if process.poll() is not None:
            raise Failure(
                f"the proxy exited at start ({process.returncode}); its log goes to /dev/null, so run"
                f" it by hand to see why (--keep-work keeps its manifests):"
                f" {' '.join(map(str, process.args))}\n{tail(stderr)}\n{tail(log)}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    deadline.left(1)  # says so if the whole run is out of time
    raise Failure(f"the proxy did not listen on {port} within {START_TIMEOUT} s:\n{tail(stderr)}\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def callgrind_total(path: Path) -> int:
    # `totals:` (or `summary:`) holds the Ir summed over every thread and function.
    total = None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            total = int(line.split()[1])
    if total is None:
        raise Failure(f"no totals in {path}")
    return total


def count(
    proxy: Path, scenario: Scenario, requests: int, upstream_port: int, work: Path, deadline: Deadline
) -> int:
    """Ir of one proxy process, from start to exit, that answered `requests` requests."""
    run = work / f"{scenario.name}-{requests}-{time.monotonic_ns()}"
    manifests = run / "manifests"
    manifests.mkdir(parents=True)
    (manifests / "gateway.yaml").write_text(
        MANIFESTS.format(upstream_port=upstream_port, upstream_key=UPSTREAM_KEY, gateway_key=GATEWAY_KEY)
    )
    out = run / "callgrind.out"
    log = run / "valgrind.log"  # valgrind's messages
    stderr = run / "stderr"  # the proxy's panics, if any (its logs go to stdout)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "OTEL_", "TOKIO_", "RUST_"))}
    env["RUST_LOG"] = "info"  # the access line is written at info
    env["SWITCHBOARD_WORKER_THREADS"] = WORKER_THREADS
    port = free_port()
    argv = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", f"--log-file={log}",
        str(proxy),
        "--manifests", str(manifests),
        "--listen", f"127.0.0.1:{port}",
        "--metrics-listen", "127.0.0.1:0",
        "--log-format", "json",
    ]  # fmt: skip
    with stderr.open("wb") as err:
        process = spawn(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_listening(process, port, deadline, log, stderr)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline.left(REQUEST_TIMEOUT))
        try:
            for i in range(requests):
                conn.request("POST", scenario.path, body=scenario.body, headers=scenario.headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200 or (i == 0 and not scenario.ok(answer)):
                    raise Failure(f"{scenario.name}: answer {response.status}: {answer[:400]!r}")
                if response.will_close:
                    raise Failure(f"{scenario.name}: the proxy closed the keep-alive connection")
                deadline.left(REQUEST_TIMEOUT)
        except (OSError, http.client.HTTPException) as error:
            raise Failure(f"{scenario.name}: request failed: {error!r}\n{tail(stderr)}") from None
        finally:
            conn.close()
        # SIGTERM: the proxy drains and exits, and callgrind writes its file.
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(deadline.left(STOP_TIMEOUT))
        except subprocess.TimeoutExpired:
            raise Failure(f"the proxy did not exit within {STOP_TIMEOUT} s of SIGTERM") from None
        if code != 0:
            raise Failure(f"the proxy exited with {code}:\n{tail(stderr)}\n{tail(log)}")
        return callgrind_total(out)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def per_request(
    proxy: Path, scenario: Scenario, upstream_port: int, work: Path, deadline: Deadline
) -> tuple[float, int, int]:
    small = count(proxy, scenario, N_SMALL, upstream_port, work, deadline)
    large = count(proxy, scenario, N_LARGE, upstream_port, work, deadline)
    return (large - small) / (N_LARGE - N_SMALL), small, large


# --- versions ----------------------------------------------------------------------

def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def built_with(binary: Path) -> str:
    """The rustc that built `binary`, from its .comment section ("rustc version ...")."""
    try:
        data = binary.read_bytes()
    except OSError:
        return "unknown"
    match = re.search(rb"rustc version ([^\x00]+)", data)
    return "rustc " + match.group(1).decode(errors="replace") if match else first_line(["rustc", "--version"])


# --- main --------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with the baseline (the default)")
    mode.add_argument("--update", action="store_true", help="rewrite the baseline file")
    parser.add_argument(
        "--target-dir",
        type=Path,
        default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")),
        help="cargo's target directory (binaries from its release/); default $CARGO_TARGET_DIR or target/ here",
    )
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="default bench/instructions.json")
    parser.add_argument("--only", action="append", choices=[s.name for s in SCENARIOS], help="some scenarios")
    parser.add_argument(
        "--runs", type=int, help=f"measure each scenario N times; the median counts (default 1, {UPDATE_RUNS} with --update)"
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the callgrind files (for callgrind_annotate) and say where"
    )
    parser.add_argument(
        "--deadline", type=float, help=f"give up after this many seconds (default {DEFAULT_DEADLINE} per run)"
    )
    args = parser.parse_args()

    sys.stdout.reconfigure(line_buffering=True)  # in order with stderr in CI logs
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.monotonic()
    runs = max(1, args.runs or (UPDATE_RUNS if args.update else 1))
    deadline = Deadline(args.deadline or DEFAULT_DEADLINE * runs)
    release = args.target_dir / "release"
    proxy, upstream = release / "switchboard-proxy", release / "bench-upstream"
    for binary in (proxy, upstream):
        if not binary.is_file():
            print(f"{binary} is missing; build it first: {BUILD}", file=sys.stderr)
            return 2
    valgrind = first_line(["valgrind", "--version"])
    if valgrind == "unknown":
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    rustc = built_with(proxy)

    baseline: dict = {}
    if args.baseline.is_file():
        baseline = json.loads(args.baseline.read_text())
    elif not args.update:
        print(f"no baseline at {args.baseline}: run with --update to make one", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if args.update and args.only:
        print("--update measures every scenario; drop --only", file=sys.stderr)
        return 2

    old = baseline.get("scenarios", {})
    measured: dict[str, int] = {}
    spreads: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            if args.keep_work:
                work = Path(tempfile.mkdtemp(prefix="switchboard-instr-"))
                print(f"work directory (kept): {work}", file=sys.stderr)
            else:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="switchboard-instr-")))
            _, upstream_port = start_upstream(upstream, deadline)

            def measure(scenario: Scenario, runs: int) -> list[float]:
                values = []
                for _ in range(runs):
                    value, small, large = per_request(proxy, scenario, upstream_port, work, deadline)
                    values.append(value)
                    print(
                        f"  {scenario.name}: Ir {small:,} after {N_SMALL} requests, {large:,} after {N_LARGE}:"
                        f" {value:,.0f} per request",
                        file=sys.stderr,
                        flush=True,
                    )
                return values

            for scenario in scenarios:
                values = measure(scenario, runs)
                base = old.get(scenario.name)
                if not args.update and base and statistics.median(values) > base * (1 + GROWTH_LIMIT):
                    print(f"  {scenario.name}: over the limit; measuring it {CONFIRM_RUNS} more times", file=sys.stderr)
                    values += measure(scenario, CONFIRM_RUNS)
                measured[scenario.name] = round(statistics.median(values))
                if len(values) > 1:
                    spreads[scenario.name] = (
                        f"{(max(values) - min(values)) / statistics.median(values) * 100:.2f}% ({len(values)} runs)"
                    )
    except Failure as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 2
    finally:
        kill_all()

    failed, fell = [], []
    print(f"\n{'scenario':<10} {'instructions/request':>21} {'baseline':>10} {'change':>8}  spread")
    for name, value in measured.items():
        base = old.get(name)
        change = f"{(value - base) / base * 100:+.1f}%" if base else "new"
        shown = f"{base:,}" if base else "-"
        print(f"{name:<10} {value:>21,} {shown:>10} {change:>8}  {spreads.get(name, '')}")
        if base and value > base * (1 + GROWTH_LIMIT):
            failed.append(name)
        if base and value < base * (1 - DROP_NOTE):
            fell.append(name)
    shown_baseline = args.baseline.resolve()
    shown_baseline = shown_baseline.relative_to(ROOT) if shown_baseline.is_relative_to(ROOT) else shown_baseline
    elapsed = time.monotonic() - started
    print(f"\n{valgrind}, {rustc}; {elapsed:.0f} s")
    for key, now in (("valgrind", valgrind), ("rustc", rustc)):
        if baseline.get(key) and baseline[key] != now:
            print(f"note: the baseline was measured with {baseline[key]}; counts may differ by toolchain alone")
    if baseline.get("settings", SETTINGS) != SETTINGS:
        print(f"note: the baseline was measured with other settings ({baseline['settings']}); consider --update")

    if args.update:
        args.baseline.write_text(
            json.dumps(
                {
                    "what": "user-space instructions (callgrind Ir) per proxied request, every thread of the"
                    " release switchboard-proxy; metrics on, JSON access log on (to /dev/null); one"
                    " keep-alive client, requests one after another; bench-upstream (openai-compatible)"
                    " as the provider; per request = (Ir(n_large) - Ir(n_small)) / (n_large - n_small)"
                    f" over two runs, cancelling start-up and shutdown; the median of {runs} such measurements",
                    "date": datetime.date.today().isoformat(),
                    "valgrind": valgrind,
                    "rustc": rustc,
                    "settings": SETTINGS,
                    "scenarios": measured,
                    "descriptions": {s.name: s.what for s in SCENARIOS},
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {shown_baseline}")
        return 0

    for name in fell:
        print(
            f"{name}: {(old[name] - measured[name]) / old[name] * 100:.0f}% fewer instructions than the baseline;"
            " if that is the change you meant, record it: python3 bench/instructions.py --update"
        )
    if failed:
        print(
            f"FAIL: {', '.join(failed)} grew more than {GROWTH_LIMIT * 100:.0f}% over {shown_baseline}."
            " Find the cause (callgrind_annotate on a run, see bench/README.md); if the cost is intended,"
            " update the baseline in the same commit: python3 bench/instructions.py --update",
            file=sys.stderr,
        )
        return 1
    print(f"ok: no scenario grew more than {GROWTH_LIMIT * 100:.0f}% over the baseline")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all()

#!/usr/bin/env python3
"""wasmhive benchmarks: `just bench [SCENARIO...]`.

Scenarios:
  http      the hello route under wasmhive, `wasmtime serve` 48.0.8 (defaults and tuned
            pooling flags) and a native hyper server, alternating, with wrk on loopback.
  coldstart time to first response for hello woken from zero (many wake-ups), next to
            warm requests and to process start of `wasmtime serve` and of wasmhive.
  density   host RSS with 1,000 then 10,000 deployed hello components: loaded, scaled to
            zero, and after touching each once.
  bulkhead  req/s of a fast component alone, then while a slow component is saturated.
  noisy     the latency of a quiet component (hello, one connection) alone and beside a
            component whose 100 admitted invocations spin on the CPU (200 connections),
            with the per-component CPU share on (default) and off (a share larger than the
            machine), alternating.
  mesh      added latency of an in-process component-to-component call, next to calling
            the callee directly over HTTP (one connection, so latency is not queueing).
  kv        key-value get/set/increment ops/s through the kv-store fixture over HTTP, for
            the redb and JetStream backends, next to a route that touches no state.
  messaging messages/s through a trivial handler (core NATS and durable JetStream) next
            to the raw async-nats publish->subscribe rate on the same nats-server.
  edge      the hello route public, then behind a JWT (RS256, ES256, EdDSA, keys cached)
            and an API key, then the same public and RS256 over TLS, alternating.
  ab        the hello route (fresh, serial reuse, WASI 0.3) under two wasmhive release
            binaries alternating: BENCH_BASELINE (e.g. one built from an older commit)
            and this tree's. Not in the default set.
  instr     instructions per request (valgrind callgrind: deterministic, unlike req/s on
            a noisy machine) of wasmhive and `wasmtime serve` in each pair of the http
            scenario, split into guest code and host code. Needs valgrind (apt).

Each scenario prints a markdown table and rewrites its block in docs/BENCHMARKS.md
(between `<!-- bench:NAME -->` markers), with the exact commands that produced it.
Numbers are medians over BENCH_ROUNDS rounds (default 3). The machine is noisy:
compare ratios within one run, not across runs.

Environment: BENCH_DURATION (wrk seconds, default 6), BENCH_CONNECTIONS (default 32),
BENCH_ROUNDS (default 3), WASMTIME (path to wasmtime 48.0.8, default from PATH).
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "components/target/wasm32-wasip2/release"
DOC = ROOT / "docs/BENCHMARKS.md"
DURATION = int(os.environ.get("BENCH_DURATION", "6"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
THREADS = 2
# `wasmtime serve`'s pooling flags from TOOLCHAIN.md (keep-resident memory, tables, stacks).
WASMTIME_TUNED = ["-O", "pooling-allocator", "-O", "pooling-memory-keep-resident=16777216",
                  "-O", "pooling-table-keep-resident=1048576", "-O", "pooling-async-stack-keep-resident=1048576"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def peak_rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk(url, duration=DURATION, threads=THREADS, connections=CONNECTIONS, script=None, headers=()):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        print(f"  warning: {url}: {errors.group(0) if errors else ''} {socket_errors.group(0) if socket_errors else ''}")
    return rps, p50, p99


class Server:
    """A server process started for one measurement."""

    def __init__(self, name, argv, port, env=None, ready_line=None):
        self.name, self.argv, self.port = name, argv, port
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if ready_line else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            text=True,
        )
        if ready_line:
            for line in self.proc.stdout:
                if line.strip() == ready_line:
                    break
        wait_port(port, self.proc)

    def stop(self):
        rss = peak_rss_mib(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss


def render(rows, commands, notes):
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; wrk -t{THREADS} -c{CONNECTIONS} "
        f"-d{DURATION}s on loopback; median of {ROUNDS} alternating rounds.",
        "",
        "| server | req/s | p50 ms | p99 ms | peak RSS MiB | vs first row |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = rows[0][1] if rows else 1
    for name, rps, p50, p99, rss in rows:
        lines.append(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {rss:.0f} | {rps / base:.2f}x |")
    lines += ["", "Commands:", "", "```sh"] + commands + ["```"]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def write_block(name, text):
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        doc = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + f"\n\n{block}\n"
    DOC.write_text(doc)


def measure_rounds(variants):
    """variants: list of (name, start() -> (Server, url)). Alternates them ROUNDS times;
    one row of medians per variant."""
    return medians(variants, measure_rounds_raw(variants))


def measure_rounds_raw(variants):
    """Like measure_rounds; returns each variant's (req/s, p50, p99, rss) per round."""
    results = {name: [] for name, _ in variants}
    for r in range(ROUNDS):
        for name, start in variants:
            server, url = start()
            try:
                wrk(url, duration=1)  # warm up: compile caches, pools, connections
                rps, p50, p99 = wrk(url)
            finally:
                rss = server.stop()
            results[name].append((rps, p50, p99, rss))
            print(f"  round {r + 1} {name}: {rps:,.0f} req/s p50 {p50:.2f} ms p99 {p99:.2f} ms rss {rss:.0f} MiB")
    return results


def medians(variants, results):
    rows = []
    for name, _ in variants:
        runs = results[name]
        rows.append((
            name,
            statistics.median(x[0] for x in runs),
            statistics.median(x[1] for x in runs),
            statistics.median(x[2] for x in runs),
            max(x[3] for x in runs),
        ))
    return rows


def build():
    subprocess.run(["cargo", "build", "--release", "-p", "wasmhive", "-p", "native-hello", "-p", "msgbench"],
                   cwd=ROOT, check=True)


def scenario_http():
    hello = COMPONENTS / "hello.wasm"
    wasmhive = ROOT / "target/release/wasmhive"
    native = ROOT / "target/release/native-hello"
    wasmtime = os.environ.get("WASMTIME") or shutil.which("wasmtime")
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    manifest = data / "hello.toml"
    manifest.write_text(
        f'manifest_version = 1\n[app]\nname = "hello"\nversion = "1.0.0"\n'
        f'[components.hello]\nsource = "{hello}"\nroutes = ["GET /hello"]\n'
    )
    reuse_manifest = data / "hello-reuse.toml"
    reuse_manifest.write_text(
        manifest.read_text() + '[components.hello.instances]\nmax_requests = 128\n'
    )
    hello_p3 = COMPONENTS / "hello_p3.wasm"
    p3_manifest = data / "hello-p3.toml"
    p3_manifest.write_text(
        f'manifest_version = 1\n[app]\nname = "hello"\nversion = "1.0.0"\n'
        f'[components.hello]\nsource = "{hello_p3}"\nroutes = ["GET /hello"]\n'
    )

    def start_wasmhive(m=manifest):
        port, admin = free_port(), free_port()
        s = Server("wasmhive", [str(wasmhive), "--log-format", "json", "up", str(m), "--http", f"127.0.0.1:{port}",
                                "--admin", f"127.0.0.1:{admin}", "--data-dir", str(data / "data"), "--local-bus"], port,
                   env={"WASMHIVE_LOG": "warn"}, ready_line="ready")
        return s, f"http://127.0.0.1:{port}/hello"

    def start_wasmtime(extra):
        def start(component=hello):
            port = free_port()
            s = Server("wasmtime", [wasmtime, "serve", "-Scli", *extra, "--addr", f"127.0.0.1:{port}", str(component)], port)
            return s, f"http://127.0.0.1:{port}/hello"
        return start

    def start_native():
        port = free_port()
        return Server("native", [str(native), f"127.0.0.1:{port}"], port), f"http://127.0.0.1:{port}/hello"

    tuned = WASMTIME_TUNED
    variants = [("wasmhive (fresh instance per request)", start_wasmhive)]
    reuse_variants = [("wasmhive, `max_requests = 128` (serial reuse)", lambda: start_wasmhive(reuse_manifest))]
    notes = []
    if wasmtime:
        version = subprocess.run([wasmtime, "--version"], capture_output=True, text=True).stdout.strip()
        variants += [
            (f"`wasmtime serve` defaults ({version})", start_wasmtime([])),
            ("`wasmtime serve` tuned pooling", start_wasmtime(tuned)),
        ]
        reuse_variants.append(("`wasmtime serve --max-instance-reuse-count 128`",
                               start_wasmtime(["--max-instance-reuse-count", "128"])))
        # Context, not a target pair: wasmtime serve enforcing a deadline as wasmhive
        # always does (epoch checks in the guest's code).
        reuse_variants.append(("`wasmtime serve --max-instance-reuse-count 128 -Wtimeout=30s` (deadline enforced, as wasmhive)",
                               start_wasmtime(["--max-instance-reuse-count", "128", "-Wtimeout=30s"])))
    reuse_variants.append(("wasmhive, WASI 0.3 hello-p3 (defaults: reuse 128 x 16)", lambda: start_wasmhive(p3_manifest)))
    if wasmtime:
        reuse_variants.append(("`wasmtime serve` WASI 0.3 hello-p3 (its defaults: 128 x 16)",
                               lambda: start_wasmtime([])(hello_p3)))
        # Context again: the same with the deadline enforced, as wasmhive does.
        reuse_variants.append(("`wasmtime serve -Wtimeout=30s` WASI 0.3 hello-p3 (deadline enforced, as wasmhive)",
                               lambda: start_wasmtime(["-Wtimeout=30s"])(hello_p3)))
    else:
        notes.append("`wasmtime` 48.0.8 was not found (cargo install wasmtime-cli --version 48.0.8 --locked); "
                     "its rows are missing.")
    variants += reuse_variants
    variants.append(("native hyper (no wasm, upper bound)", start_native))
    results = measure_rounds_raw(variants)
    rows = medians(variants, results)
    # Issue 9's pairs, compared round by round: each round runs both servers within a
    # minute of each other, so a ratio per round cancels most of the VM's drift.
    pairs = [
        (variants[0][0], variants[1][0] if wasmtime else None, "fresh instance vs `wasmtime serve` defaults", 4.0),
        (variants[0][0], variants[2][0] if wasmtime else None, "fresh instance vs `wasmtime serve` tuned pooling", 1.5),
        (reuse_variants[0][0], reuse_variants[1][0] if wasmtime else None, "serial reuse 128 vs `--max-instance-reuse-count 128`", 1.2),
        (reuse_variants[3][0] if wasmtime else None, reuse_variants[4][0] if wasmtime else None, "WASI 0.3 hello-p3, both with defaults", 1.2),
        (reuse_variants[0][0], reuse_variants[2][0] if wasmtime else None,
         "serial reuse 128 vs the same with `-Wtimeout=30s` (deadline enforced on both)", None),
        (reuse_variants[3][0] if wasmtime else None, reuse_variants[5][0] if wasmtime else None,
         "WASI 0.3 hello-p3 vs `wasmtime serve -Wtimeout=30s` (deadline enforced on both)", None),
    ]
    pair_lines = pair_table(results, [p for p in pairs if p[0] and p[1]])
    commands = [
        "just bench http",
        f"target/release/wasmhive up hello.toml --http 127.0.0.1:PORT   # hello.toml: one route, GET /hello",
        f"wasmtime serve -Scli --addr 127.0.0.1:PORT {hello.relative_to(ROOT)}",
        f"wasmtime serve -Scli {' '.join(tuned)} --addr 127.0.0.1:PORT {hello.relative_to(ROOT)}",
        "target/release/wasmhive up hello-reuse.toml ...   # + [components.hello.instances] max_requests = 128",
        f"wasmtime serve -Scli --max-instance-reuse-count 128 --addr 127.0.0.1:PORT {hello.relative_to(ROOT)}",
        f"wasmtime serve -Scli --max-instance-reuse-count 128 -Wtimeout=30s --addr 127.0.0.1:PORT {hello.relative_to(ROOT)}",
        "target/release/wasmhive up hello-p3.toml ...   # hello-p3 on GET /hello, no [instances] (WASI 0.3 defaults)",
        f"wasmtime serve -Scli --addr 127.0.0.1:PORT {hello_p3.relative_to(ROOT)}",
        f"wasmtime serve -Scli -Wtimeout=30s --addr 127.0.0.1:PORT {hello_p3.relative_to(ROOT)}",
        "target/release/native-hello 127.0.0.1:PORT",
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s --latency http://127.0.0.1:PORT/hello",
    ]
    text = render(rows, commands, notes)
    if pair_lines:
        text = text.replace("\n\nCommands:", "\n\n" + "\n".join(pair_lines) + "\n\nCommands:", 1)
    print(text)
    write_block("http", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_ab():
    """The request path of two wasmhive binaries, alternating: BENCH_BASELINE (an
    older release build) against target/release/wasmhive, for the hello route with a
    fresh instance per request, with serial reuse, and the WASI 0.3 hello."""
    baseline = os.environ.get("BENCH_BASELINE")
    if not baseline or not Path(baseline).is_file():
        sys.exit("ab needs BENCH_BASELINE=/path/to/another/release/wasmhive")
    label = os.environ.get("BENCH_BASELINE_LABEL", "baseline")
    current = ROOT / "target/release/wasmhive"
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    hello, hello_p3 = COMPONENTS / "hello.wasm", COMPONENTS / "hello_p3.wasm"
    manifests = {}
    for name, component, extra in (("fresh", hello, ""),
                                   ("reuse", hello, '[components.hello.instances]\nmax_requests = 128\n'),
                                   ("p3", hello_p3, "")):
        path = data / f"{name}.toml"
        path.write_text(f'manifest_version = 1\n[app]\nname = "hello"\nversion = "1.0.0"\n'
                        f'[components.hello]\nsource = "{component}"\nroutes = ["GET /hello"]\n{extra}')
        manifests[name] = path

    def start(binary, manifest, tag):
        def go():
            port, admin = free_port(), free_port()
            s = Server("wasmhive", [str(binary), "--log-format", "json", "up", str(manifest), "--http",
                                    f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--data-dir",
                                    str(data / f"data-{tag}"), "--local-bus"], port,
                       env={"WASMHIVE_LOG": "warn"}, ready_line="ready")
            return s, f"http://127.0.0.1:{port}/hello"
        return go

    variants = []
    for name in manifests:
        variants.append((f"{label}: {name}", start(baseline, manifests[name], f"old-{name}")))
        variants.append((f"this tree: {name}", start(current, manifests[name], f"new-{name}")))
    results = measure_rounds_raw(variants)
    rows = medians(variants, results)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; wrk -t{THREADS} -c{CONNECTIONS} "
        f"-d{DURATION}s on loopback; {ROUNDS} rounds, each running the two binaries back to back.",
        "",
        "| path | binary | req/s (median) | p99 ms (median) | ratio per round (this / baseline) | median ratio |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    by_name = {row[0]: row for row in rows}
    for name in manifests:
        old, new = f"{label}: {name}", f"this tree: {name}"
        ratios = [b[0] / a[0] for a, b in zip(results[old], results[new])]
        per_round = ", ".join(f"{r:.2f}x" for r in ratios)
        lines.append(f"| {name} | {label} | {by_name[old][1]:,.0f} | {by_name[old][3]:.2f} | | |")
        lines.append(f"| {name} | this tree | {by_name[new][1]:,.0f} | {by_name[new][3]:.2f} | {per_round} | "
                     f"{statistics.median(ratios):.2f}x |")
    lines += ["", "Commands:", "", "```sh",
              f"BENCH_BASELINE=path/to/{label}/wasmhive BENCH_BASELINE_LABEL={label} just bench ab",
              "wasmhive up hello.toml --local-bus   # fresh: one route, GET /hello",
              "wasmhive up hello-reuse.toml ...     # + [components.hello.instances] max_requests = 128",
              "wasmhive up hello-p3.toml ...        # hello-p3 (WASI 0.3 defaults)",
              f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s --latency http://127.0.0.1:PORT/hello", "```"]
    text = "\n".join(lines)
    print(text)
    write_block("ab", text)
    shutil.rmtree(data, ignore_errors=True)


def pair_table(results, pairs):
    """Markdown lines: for each (ours, theirs, label, target), req/s ratio per round
    (median, range) and p99 ratio per round (median)."""
    if not pairs:
        return []
    lines = [
        "Issue 9's pairs, ratio of req/s within each round (wasmhive / `wasmtime serve`), and of p99:",
        "",
        "| pair | median ratio | per round | target | p99 ratio (median) |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for ours, theirs, label, target in pairs:
        ratios = [a[0] / b[0] for a, b in zip(results[ours], results[theirs])]
        p99 = [a[2] / b[2] for a, b in zip(results[ours], results[theirs])]
        med = statistics.median(ratios)
        per_round = ", ".join(f"{r:.2f}x" for r in ratios)
        if target is None:
            goal = "context"
        else:
            goal = f"{target:.1f}x ({'met' if med >= target else 'not met'})"
        lines.append(f"| {label} | {med:.2f}x | {per_round} | {goal} | {statistics.median(p99):.2f} |")
    return lines


def callgrind_per_request(label, argv, url, headers=None, env=None):
    """Runs `argv` under callgrind, sends requests with one wrk connection pair and
    returns (instructions per request, guest instructions per request, requests)."""
    out = Path(tempfile.mkdtemp(prefix="wasmhive-cg-")) / "out"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    script = None
    if headers:
        script = out.parent / "headers.lua"
        script.write_text("".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items()))
    try:
        deadline = time.time() + 600
        while True:  # compiling under valgrind takes a while
            try:
                if subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", url],
                                  capture_output=True, text=True).stdout == "200":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{label}: server did not come up under valgrind")
            time.sleep(0.5)
        wrk(url, duration=3, threads=1, connections=2, script=script)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
        cmd = ["wrk", "-t1", "-c2", "-d10s"] + (["-s", str(script)] if script else []) + [url]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        requests = int(re.search(r"(\d+) requests in", text).group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    dump = Path(f"{out}.1")
    total = int(re.search(r"^totals: (\d+)", dump.read_text(), re.M).group(1))
    annotated = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=no", str(dump)],
                               capture_output=True, text=True).stdout
    # Code without symbols is the guest's (JIT-compiled or loaded from a .cwasm).
    guest = sum(int(m.group(1).replace(",", "")) for m in
                re.finditer(r"^\s*([\d,]+) \(.*\[\?\?\?\]$", annotated, re.M))
    shutil.rmtree(out.parent, ignore_errors=True)
    print(f"  {label}: {total / requests:,.0f} instructions per request ({guest / requests:,.0f} guest), {requests} requests")
    return total / requests, guest / requests, requests


def scenario_instr():
    if not shutil.which("valgrind"):
        sys.exit("valgrind is missing: apt-get install valgrind")
    wasmtime = os.environ.get("WASMTIME") or shutil.which("wasmtime")
    if not wasmtime:
        sys.exit("wasmtime 48.0.8 is missing (cargo install wasmtime-cli --version 48.0.8 --locked)")
    hello, hello_p3 = COMPONENTS / "hello.wasm", COMPONENTS / "hello_p3.wasm"
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    # valgrind cannot reserve the default pools' address space: both hosts get 4 slots.
    config = data / "small-pool.toml"
    config.write_text("[pool]\ninstances = 4\n")
    small = ["-O", "pooling-total-memories=8", "-O", "pooling-total-core-instances=32",
             "-O", "pooling-total-component-instances=4"]
    tuned = WASMTIME_TUNED

    def manifest(name, component, extra=""):
        path = data / f"{name}.toml"
        path.write_text(f'manifest_version = 1\n[app]\nname = "hello"\nversion = "1.0.0"\n'
                        f'[components.hello]\nsource = "{component}"\nroutes = ["GET /hello"]\n{extra}')
        return path

    port = free_port()
    url = f"http://127.0.0.1:{port}/hello"

    def hive(m):
        return [str(ROOT / "target/release/wasmhive"), "--log-format", "json", "up", str(m), "--config", str(config),
                "--http", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{free_port()}",
                "--data-dir", str(data / f"data-{m.stem}"), "--local-bus"]

    def serve(extra, component=hello):
        return [wasmtime, "serve", "-Scli", *small, *extra, "--addr", f"127.0.0.1:{port}", str(component)]

    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
              "x-request-id": "0af7651916cd43dd8448eb211c80319c"}
    reuse = "[components.hello.instances]\nmax_requests = 128\n"
    pairs = [
        ("fresh instance per request", (hive(manifest("fresh", hello)), None), (serve(tuned), None),
         "`wasmtime serve` tuned pooling"),
        ("p2 serial reuse, 128", (hive(manifest("reuse", hello, reuse)), None),
         (serve(["--max-instance-reuse-count", "128"]), None), "`wasmtime serve --max-instance-reuse-count 128`"),
        ("p2 serial reuse, 128, client sends traceparent and x-request-id",
         (hive(manifest("reuse-traced", hello, reuse)), traced),
         (serve(["--max-instance-reuse-count", "128"]), traced), "the same, same headers"),
        ("p3 hello-p3, defaults 128 x 16", (hive(manifest("p3", hello_p3)), None), (serve([], hello_p3), None),
         "`wasmtime serve` p3 defaults"),
    ]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}: instructions executed by the server process per request "
        "(valgrind --tool=callgrind, user space only: kernel work such as TCP and page resets is not counted), "
        "wrk -t1 -c2 for 10 s after a 3 s warm-up; guest = code without symbols (the compiled component).",
        "",
        "| pair | wasmhive instr/req (guest) | `wasmtime serve` instr/req (guest) | wasmhive / wasmtime |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, (ours, our_headers), (theirs, their_headers), their_label in pairs:
        a, ag, _ = callgrind_per_request(f"wasmhive, {label}", ours, url, our_headers, env={"WASMHIVE_LOG": "warn"})
        b, bg, _ = callgrind_per_request(f"{their_label}", theirs, url, their_headers)
        lines.append(f"| {label} (vs {their_label}) | {a:,.0f} ({ag:,.0f}) | {b:,.0f} ({bg:,.0f}) | {a / b:.2f} |")
    lines += ["", "Commands:", "", "```sh", "just bench instr",
              "valgrind --tool=callgrind --instr-atstart=no target/release/wasmhive up M.toml --config small-pool.toml ...",
              f"valgrind --tool=callgrind --instr-atstart=no wasmtime serve -Scli {' '.join(small)} [flags] ...",
              "callgrind_control -i on PID; wrk -t1 -c2 -d10s http://127.0.0.1:PORT/hello; callgrind_control -i off PID; callgrind_control -d PID",
              "```"]
    text = "\n".join(lines)
    print(text)
    write_block("instr", text)
    shutil.rmtree(data, ignore_errors=True)


import http.client  # noqa: E402
import json  # noqa: E402


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Host:
    """A release wasmhive host on free ports with its own data dir."""

    def __init__(self, data, manifests=(), config=None, bus=("--local-bus",), extra=()):
        self.port, self.admin_port = free_port(), free_port()
        self.data = Path(data)
        argv = [str(ROOT / "target/release/wasmhive"), "--log-format", "json", "up", *map(str, manifests),
                "--http", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin_port}",
                "--data-dir", str(data)]
        if config:
            argv += ["--config", str(config)]
        argv += list(bus) + list(extra)
        self.argv = argv
        self.server = Server("wasmhive", argv, self.port, env={"WASMHIVE_LOG": "warn"}, ready_line="ready")
        self.pid = self.server.proc.pid

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self):
        token = (self.data / "admin.token").read_text().strip()
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=60)
        conn.request("GET", "/v1/status", headers={"Authorization": f"Bearer {token}"})
        doc = json.loads(conn.getresponse().read())
        conn.close()
        return [c for a in doc["apps"] for c in a["components"]]

    def deploy(self, manifest):
        subprocess.run([str(ROOT / "target/release/wasmhive"), "deploy", str(manifest), "--admin",
                        f"127.0.0.1:{self.admin_port}", "--data-dir", str(self.data)],
                       check=True, capture_output=True)

    def stop(self):
        return self.server.stop()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def hello_manifest(path, app, scale="", components=(("hello", "GET /hello"),)):
    hello = COMPONENTS / "hello.wasm"
    text = f'manifest_version = 1\n[app]\nname = "{app}"\nversion = "1.0.0"\n'
    for name, route in components:
        text += f'[components.{name}]\nsource = "{hello}"\nroutes = ["{route}"]\n'
        if scale:
            text += f"[components.{name}.scale]\n{scale}\n"
    path.write_text(text)
    return path


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status}")


def time_to_first_response(argv, port, path, env=None):
    """Starts a process and times until it answers `path` with 200."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                get(conn, path)
                return (time.perf_counter() - t0) * 1000
            except (OSError, http.client.HTTPException, RuntimeError):
                # Not listening yet, or listening but the app not deployed yet (404).
                time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def scenario_coldstart():
    wakeups = int(os.environ.get("BENCH_WAKEUPS", "200"))
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    manifest = hello_manifest(data / "hello.toml", "hello", 'idle_timeout = "50ms"')
    host = Host(data / "data", [manifest])
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    cold, warm = [], []
    try:
        for _ in range(wakeups):
            while host.status()[0]["state"] != "zero":
                time.sleep(0.02)
            t0 = time.perf_counter()
            get(conn, "/hello")
            cold.append((time.perf_counter() - t0) * 1000)
        starts = host.status()[0]["cold_starts"]
        # Warm: back to back on the same connection, well within idle_timeout.
        for _ in range(wakeups * 5):
            t0 = time.perf_counter()
            get(conn, "/hello")
            warm.append((time.perf_counter() - t0) * 1000)
    finally:
        host.stop()
    if starts != wakeups:
        print(f"  warning: {starts} cold starts counted for {wakeups} wake-ups")

    rows = [("wasmhive, woken from zero (compile cache on disk)", cold),
            ("wasmhive, warm (loaded)", warm)]
    processes = int(os.environ.get("BENCH_PROCESS_STARTS", "10"))
    wasmtime = os.environ.get("WASMTIME") or shutil.which("wasmtime")
    hello = COMPONENTS / "hello.wasm"
    notes = []
    if wasmtime:
        cwasm = data / "hello.cwasm"
        subprocess.run([wasmtime, "compile", str(hello), "-o", str(cwasm)], check=True)
        for label, args in [("`wasmtime serve` process start, compiles the .wasm", [str(hello)]),
                            ("`wasmtime serve` process start, precompiled .cwasm",
                             ["--allow-precompiled", str(cwasm)])]:
            samples = []
            for _ in range(processes):
                port = free_port()
                samples.append(time_to_first_response(
                    [wasmtime, "serve", "-Scli", "--addr", f"127.0.0.1:{port}", *args], port, "/hello"))
            rows.append((label, samples))
    else:
        notes.append("`wasmtime` 48.0.8 not found; its rows are missing.")
    samples = []
    for _ in range(processes):
        port, admin = free_port(), free_port()
        samples.append(time_to_first_response(
            [str(ROOT / "target/release/wasmhive"), "up", str(manifest), "--http", f"127.0.0.1:{port}",
             "--admin", f"127.0.0.1:{admin}", "--data-dir", str(data / "data"), "--local-bus"], port, "/hello",
            env={"WASMHIVE_LOG": "warn"}))
    rows.append(("wasmhive process start (compile cache on disk)", samples))

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores. Time from sending the request "
        f"to the full response, on a kept-alive loopback connection, in ms. {wakeups} wake-ups from zero "
        f"(`idle_timeout = \"50ms\"`; each waits until status shows `zero`), {wakeups * 5} warm requests, "
        f"{processes} process starts (spawn to first 200, polling every ms).",
        "",
        "| what | n | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, v in rows:
        lines.append(f"| {label} | {len(v)} | {percentile(v, 50):.2f} | {percentile(v, 99):.2f} | {max(v):.2f} |")
    lines += ["", "Commands:", "", "```sh", "just bench coldstart",
              "# wasmhive: hello with [components.hello.scale] idle_timeout = \"50ms\"; python http.client timing",
              "wasmtime serve -Scli --addr 127.0.0.1:PORT components/target/wasm32-wasip2/release/hello.wasm",
              "wasmtime compile hello.wasm -o hello.cwasm && wasmtime serve -Scli --allow-precompiled --addr 127.0.0.1:PORT hello.cwasm",
              "```"] + ([""] + notes if notes else [])
    text = "\n".join(lines)
    print(text)
    write_block("coldstart", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_density():
    sizes = [int(x) for x in os.environ.get("BENCH_DENSITY", "1000,10000").split(",")]
    per_app = 1000
    idle = os.environ.get("BENCH_DENSITY_IDLE", "40s")
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    host = Host(data / "data")
    rows = [("host started, nothing deployed", 0, rss_mib(host.pid), "")]
    deployed = 0
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=60)

    def wait_all(state):
        while True:
            states = [c["state"] for c in host.status()]
            if all(s == state for s in states):
                return
            time.sleep(0.5)

    try:
        for size in sizes:
            t0 = time.perf_counter()
            while deployed < size:
                app = f"d{deployed // per_app}"
                comps = [(f"c{i:05d}", f"GET /{app}/c{i:05d}") for i in range(deployed, deployed + per_app)]
                host.deploy(hello_manifest(data / f"{app}.toml", app, f'idle_timeout = "{idle}"', comps))
                deployed += per_app
            took = time.perf_counter() - t0
            rows.append((f"{size:,} deployed (all loaded)", size, rss_mib(host.pid), f"deploy took {took:.1f} s"))
            wait_all("zero")
            rows.append((f"{size:,} scaled to zero (idle)", size, rss_mib(host.pid), ""))
            t0 = time.perf_counter()
            for i in range(size):
                get(conn, f"/d{i // per_app}/c{i:05d}")
            took = time.perf_counter() - t0
            ready = sum(c["state"] == "ready" for c in host.status())
            rows.append((f"{size:,} after touching each once", size, rss_mib(host.pid),
                         f"{took / size * 1000:.2f} ms per wake-up; {ready:,} still loaded"))
            wait_all("zero")
            rows.append((f"{size:,} scaled to zero again", size, rss_mib(host.pid), ""))
            print("\n".join(f"  {r}" for r in rows))
    finally:
        host.stop()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores: one release host, hello components "
        f"deployed {per_app:,} per app (distinct names and routes, the same component bytes), "
        f"`idle_timeout = \"{idle}\"`. RSS from /proc/PID/status.",
        "",
        "| state | components | host RSS MiB | notes |",
        "| --- | ---: | ---: | --- |",
    ]
    lines += [f"| {label} | {n:,} | {rss:.0f} | {note} |" for label, n, rss, note in rows]
    lines += ["", "Commands:", "", "```sh", "just bench density", "```"]
    text = "\n".join(lines)
    print(text)
    write_block("density", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_bulkhead():
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    faults = COMPONENTS / "faults.wasm"
    slow = data / "slow.toml"
    slow.write_text(
        f'manifest_version = 1\n[app]\nname = "slow"\nversion = "1.0.0"\n'
        f'[components.slow]\nsource = "{faults}"\nroutes = ["/slow/{{*what}}"]\n'
        f'[components.slow.scale]\nmax_instances = 8\nqueue = 1000\nqueue_timeout = "30s"\n'
    )
    fast = hello_manifest(data / "fast.toml", "fast")
    host = Host(data / "data", [fast, slow])
    fast_url, slow_url = host.url("/hello"), host.url("/slow/sleep?ms=200")
    alone, loaded = [], []
    try:
        wrk(fast_url, duration=1)
        for r in range(ROUNDS):
            rps, _, _ = wrk(fast_url)
            alone.append(rps)
            hog = subprocess.Popen(["wrk", "-t1", "-c64", f"-d{DURATION + 4}s", slow_url],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
            status = {c["name"]: c for c in host.status()}["slow"]
            rps, _, _ = wrk(fast_url)
            loaded.append(rps)
            hog.wait()
            print(f"  round {r + 1}: alone {alone[-1]:,.0f} req/s, beside saturated slow {rps:,.0f} req/s "
                  f"(slow in flight {status['in_flight']}, queued {status['queued']})")
    finally:
        host.stop()
    a, b = statistics.median(alone), statistics.median(loaded)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores. `fast` is hello; `slow` is the faults "
        f"fixture answering after 200 ms (`/slow/sleep?ms=200`) with `max_instances = 8`, `queue = 1000`, "
        f"driven by a second wrk with 64 connections so it stays saturated (8 running, the rest queued). "
        f"Median of {ROUNDS} rounds.",
        "",
        "| fast component | req/s |",
        "| --- | ---: |",
        f"| alone | {a:,.0f} |",
        f"| while `slow` is saturated | {b:,.0f} ({b / a:.0%} of alone) |",
        "",
        "Commands:",
        "",
        "```sh",
        "just bench bulkhead",
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s http://127.0.0.1:PORT/hello",
        f"wrk -t1 -c64 -d{DURATION + 4}s http://127.0.0.1:PORT/slow/sleep?ms=200   # at the same time",
        "```",
    ]
    text = "\n".join(lines)
    print(text)
    write_block("bulkhead", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_noisy():
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    faults = COMPONENTS / "faults.wasm"
    spin_ms = 50
    spinner = data / "spinner.toml"
    spinner.write_text(
        f'manifest_version = 1\n[app]\nname = "spinner"\nversion = "1.0.0"\n'
        f'[components.spinner]\nsource = "{faults}"\nroutes = ["/spin"]\n'
        f'[components.spinner.limits]\ntimeout = "120s"\n'
        f'[components.spinner.scale]\nmax_instances = 100\nqueue = 1000\nqueue_timeout = "120s"\n'
    )
    quiet = hello_manifest(data / "quiet.toml", "quiet")
    unshared = data / "unshared.toml"
    unshared.write_text("[pool]\ncpus_per_component = 4096\n")
    one = data / "one.toml"
    one.write_text("[pool]\ncpus_per_component = 1\n")
    variants = [("CPU share: default", None), ("CPU share: 1 CPU", one), ("CPU share off", unshared)]
    rows = {name: {"alone": [], "beside": [], "spin": []} for name, _ in variants}
    quiet_seconds = max(3, DURATION // 2)
    try:
        for r in range(ROUNDS):
            for name, config in variants:
                host = Host(data / f"data-{r}-{len(rows[name]['alone'])}-{name[:6].strip()}", [quiet, spinner],
                            config=config)
                try:
                    quiet_url, spin_url = host.url("/hello"), host.url(f"/spin?ms={spin_ms}")
                    wrk(quiet_url, duration=1, threads=1, connections=1)
                    _, p50, p99 = wrk(quiet_url, duration=quiet_seconds, threads=1, connections=1)
                    rows[name]["alone"].append((p50, p99))
                    hog = subprocess.Popen(
                        ["wrk", "-t1", "-c200", f"-d{quiet_seconds + 6}s", "--latency", spin_url],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                    time.sleep(3)
                    status = {c["name"]: c for c in host.status()}["spinner"]
                    _, p50, p99 = wrk(quiet_url, duration=quiet_seconds, threads=1, connections=1)
                    rows[name]["beside"].append((p50, p99))
                    out, _ = hog.communicate()
                    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                    rows[name]["spin"].append(rps)
                    print(f"  round {r + 1} {name}: quiet alone p50 {rows[name]['alone'][-1][0]:.2f} ms "
                          f"p99 {rows[name]['alone'][-1][1]:.2f} ms; beside spinner p50 {p50:.2f} ms p99 {p99:.2f} ms "
                          f"(spinner {rps:,.1f} req/s, in flight {status['in_flight']}, queued {status['queued']})")
                finally:
                    host.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, release build. `quiet` is hello, "
        f"driven by one wrk connection; `spinner` is the faults fixture computing {spin_ms} ms per request "
        f"(`/spin?ms={spin_ms}`) with `max_instances = 100`, driven by 200 connections (100 running, "
        f"the rest queued). Median of {ROUNDS} rounds; the two variants alternate, each on a fresh host. "
        f"\"default\" is `[pool] cpus_per_component` unset (the machine's cores less one, {max(1, os.cpu_count() - 1)}); \"1 CPU\" "
        f"sets it to 1; \"CPU share off\" sets it to 4096: every admitted invocation takes turns on "
        f"the runtime with everyone else's (the behaviour before the share).",
        "",
        "| variant | quiet alone p50 / p99 ms | quiet beside spinner p50 / p99 ms | p99 beside / alone | spinner req/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, _ in variants:
        row = rows[name]
        a50, a99 = med(row["alone"], 0), med(row["alone"], 1)
        b50, b99 = med(row["beside"], 0), med(row["beside"], 1)
        lines.append(f"| {name} | {a50:.2f} / {a99:.2f} | {b50:.2f} / {b99:.2f} | {b99 / a99:.1f}x | "
                     f"{statistics.median(row['spin']):,.1f} |")
    lines += [
        "",
        "Target: quiet p99 beside the spinner at most 5x its p99 alone.",
        "",
        "Commands:",
        "",
        "```sh",
        "just bench noisy",
        f"wrk -t1 -c1 -d{quiet_seconds}s --latency http://127.0.0.1:PORT/hello",
        f"wrk -t1 -c200 -d{quiet_seconds + 6}s http://127.0.0.1:PORT/spin?ms={spin_ms}   # at the same time",
        "```",
    ]
    text = "\n".join(lines)
    print(text)
    write_block("noisy", text)


def scenario_messaging():
    n = int(os.environ.get("BENCH_MESSAGES", "200000"))
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data / "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, nats)
    messenger = COMPONENTS / "messenger.wasm"

    def manifest(durable, reuse):
        path = data / f"fwd-{durable}-{reuse}.toml"
        path.write_text(
            f'manifest_version = 1\n[app]\nname = "fwd"\nversion = "1.0.0"\n'
            f'[components.fwd]\nsource = "{messenger}"\nenv = {{ FORWARD_TO = "bench.out" }}\n'
            f'[components.fwd.messaging]\nsubscribe = ["bench.in"]\npublish = ["bench.out"]\n'
            f'durable = {"true" if durable else "false"}\n'
            + (f'[components.fwd.instances]\nmax_requests = {reuse}\n' if reuse > 1 else ''))
        return path

    def run(mode, count):
        out = subprocess.run([str(ROOT / "target/release/msgbench"), mode, url, str(count)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"  warning: msgbench {mode}: {out.stderr.strip()}")
        m = re.search(r"rate=(\d+)", out.stdout)
        return float(m.group(1)) if m else float("nan")

    # mode -> (msgbench mode, durable, max_requests); alternated within each round.
    modes = {
        "through": ("through", False, 1),
        "through-reuse": ("through", False, 128),
        "durable": ("durable", True, 1),
        "durable-reuse": ("durable", True, 128),
    }
    results = {"raw": [], **{m: [] for m in modes}}
    try:
        for r in range(ROUNDS):
            results["raw"].append(run("raw", n))
            for mode, (bench_mode, durable, reuse) in modes.items():
                host = Host(data / f"data-{mode}-{r}", [manifest(durable, reuse)], bus=("--nats", url))
                try:
                    count = n if not durable else max(n // 4, 1000)
                    results[mode].append(run(bench_mode, count))
                finally:
                    host.stop()
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items()))
    finally:
        nats.terminate()
        nats.wait()
    raw = statistics.median(results["raw"])
    rows = [("raw async-nats publish -> subscribe (no wasm)", raw),
            ("through a wasmhive handler, core NATS (fresh instance per message)",
             statistics.median(results["through"])),
            ("through a wasmhive handler, core NATS, `max_requests = 128` (serial reuse)",
             statistics.median(results["through-reuse"])),
            ("through a wasmhive handler, durable JetStream (ack per message, fresh instance)",
             statistics.median(results["durable"])),
            ("through a wasmhive handler, durable JetStream, `max_requests = 128`",
             statistics.median(results["durable-reuse"]))]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, one nats-server 2.x on loopback. "
        f"{n:,} messages of 16 bytes (durable: {max(n // 4, 1000):,}, published through JetStream with acks); "
        f"the handler is the messenger fixture forwarding each body to `bench.out` (wasmcloud:messaging "
        f"publish); rate = messages received on `bench.out` / time from first publish to last receipt. "
        f"Median of {ROUNDS} rounds.",
        "",
        "| path | messages/s | vs raw |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {label} | {rate:,.0f} | {rate / raw:.2f}x |" for label, rate in rows]
    lines += ["", "Commands:", "", "```sh", "just bench messaging",
              "nats-server -a 127.0.0.1 -p PORT -js -sd DIR",
              "target/release/msgbench raw nats://127.0.0.1:PORT N",
              "target/release/wasmhive up fwd.toml --nats nats://127.0.0.1:PORT   # subscribe bench.in, FORWARD_TO bench.out",
              "# reuse rows: fwd.toml + [components.fwd.instances] max_requests = 128",
              "target/release/msgbench through nats://127.0.0.1:PORT N   # or: durable", "```"]
    text = "\n".join(lines)
    print(text)
    write_block("messaging", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_kv():
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    store = COMPONENTS / "kv_store.wasm"
    manifest = data / "kv.toml"
    manifest.write_text(
        f'manifest_version = 1\n[app]\nname = "kv"\nversion = "1.0.0"\n'
        f'[components.store]\nsource = "{store}"\n'
        f'routes = ["/kv/{{*rest}}", "/config/{{*rest}}"]\n'
        f'[components.store.keyvalue]\nbuckets = ["b"]\n[components.store.config]\ncurrency = "EUR"\n')
    scripts = {}
    for name, method, body in (("post", "POST", ""), ("put", "PUT", "value-of-sixteen")):
        path = data / f"{name}.lua"
        path.write_text(f'wrk.method = "{method}"\nwrk.body = "{body}"\n')
        scripts[name] = path
    ops = [("no state (wasi:config get)", "/config/currency", None),
           ("get", "/kv/b/get/k", None),
           ("set", "/kv/b/set/k", "put"),
           ("increment (one hot key)", "/kv/b/incr/n", "post")]
    port = free_port()
    nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data / "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, nats)
    backends = [("redb", ("--local-bus", "--kv", "redb")),
                ("jetstream", ("--nats", f"nats://127.0.0.1:{port}", "--kv", "jetstream"))]
    results = {}
    try:
        for backend, bus in backends:
            host = Host(data / f"data-{backend}", [manifest], bus=bus)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
                conn.request("PUT", "/kv/b/set/k", body="value-of-sixteen")
                conn.getresponse().read()
                for label, path, script in ops:
                    rps, p50, _ = wrk(host.url(path), script=scripts[script] if script else None)
                    results[(backend, label)] = (rps, p50)
                    print(f"  {backend} {label}: {rps:,.0f} ops/s p50 {p50:.2f} ms")
            finally:
                host.stop()
    finally:
        nats.terminate()
        nats.wait()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; wrk -t{THREADS} -c{CONNECTIONS} "
        f"-d{DURATION}s against the kv-store fixture (one operation per request, fresh instance per request); "
        f"16-byte values. Host-side cost per op = 1/ops/s of the op minus 1/ops/s of the no-state route, "
        f"in CPU-time-equivalent microseconds at this concurrency (a rough figure: both cores are busy).",
        "",
        "| backend | operation | ops/s | p50 ms | extra µs per op vs no state |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for backend, _ in backends:
        base = results.get((backend, ops[0][0]), (float("nan"), 0))[0]
        for label, _, _ in ops:
            rps, p50 = results.get((backend, label), (float("nan"), float("nan")))
            extra = (1 / rps - 1 / base) * 1e6 * 2 if label != ops[0][0] else 0
            lines.append(f"| {backend} | {label} | {rps:,.0f} | {p50:.2f} | {extra:,.0f} |")
    lines += ["", "Commands:", "", "```sh", "just bench kv",
              "target/release/wasmhive up kv.toml --local-bus --kv redb      # or: --nats nats://127.0.0.1:PORT --kv jetstream",
              f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s [-s post.lua|put.lua] http://127.0.0.1:PORT/kv/b/get/k   # /kv/b/set/k, /kv/b/incr/n, /config/currency",
              "```"]
    text = "\n".join(lines)
    print(text)
    write_block("kv", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_mesh():
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    manifest = data / "mesh.toml"
    manifest.write_text(
        f'manifest_version = 1\n[app]\nname = "mesh"\nversion = "1.0.0"\n'
        f'[components.caller]\nsource = "{COMPONENTS / "outbound_call.wasm"}"\nroutes = ["/call"]\n'
        f'allowed_outbound_hosts = ["http://127.0.0.1:*"]\n'
        f'[components.caller.calls.hello]\n'
        f'[components.hello]\nsource = "{COMPONENTS / "hello.wasm"}"\nroutes = ["GET /hello"]\n')
    host = Host(data / "data", [manifest])
    rows = []
    try:
        paths = [("callee directly (client -> hello)", "/hello"),
                 ("caller -> hello over HTTP on loopback (no mesh)",
                  f"/call?url=http://127.0.0.1:{host.port}/hello"),
                 ("caller -> hello in process (mesh)", "/call?url=http://hello/hello")]
        results = {label: [] for label, _ in paths}
        for _ in range(ROUNDS):
            for label, path in paths:
                _, p50, p99 = wrk(host.url(path), threads=1, connections=1)
                results[label].append((p50, p99))
        for label, _ in paths:
            rows.append((label, statistics.median(x[0] for x in results[label]),
                         statistics.median(x[1] for x in results[label])))
    finally:
        host.stop()
    direct, loopback, through = rows[0], rows[1], rows[2]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; wrk -t1 -c1 -d{DURATION}s, "
        f"median of {ROUNDS} rounds. The difference is everything a service call adds: the caller's own "
        f"instance and its outgoing wasi:http request, the mesh (policy, route, admission) and the callee's "
        f"instance; no socket is involved.",
        "",
        "| path | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {label} | {p50:.3f} | {p99:.3f} |" for label, p50, p99 in rows]
    lines += ["", f"The mesh call vs the same call over loopback HTTP: p50 "
              f"{(through[1] - loopback[1]) * 1000:+.0f} µs, p99 {(through[2] - loopback[2]) * 1000:+.0f} µs. "
              f"Everything a service call adds over calling the callee directly (caller instance included): "
              f"p50 {(through[1] - direct[1]) * 1000:.0f} µs, p99 {(through[2] - direct[2]) * 1000:.0f} µs.",
              "", "Commands:", "", "```sh", "just bench mesh",
              "wrk -t1 -c1 -d6s --latency http://127.0.0.1:PORT/hello",
              "wrk -t1 -c1 -d6s --latency 'http://127.0.0.1:PORT/call?url=http://127.0.0.1:PORT/hello'",
              "wrk -t1 -c1 -d6s --latency 'http://127.0.0.1:PORT/call?url=http://hello/hello'", "```"]
    text = "\n".join(lines)
    print(text)
    write_block("mesh", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_edge():
    """req/s of hello public vs behind each kind of JWT and an API key, plain and TLS."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import mint_token
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-"))
    keys = data / "keys"
    mint_token.ensure_keys(keys)
    now = int(time.time())
    claims = {"iss": "https://id.example.com", "aud": "shop", "sub": "bench", "roles": ["customer"],
              "iat": now, "exp": now + 3600}
    tokens = {alg: mint_token.mint(keys, alg, claims) for alg in ("RS256", "ES256", "EdDSA")}
    api_key = [l for l in (keys / "api-keys.txt").read_text().splitlines() if not l.startswith("#")][0].split(":", 1)[1]
    hello = COMPONENTS / "hello.wasm"
    manifest = data / "edge.toml"
    manifest.write_text(
        f'manifest_version = 1\n[app]\nname = "edge"\nversion = "1.0.0"\n'
        f'[auth.jwt]\nissuer = "https://id.example.com"\naudience = "shop"\njwks = "keys/jwks.json"\n'
        f'[auth.api_keys]\nkeys = {{ file = "keys/api-keys.txt" }}\n'
        f'[components.public]\nsource = "{hello}"\nroutes = ["GET /hello"]\n'
        f'[components.jwt]\nsource = "{hello}"\nroutes = ["GET /jwt/hello"]\n[components.jwt.auth]\nrequire = "jwt"\nroles = ["customer"]\n'
        f'[components.key]\nsource = "{hello}"\nroutes = ["GET /key/hello"]\n[components.key.auth]\nrequire = "api_key"\n')
    cert, key = data / "cert.pem", data / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    no_cache = data / "no-cache.toml"
    no_cache.write_text("[gateway]\njwt_cache = 0\n")
    plain = Host(data / "plain", [manifest])
    uncached = Host(data / "uncached", [manifest], config=no_cache)
    tls = Host(data / "tls", [manifest], extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    base = f"http://127.0.0.1:{plain.port}"
    verify = f"http://127.0.0.1:{uncached.port}"
    secure = f"https://127.0.0.1:{tls.port}"
    variants = [
        ("public", base + "/hello", []),
        ("JWT RS256", base + "/jwt/hello", [f"Authorization: Bearer {tokens['RS256']}"]),
        ("JWT ES256", base + "/jwt/hello", [f"Authorization: Bearer {tokens['ES256']}"]),
        ("JWT EdDSA", base + "/jwt/hello", [f"Authorization: Bearer {tokens['EdDSA']}"]),
        ("JWT RS256, every request verified", verify + "/jwt/hello", [f"Authorization: Bearer {tokens['RS256']}"]),
        ("JWT ES256, every request verified", verify + "/jwt/hello", [f"Authorization: Bearer {tokens['ES256']}"]),
        ("JWT EdDSA, every request verified", verify + "/jwt/hello", [f"Authorization: Bearer {tokens['EdDSA']}"]),
        ("API key", base + "/key/hello", [f"x-api-key: {api_key}"]),
        ("TLS public", secure + "/hello", []),
        ("TLS JWT RS256", secure + "/jwt/hello", [f"Authorization: Bearer {tokens['RS256']}"]),
    ]
    results = {name: [] for name, _, _ in variants}
    try:
        for name, url, headers in variants:
            wrk(url, duration=1, headers=headers)
        for r in range(ROUNDS):
            for name, url, headers in variants:
                rps, p50, p99 = wrk(url, headers=headers)
                results[name].append((rps, p50, p99))
                print(f"  round {r + 1} {name}: {rps:,.0f} req/s p50 {p50:.2f} ms p99 {p99:.2f} ms")
    finally:
        plain.stop()
        uncached.stop()
        tls.stop()
    med = {n: tuple(statistics.median(x[i] for x in results[n]) for i in range(3)) for n in results}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; wrk -t{THREADS} -c{CONNECTIONS} "
        f"-d{DURATION}s on loopback (HTTP/1.1, kept-alive connections), median of {ROUNDS} alternating rounds; "
        f"one host for plaintext and one with TLS (an ECDSA P-256 certificate), the same hello component "
        f"behind each route. The JWT rows send one token over and over, so after its first request it is "
        f"a verified-token cache hit (`[gateway] jwt_cache`, the default); the \"every request verified\" "
        f"rows come from a third host with `jwt_cache = 0`, so they pay the signature check each time. "
        f"\"Added\" is 1/req/s of the row minus 1/req/s of its public row: the extra wall time per request "
        f"with the whole machine (host and wrk) busy.",
        "",
        "| route | req/s | p50 ms | p99 ms | vs public | added µs/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, _, _ in variants:
        rps, p50, p99 = med[name]
        ref = med["TLS public" if name.startswith("TLS") else "public"][0]
        lines.append(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {rps / ref:.2f}x | "
                     f"{(1 / rps - 1 / ref) * 1e6:+.1f} |")
    rs = med["JWT RS256"][0] / med["public"][0]
    raw = med["JWT RS256, every request verified"][0] / med["public"][0]
    lines += ["", f"Target: a cached-key RS256 JWT costs at most 30% of the public route's req/s: with the token "
              f"cache {'met' if rs >= 0.7 else 'NOT met'} ({(1 - rs) * 100:.0f}% fewer req/s); verifying the "
              f"signature on every request {'meets' if raw >= 0.7 else 'does NOT meet'} it "
              f"({(1 - raw) * 100:.0f}% fewer).",
              "", "Commands:", "", "```sh", "just bench edge",
              "wrk -t2 -c32 -d6s --latency http://127.0.0.1:PORT/hello",
              "wrk -t2 -c32 -d6s --latency -H 'Authorization: Bearer <RS256|ES256|EdDSA token>' http://127.0.0.1:PORT/jwt/hello",
              "wrk -t2 -c32 -d6s --latency -H 'x-api-key: <key>' http://127.0.0.1:PORT/key/hello",
              "wrk -t2 -c32 -d6s --latency https://127.0.0.1:TLSPORT/hello", "```"]
    text = "\n".join(lines)
    print(text)
    write_block("edge", text)
    shutil.rmtree(data, ignore_errors=True)


def scenario_lattice():
    """Three hosts on one nats-server: a forwarded request vs a local one, a cross-host
    service call vs a local one, convergence from a deploy to every host serving, and
    failover after a host is killed."""
    data = Path(tempfile.mkdtemp(prefix="wasmhive-bench-lattice-"))
    port = free_port()
    nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data / "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, nats)
    url = f"nats://127.0.0.1:{port}"
    hello, caller = COMPONENTS / "hello.wasm", COMPONENTS / "outbound_call.wasm"

    def member(name, label):
        return Host(data / name, bus=("--nats", url),
                    extra=("--lattice", "bench", "--host-name", name, "--label", f"role={label}"))

    hosts = {}
    lines = []
    try:
        for name, label in (("a", "a"), ("b", "b"), ("c", "c")):
            hosts[name] = member(name, label)
        a, b, c = hosts["a"], hosts["b"], hosts["c"]
        manifest = data / "bench.toml"
        manifest.write_text(
            'manifest_version = 1\n[app]\nname = "bench"\nversion = "1.0.0"\n'
            f'[components.hello]\nsource = "{hello}"\nroutes = ["GET /hello"]\n'
            '[components.hello.placement]\nlabels = { role = "a" }\n'
            f'[components.near]\nsource = "{caller}"\nroutes = ["/near"]\n'
            'allowed_outbound_hosts = ["http://127.0.0.1:*"]\n[components.near.calls.hello]\n'
            '[components.near.placement]\nlabels = { role = "a" }\n'
            f'[components.far]\nsource = "{caller}"\nroutes = ["/far"]\n'
            'allowed_outbound_hosts = ["http://127.0.0.1:*"]\n[components.far.calls.hello]\n'
            '[components.far.placement]\nlabels = { role = "b" }\n')
        a.deploy(manifest)
        for h, path in ((b, "/hello"), (a, "/far?url=http://hello/hello")):
            deadline = time.time() + 30
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
                    get(conn, path)
                    conn.close()
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)

        paths = [("request served where it arrives (a: /hello)", a, "/hello"),
                 ("request forwarded b -> a (b: /hello)", b, "/hello"),
                 ("service call in process (a: near -> hello)", a, "/near?url=http://hello/hello"),
                 ("service call across hosts (b: far -> hello on a)", b, "/far?url=http://hello/hello")]
        serial = {label: [] for label, _, _ in paths}
        loaded = {label: [] for label, _, _ in paths}
        for r in range(ROUNDS):
            for label, h, path in paths:
                wrk(h.url(path), duration=1)
                _, p50, p99 = wrk(h.url(path), threads=1, connections=1)
                rps, lp50, lp99 = wrk(h.url(path))
                serial[label].append((p50, p99))
                loaded[label].append((rps, lp50, lp99))
                print(f"  round {r + 1} {label}: c1 p50 {p50:.3f} p99 {p99:.3f}; c{CONNECTIONS} {rps:,.0f} req/s")
        med = lambda xs, i: statistics.median(x[i] for x in xs)
        lines += [
            f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores: three release hosts and one "
            f"nats-server on loopback, all on this machine. Latency with wrk -t1 -c1 -d{DURATION}s, throughput "
            f"with wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s; median of {ROUNDS} alternating rounds.",
            "",
            "| path | p50 ms (c1) | p99 ms (c1) | req/s (c32) | p50 ms (c32) | p99 ms (c32) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, _, _ in paths:
            lines.append(f"| {label} | {med(serial[label], 0):.3f} | {med(serial[label], 1):.3f} | "
                         f"{med(loaded[label], 0):,.0f} | {med(loaded[label], 1):.2f} | {med(loaded[label], 2):.2f} |")
        fwd = (med(serial[paths[1][0]], 0) - med(serial[paths[0][0]], 0)) * 1000
        call = (med(serial[paths[3][0]], 0) - med(serial[paths[2][0]], 0)) * 1000
        lines += ["", f"Forwarding adds {fwd:.0f} µs at p50 (target: at most 300 µs); a cross-host service call "
                      f"adds {call:.0f} µs over an in-process one."]

        # Convergence: ten apps deployed one after another to a; each timed from the
        # deploy command's start until b and c both answer its route.
        times = []
        for i in range(10):
            m = data / f"app{i}.toml"
            m.write_text(f'manifest_version = 1\n[app]\nname = "app{i}"\nversion = "1.0.0"\n'
                         f'[components.hello]\nsource = "{hello}"\nroutes = ["GET /app{i}"]\n'
                         f'env = {{ GREETING = "app{i}" }}\n')
            t0 = time.perf_counter()
            a.deploy(m)
            for h in (b, c):
                while True:
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
                        get(conn, f"/app{i}")
                        conn.close()
                        break
                    except Exception:
                        time.sleep(0.005)
            times.append(time.perf_counter() - t0)
        lines += ["", f"Convergence, 3 hosts, 10 apps deployed one after another to host a (the deploy command "
                      f"included: upload, checks, writing the record): from the deploy's start until hosts b and c "
                      f"both serve the app: median {statistics.median(times) * 1000:.0f} ms, max "
                      f"{max(times) * 1000:.0f} ms (target: under 2 s). Every app uses the same component bytes, "
                      f"already compiled on each host by the first deploy; a deploy of new bytes adds one compile "
                      f"on each host (they compile in parallel)."]

        # Failover: `solo` runs on one host; kill it and time (1) until a request
        # through another gateway succeeds, (2) until the survivors agree on a new host.
        m = data / "solo.toml"
        m.write_text(f'manifest_version = 1\n[app]\nname = "solo"\nversion = "1.0.0"\n'
                     f'[components.solo]\nsource = "{hello}"\nroutes = ["GET /solo"]\n'
                     '[components.solo.placement]\nhosts = 1\n')
        a.deploy(m)
        time.sleep(1)
        owner = None
        while owner is None:
            for name, h in hosts.items():
                if any(x["name"] == "solo" and x["placed_here"] for x in h.status()):
                    owner = name
            time.sleep(0.05)
        survivors = [h for n, h in hosts.items() if n != owner]
        hosts[owner].server.proc.kill()
        t0 = time.perf_counter()
        hosts.pop(owner).server.proc.wait()
        first_ok = None
        failed = 0
        while first_ok is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", survivors[0].port, timeout=5)
                get(conn, "/solo")
                conn.close()
                first_ok = time.perf_counter() - t0
            except Exception:
                failed += 1
                time.sleep(0.01)
        while not any(any(x["name"] == "solo" and x["placed_here"] for x in h.status()) for h in survivors):
            time.sleep(0.05)
        replaced = time.perf_counter() - t0
        lines += ["", f"Failover after SIGKILL of the host running a `hosts = 1` component: the first request "
                      f"through a surviving gateway after the kill succeeded after {first_ok * 1000:.0f} ms "
                      f"({failed} failed before it; the gateway serves it itself when no placed host answers); "
                      f"the survivors placed it on one of them after {replaced:.1f} s (heartbeat TTL 10 s)."]
        lines += ["", "Commands:", "", "```sh", "just bench lattice",
                  "nats-server -a 127.0.0.1 -p PORT -js -sd DIR",
                  "wasmhive up --nats nats://127.0.0.1:PORT --lattice bench --host-name a --label role=a ...  # and b, c",
                  "wrk -t1 -c1 -d6s --latency http://127.0.0.1:PORT_A/hello   # and PORT_B (forwarded)",
                  "```"]
    finally:
        for h in hosts.values():
            h.stop()
        nats.kill()
        nats.wait()
    text = "\n".join(lines)
    print(text)
    write_block("lattice", text)
    shutil.rmtree(data, ignore_errors=True)


SCENARIOS = {
    "http": scenario_http,
    "edge": scenario_edge,
    "mesh": scenario_mesh,
    "lattice": scenario_lattice,
    "kv": scenario_kv,
    "messaging": scenario_messaging,
    "coldstart": scenario_coldstart,
    "density": scenario_density,
    "bulkhead": scenario_bulkhead,
    "noisy": scenario_noisy,
    "instr": scenario_instr,
    "ab": scenario_ab,
}


def main():
    # A backtrace captured for every error a server creates (RUST_BACKTRACE=1 in a
    # developer shell) is not what production pays; measure without it.
    os.environ.pop("RUST_BACKTRACE", None)
    os.environ.pop("RUST_LIB_BACKTRACE", None)
    names = sys.argv[1:] or [n for n in SCENARIOS if n != "ab"]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")
    build()
    for name in names:
        print(f"== {name}")
        SCENARIOS[name]()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""wasmhive benchmarks: `just bench [SCENARIO...]`.

Scenarios:
  http    the hello route under wasmhive, `wasmtime serve` 48.0.8 (defaults and tuned
          pooling flags) and a native hyper server, alternating, with wrk on loopback.

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


def wrk(url, duration=DURATION):
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", url]
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
    """variants: list of (name, start() -> (Server, url)). Alternates them ROUNDS times."""
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
    subprocess.run(["cargo", "build", "--release", "-p", "wasmhive", "-p", "native-hello"], cwd=ROOT, check=True)


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

    def start_wasmhive():
        port, admin = free_port(), free_port()
        s = Server("wasmhive", [str(wasmhive), "--log-format", "json", "up", str(manifest), "--http", f"127.0.0.1:{port}",
                                "--admin", f"127.0.0.1:{admin}", "--data-dir", str(data / "data")], port,
                   env={"WASMHIVE_LOG": "warn"}, ready_line="ready")
        return s, f"http://127.0.0.1:{port}/hello"

    def start_wasmtime(extra):
        def start():
            port = free_port()
            s = Server("wasmtime", [wasmtime, "serve", "-Scli", *extra, "--addr", f"127.0.0.1:{port}", str(hello)], port)
            return s, f"http://127.0.0.1:{port}/hello"
        return start

    def start_native():
        port = free_port()
        return Server("native", [str(native), f"127.0.0.1:{port}"], port), f"http://127.0.0.1:{port}/hello"

    tuned = ["-O", "pooling-allocator", "-O", "pooling-memory-keep-resident=16777216",
             "-O", "pooling-table-keep-resident=1048576", "-O", "pooling-async-stack-keep-resident=1048576"]
    variants = [("wasmhive (fresh instance per request)", start_wasmhive)]
    notes = []
    if wasmtime:
        version = subprocess.run([wasmtime, "--version"], capture_output=True, text=True).stdout.strip()
        variants += [
            (f"`wasmtime serve` defaults ({version})", start_wasmtime([])),
            ("`wasmtime serve` tuned pooling", start_wasmtime(tuned)),
        ]
    else:
        notes.append("`wasmtime` 48.0.8 was not found (cargo install wasmtime-cli --version 48.0.8 --locked); "
                     "its rows are missing.")
    variants.append(("native hyper (no wasm, upper bound)", start_native))
    rows = measure_rounds(variants)
    commands = [
        "just bench http",
        f"target/release/wasmhive up hello.toml --http 127.0.0.1:PORT   # hello.toml: one route, GET /hello",
        f"wasmtime serve -Scli --addr 127.0.0.1:PORT {hello.relative_to(ROOT)}",
        f"wasmtime serve -Scli {' '.join(tuned)} --addr 127.0.0.1:PORT {hello.relative_to(ROOT)}",
        "target/release/native-hello 127.0.0.1:PORT",
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s --latency http://127.0.0.1:PORT/hello",
    ]
    text = render(rows, commands, notes)
    print(text)
    write_block("http", text)
    shutil.rmtree(data, ignore_errors=True)


SCENARIOS = {"http": scenario_http}


def main():
    names = sys.argv[1:] or list(SCENARIOS)
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

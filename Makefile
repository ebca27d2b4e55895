# Courier: two commands on a fresh Debian machine.
#   make run    builds and starts the server (RocksDB in ./data, listening on 127.0.0.1:7878)
#   make run-web  the same, plus the web chat page on http://127.0.0.1:7880/ (WebSocket)
#   make test   runs the whole test suite
# Both install what the build needs first (scripts/install-deps.sh). Cargo builds into one
# stable target directory outside the clone (.cargo/config.toml), with one profile for tests,
# runs and benchmarks, so RocksDB's C++ is compiled once per machine.

CARGO ?= cargo
DATA ?= ./data
LISTEN ?= 127.0.0.1:7878
# Where cargo puts binaries (.cargo/config.toml, or CARGO_TARGET_DIR), asked of cargo itself.
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

.PHONY: run run-web test test-js test-web deps lint bench build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

# Runs the binary `build` made: `cargo run --bin courier` would unify features differently
# from `cargo build --workspace --bins` and compile the server a second time.
run: build
	$(TARGET_DIR)/debug/courier serve --data-dir $(DATA) --listen $(LISTEN)

# The server with its WebSocket listener serving the web chat page: open
# http://$(LISTEN_WS)/ in a browser. Plaintext until the TypeScript library speaks Noise.
LISTEN_WS ?= 127.0.0.1:7880
run-web: build
	@scripts/install-node.sh
	cd sdk/js && npm ci --no-audit --no-fund --loglevel=error && npm run build:web
	$(TARGET_DIR)/debug/courier serve --data-dir $(DATA) --listen $(LISTEN) \
		--listen-ws $(LISTEN_WS) --web-root web

# The tests run binaries of other packages (courier-cli, courier-loadgen), which
# `cargo test --workspace` does not build for them: build every binary first.
test: build test-js test-web
	$(CARGO) test --workspace

# The TypeScript client library: Node 18+ and npm (installed from the distribution when
# missing), its locked dev dependencies, then type-check and `node --test`. Its tests against
# the real server use the binary `build` made, and are skipped (saying so) when there is none.
COURIER_BIN ?= $(TARGET_DIR)/debug/courier
test-js:
	@scripts/install-node.sh
	cd sdk/js && npm ci --no-audit --no-fund --loglevel=error && COURIER_BIN="$(COURIER_BIN)" npm test

# The web page in headless Chromium (Debian's, installed when missing), two users against the
# built server's WebSocket listener, which also serves the page; screenshots land in web/test-artifacts/.
test-web: build
	@scripts/install-node.sh
	@scripts/install-browser.sh
	cd sdk/js && npm ci --no-audit --no-fund --loglevel=error && npm run build:web
	cd web && npm ci --no-audit --no-fund --loglevel=error && COURIER_BIN="$(COURIER_BIN)" npm test

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: deps
	$(CARGO) bench --profile dev --bench codec

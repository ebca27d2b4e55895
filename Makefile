# Courier: two commands on a fresh Debian machine.
#   make run    builds and starts the server (RocksDB in ./data, listening on 127.0.0.1:7878)
#   make test   runs the whole test suite
# Both install what the build needs first (scripts/install-deps.sh). Cargo builds into one
# stable target directory outside the clone (.cargo/config.toml), with one profile for tests,
# runs and benchmarks, so RocksDB's C++ is compiled once per machine.

CARGO ?= cargo
DATA ?= ./data
LISTEN ?= 127.0.0.1:7878

.PHONY: run test deps lint bench build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

run: build
	$(CARGO) run --bin courier -- serve --data-dir $(DATA) --listen $(LISTEN)

test: deps
	$(CARGO) test --workspace

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: deps
	$(CARGO) bench --profile dev --bench codec

# weft: build, lint, test and demo.
# The integration tests and the demo build throwaway network namespaces and run the real weft
# binaries in them, so they need root and iproute2 + ping; `deps` installs those on Debian.

CARGO ?= cargo
# rustup puts cargo here; a non-login shell (CI) may not have it on PATH.
export PATH := $(PATH):$(HOME)/.cargo/bin

.PHONY: deps build test demo lint bench

deps:
	@if ! command -v ip >/dev/null || ! command -v bridge >/dev/null || ! command -v ping >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y iproute2 iputils-ping; \
	fi

# cargo test builds no binaries of other packages, and the integration tests run all three.
build:
	$(CARGO) build --workspace --bins

test: deps build
	$(CARGO) test --workspace

demo: deps build
	$(CARGO) run --quiet -p weft-integration --bin weft-demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Run by hand, not in CI (a few minutes, needs root): weft-agent programming 10,000 remote
# endpoints against iproute2 batch files; see BENCHMARKS.md. Release builds, as in production.
bench: deps
	$(CARGO) build --workspace --bins --release
	$(CARGO) run --quiet --release -p weft-integration --bin weft-bench-fdb

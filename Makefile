# weft: build, lint, test and demo.
# The integration tests and the demo build throwaway network namespaces and run the real weft
# binaries in them, so they need root and iproute2 + ping; the tests with real containers also
# need Podman (its Docker API, driven by the Docker CLI the machine comes with). `deps` installs
# what is missing on Debian.

CARGO ?= cargo
# pipefail: `make test` pipes cargo's output and must still fail when a test does.
SHELL := /bin/bash
# rustup puts cargo here; a non-login shell (CI) may not have it on PATH.
export PATH := $(PATH):$(HOME)/.cargo/bin

.PHONY: deps build test demo lint bench fuzz

# ip, bridge, ss; ping; Podman's API service and its runtime; dockerd (docker.io), a real Docker
# Engine per test host for weft's network driver; the test containers' image; dig;
# dnsmasq, a real upstream resolver for the DNS tests (the binary only, no service); etcd and
# etcdctl for the etcd store's tests (run in namespaces); protoc, which etcd-client's build needs;
# nft, through which the agent masquerades and whose counters count frames in the tests; promtool (prometheus) and curl, which
# check and scrape the metrics; the reference CNI plugins (portmap chained after weft's, and
# Podman's CNI backend's loopback).
DEB_PACKAGES := iproute2 iputils-ping podman runc docker.io busybox-static bind9-dnsutils dnsmasq-base \
	etcd-server etcd-client protobuf-compiler nftables prometheus curl containernetworking-plugins \
	wireguard-go tcpdump

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -qx 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# cargo test builds no binaries of other packages, and the integration tests run all three.
build:
	$(CARGO) build --workspace --bins

# The last line totals every test binary's result (cargo's own last line is often a doc-test
# run with nothing in it).
test: deps build
	mkdir -p target; set -o pipefail; $(CARGO) test --workspace 2>&1 | tee target/test-output.txt
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.txt

demo: deps build
	$(CARGO) run --quiet -p weft-integration --bin weft-demo

# By hand, not in CI: each target (ADDR parser, container references, every controller request)
# runs random cases for FUZZ_SECS seconds; `make test` runs one quick batch of each.
FUZZ_SECS ?= 60
fuzz:
	WEFT_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p weft-fuzz -- --nocapture --test-threads 1

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Run by hand, not in CI (over 40 minutes, needs root); method and figures in BENCHMARKS.md.
# Release builds, as in production. Each benchmark has its own target; `bench` runs them all.
BENCHES := fdb datapath converge attach controller stores failover probes docker encrypt dns
RUN_BENCH = $(CARGO) run --quiet --release -p weft-bench --bin weft-bench-

.PHONY: bench-deps bench-build $(addprefix bench-,$(BENCHES))

# iperf3 drives the datapath benchmark; the CNI reference plugins are the attach baseline;
# dnsperf queries weft's DNS and dnsmasq (installed by deps) side by side.
bench-deps: deps
	@if ! command -v iperf3 >/dev/null || ! command -v dnsperf >/dev/null || [ ! -x /usr/lib/cni/bridge ] || [ ! -x /usr/lib/cni/host-local ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 dnsperf containernetworking-plugins; \
	fi

bench-build: bench-deps
	$(CARGO) build --workspace --bins --release

bench: bench-build
	@for b in $(BENCHES); do $(RUN_BENCH)$$b || exit 1; done

# ARGS go to the one benchmark run, e.g. `make bench-datapath ARGS=--control`.
$(addprefix bench-,$(BENCHES)): bench-%: bench-build
	$(RUN_BENCH)$* -- $(ARGS)

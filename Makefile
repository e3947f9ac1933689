# Spindle's build. `make demo` and `make test` are all a fresh machine needs.

CARGO ?= cargo
WASM_TARGET := wasm32-unknown-unknown
WASM_OUT := target/$(WASM_TARGET)/wasm
FILTERS_DIR := target/filters
COMPONENTIZE := target/debug/spindle-componentize
# crate name -> output name
FILTER_CRATES := spindle-filter-router:router spindle-filter-balancer:balancer \
	spindle-filter-retry:retry spindle-filter-breaker:breaker \
	spindle-filter-testbed:testbed hello-filter:hello \
	spindle-filter-ratelimit:ratelimit spindle-filter-headers:headers spindle-filter-fault:fault \
	spindle-filter-raw:raw
WASM_CRATES := spindle-sdk $(foreach f,$(FILTER_CRATES),$(firstword $(subst :, ,$(f))))

.PHONY: all setup test-deps build filters host demo test fmt-check clippy unit clean bench bench-deps bench-load bench-micro bench-icount release-pgo test-pgo

all: build

# Installs what the build needs: the Wasm target of the pinned toolchain.
setup:
	@command -v rustup >/dev/null 2>&1 && { rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET); } || true

# One build of the whole workspace (host, tools, demo services): building
# single packages would unify features differently and build wasmtime twice.
$(COMPONENTIZE): setup FORCE
	$(CARGO) build -q --workspace

# The standard filters (and the test and example filters) as components.
filters: setup $(COMPONENTIZE)
	$(CARGO) build -q --profile wasm --target $(WASM_TARGET) $(foreach f,$(FILTER_CRATES),-p $(firstword $(subst :, ,$(f))))
	@mkdir -p $(FILTERS_DIR)
	@set -e; for pair in $(FILTER_CRATES); do \
		crate=$${pair%%:*}; name=$${pair##*:}; file=$$(echo $$crate | tr - _); \
		$(COMPONENTIZE) $(WASM_OUT)/$$file.wasm -o $(FILTERS_DIR)/$$name.wasm; \
	done
	@echo "filters: $$(ls $(FILTERS_DIR) | tr '\n' ' ')"

host: setup
	$(CARGO) build --release -p spindle-host -p demo-upstream

# The binary at target/release/spindle, the filters at target/filters/*.wasm.
build: filters host

demo: build
	bash examples/quickstart/run.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: setup
	$(CARGO) clippy -q --workspace --all-targets -- -D warnings
	$(CARGO) clippy -q --target $(WASM_TARGET) $(foreach c,$(WASM_CRATES),-p $(c)) -- -D warnings

# Test tools from Debian's package `prometheus`: promtool checks /metrics and the
# example scrape config; the prometheus server scrapes spindle in tests/prometheus.rs.
test-deps:
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# Unit tests, the filters' native tests, and the integration tests (which
# start the real debug binary with the Wasm filters built above).
unit: filters test-deps
	$(CARGO) build -q --workspace
	$(CARGO) test -q --workspace

test: fmt-check clippy unit

# The integration tests against the profile-guided build instead of the debug one: the binary
# the benchmarks measure and production ships passes the same tests (not part of `make test`).
test-pgo: filters test-deps release-pgo
	SPINDLE_BIN=$(CURDIR)/target/pgo/spindle $(CARGO) test -q -p spindle-tests

# Benchmark tools from Debian: wrk drives the load, nginx and haproxy are the proxies Spindle is
# compared with, python3 holds the idle connections, valgrind counts instructions. Installing a
# Debian package of a server starts its system service where systemd runs; the benchmark starts
# its own processes on loopback ports, so the services this installs are stopped and disabled
# again. oha (crates.io) drives the fixed-rate runs; it goes to target/bench-tools (about 8
# minutes the first time: it builds rustls's crypto; 1.16 does not build without a TLS feature).
OHA_VERSION := 1.16.0
bench-deps: target/bench-tools/bin/oha
target/bench-tools/bin/oha:
	$(CARGO) install oha --version $(OHA_VERSION) --locked --root $(CURDIR)/target/bench-tools

bench-deps:
	@missing=""; \
	for tool in wrk nginx haproxy python3 valgrind curl; do \
		command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; \
	done; \
	command -v nstat >/dev/null 2>&1 || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
		echo "bench-deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		for svc in nginx haproxy; do \
			case " $$missing " in *" $$svc "*) \
				if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet $$svc 2>/dev/null; then \
					systemctl disable --now --quiet $$svc || true; \
				fi;; \
			esac; \
		done; \
	fi

# The profile-guided release build at target/pgo/spindle (bench/pgo.sh: about 15 minutes the
# first time; skipped while the host's sources are unchanged).
release-pgo: build bench-deps
	bash bench/pgo.sh

# The load and instruction benchmarks measure the profile-guided build (the load benchmark
# with the plain release build's 4-filter chain as one more row); PGO=0 measures the plain
# release build (target/release/spindle) alone.
PGO ?= 1
ifeq ($(PGO),0)
BENCH_BUILD :=
BENCH_SPINDLE := $(CURDIR)/target/release/spindle
BENCH_OTHER :=
else
BENCH_BUILD := release-pgo
BENCH_SPINDLE := $(CURDIR)/target/pgo/spindle
BENCH_OTHER := $(CURDIR)/target/release/spindle
endif

# The end-to-end load benchmark (bench/load.sh: about 7 minutes, results in bench/RESULTS.md).
# Not part of `make test`.
bench-load: build bench-deps $(BENCH_BUILD)
	SPINDLE_BIN=$(BENCH_SPINDLE) OTHER_BIN=$(BENCH_OTHER) bash bench/load.sh

# Instructions per proxied request for the 2- and 4-filter chains, nginx and HAProxy, under
# callgrind (bench/icount.sh, about 5 minutes): repeatable where times on a shared machine are not.
bench-icount: build bench-deps $(BENCH_BUILD)
	SPINDLE_BIN=$(BENCH_SPINDLE) bash bench/icount.sh

# Criterion micro-benchmarks of the real hook calls, the four-filter chain, the
# instance pool and the shared store (host/benches/micro.rs, about 2 minutes;
# reports in target/criterion).
bench-micro: filters
	$(CARGO) bench -p spindle-host

# Both benchmarks: the micro-benchmarks, then the load benchmark.
bench: bench-micro bench-load

clean:
	$(CARGO) clean

FORCE:

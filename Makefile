# inference-gateway: the two commands the README starts with are `make run` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: run build release dist test lint fmt bench bench-peers deps clean

## Build (release) the gateway and igw, and run the gateway with zero configuration on :8080.
run: release
	./target/release/inference-gateway $(ARGS)

release:
	@scripts/deps.sh build
	$(CARGO) build --release --locked -p inference-gateway -p igw

## The binaries as shipped: stripped, their debug info split off beside them (target/dist).
dist: release
	mkdir -p target/dist
	for b in inference-gateway igw; do \
	  objcopy --only-keep-debug target/release/$$b target/dist/$$b.debug && \
	  objcopy --strip-all --add-gnu-debuglink=target/dist/$$b.debug target/release/$$b target/dist/$$b; \
	done
	@ls -l target/dist

build:
	@scripts/deps.sh build
	$(CARGO) build --locked

## Every test (unit, black-box, SDK compatibility), then format and lint checks.
test:
	@scripts/deps.sh test
	$(CARGO) test --workspace --locked
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## Load measurement against a mock upstream (needs wrk; see docs/PERFORMANCE.md).
bench: release
	$(CARGO) build --release --locked --example mock_upstream
	benches/load.sh

## The gateway beside LiteLLM and Portkey on the same mock (installs them into target/peers).
bench-peers:
	scripts/bench-peers.sh

clean:
	$(CARGO) clean

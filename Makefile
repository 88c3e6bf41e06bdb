# baton: `make demo` to see it run, `make test` to test it.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: all build crds test bench demo demo-down cluster-up cluster-down clean

all: build

build:
	$(CARGO) build --release --bins

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run --quiet --bin crdgen -- crds

## Every test: unit, property, CRD-in-sync, offline validation, end-to-end
## against the local control plane (built on first use).
test: cluster-up
	$(CARGO) test --all-targets -- --test-threads 4
	$(CARGO) run --quiet --bin baton -- validate config/samples/*.yaml
	KUBECONFIG=$(CURDIR)/target/e2e/kubeconfig kubectl apply --dry-run=server -f crds/

## The local control plane, three controllers, the samples and a failover.
demo:
	e2e/demo

demo-down:
	e2e/demo down

cluster-up:
	e2e/cluster up >/dev/null

cluster-down:
	e2e/cluster down

bench:
	$(CARGO) bench --bench validate

clean:
	$(CARGO) clean

# baton: `make demo` to see it run, `make test` to test it.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# CI builds once from clean: incremental state would only take disk.
ifdef CI
export CARGO_INCREMENTAL := 0
endif
# Tests and the chaos suite build the controller with its failpoints (the
# end-to-end tests configure them); `make build` and the benchmarks do not.
TEST_FEATURES := --features failpoints
# Debian packages some tests need, installed when missing.
APT_INSTALL := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: all build image crds test test-real-node browser bench-ui screenshots bench bench-runs bench-scale bench-webhook bench-compare argo demo demo-down cluster-up cluster-down helm chart chaos clean

all: build

build:
	$(CARGO) build --release --bins

## baton's controller image as a tarball, without Docker (e2e/README.md,
## "The real node"); imported into the real node when it runs.
image: build
	e2e/cluster image

## Regenerate crds/ from the Rust types (and the chart's and kustomize's copies).
crds:
	$(CARGO) run --quiet --bin crdgen -- crds
	rm -f charts/baton/crds/*.yaml && cp crds/*.yaml charts/baton/crds/
	find config/crd -name '*.yaml' ! -name kustomization.yaml -delete && cp crds/*.yaml config/crd/

## Every test: unit, property, CRD-in-sync, offline validation, end-to-end
## against the local control plane (built on first use), the chaos suite in
## its short CI setting, then the real-node tests (test-real-node).
##
## The real node changes the control plane (ServiceAccount admission, the
## API server on the node's address, more controllers), so everything else
## runs first on the plain one: a real node left up by an earlier run is
## taken down before.
test: helm browser
	@if [[ -f target/e2e/real-node/machine.orig ]]; then e2e/cluster down >/dev/null; fi
	BATON_E2E_REAL_NODE=0 e2e/cluster up >/dev/null
	BATON_E2E_REAL_NODE=0 CHAOS_DURATION=90s $(CARGO) test $(TEST_FEATURES) --all-targets -- --test-threads 4 --skip real_node::
	$(CARGO) run --quiet --bin baton -- validate config/samples/*.yaml
	KUBECONFIG=$(CURDIR)/target/e2e/kubeconfig kubectl apply --dry-run=server -f crds/
	@$(MAKE) --no-print-directory test-real-node

## The tests on the real node (e2e/real_node.rs), where this machine can run
## one (BATON_E2E_REAL_NODE: auto; required fails instead of skipping, as
## .ci/run sets it): the node, the release image (make image), Lua 5.1,
## the tests. The node stays up, like the rest of the control plane.
test-real-node: helm
	@mode=$${BATON_E2E_REAL_NODE:-auto}; set -e; \
	e2e/cluster up --real-node=$$mode >/dev/null; \
	if [[ -f target/e2e/real-node.skipped ]]; then \
		echo "SKIPPED the real-node tests (e2e/real_node.rs): $$(cat target/e2e/real-node.skipped)"; \
	else \
		$(CARGO) build --release --bin baton-controller; \
		e2e/cluster image >/dev/null; \
		command -v lua5.1 >/dev/null || { $(APT_INSTALL) lua5.1 >/dev/null; }; \
		BATON_E2E_REAL_NODE=$$mode $(CARGO) test $(TEST_FEATURES) --test e2e real_node:: -- --test-threads 2; \
	fi

## The local control plane, three controllers, the samples and a failover
## (REAL=1: the sample tasks in real containers on the real node).
demo:
	REAL=$(REAL) e2e/demo

demo-down:
	e2e/demo down

## Failover chaos suite (e2e/chaos/): faults, requests and moves for
## CHAOS_DURATION (default 10m), then the invariants and a summary table.
## CHAOS_SEED replays.
chaos: cluster-up
	CHAOS_DURATION=$${CHAOS_DURATION:-10m} $(CARGO) test $(TEST_FEATURES) --test chaos

cluster-up:
	e2e/cluster up >/dev/null

cluster-down:
	e2e/cluster down

## Debian's chromium and chromedriver, for the UI's end-to-end tests (e2e/ui.rs).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(APT_INSTALL) chromium chromium-driver >/dev/null; }

## The pinned helm (e2e/harness/helm/go.mod), built once into the e2e cache.
helm:
	e2e/helm build >/dev/null

## Lint the chart and print its default render.
chart: helm
	e2e/helm lint --strict charts/baton
	e2e/helm template baton charts/baton --namespace baton-system

## Offline: validation of big workflows, and one planner step of a run
## with a 1,000-item fan-out (and that run's status size).
bench:
	$(CARGO) bench --bench validate
	$(CARGO) bench --bench planner

## 1,000 runs against the local control plane (BENCH_RUNS=n to change).
bench-runs: cluster-up
	$(CARGO) bench --bench runs

## Memory and start-to-ready of one controller with 10,000 finished runs
## and their pods cached (BENCH_FINISHED=n to change).
bench-scale: cluster-up
	$(CARGO) bench --bench scale

## Pod-create latency (p50/p99) with and without the admission webhook, on
## the local control plane (BENCH_PODS=n creates of each, default 300).
bench-webhook: cluster-up
	$(CARGO) bench --bench webhook

## Bare pods (the floor), baton and Argo Workflows side by side on the local
## control plane: 500 single-task runs, 100 diamonds, 20 runs/s for 60 s
## (e2e/README.md: BENCH_SINGLE, BENCH_DIAMONDS, BENCH_RATE,
## BENCH_STEADY_SECS, BENCH_ENGINES, BENCH_WORKLOADS). Prints one table per
## workload and writes target/bench-compare.md.
bench-compare: cluster-up argo
	$(CARGO) bench --bench compare

## baton ui's first paint, and the page of a run of 1,000 tasks, in headless chromium.
bench-ui: cluster-up browser
	$(CARGO) bench --bench ui

## The screenshot in README.md (docs/ui-run.png), taken by the UI's end-to-end test.
screenshots: cluster-up browser
	UI_SCREENSHOT_DIR=$(CURDIR)/docs $(CARGO) test --test e2e -- ui::the_ui_shows_a_live_diamond_and_stops_it

## The pinned Argo workflow-controller (e2e/harness/argo/go.mod), built once into the e2e cache.
argo:
	e2e/argo build >/dev/null

clean:
	$(CARGO) clean

# featx — set up with `make install`, test with `make test`.
# Every recipe runs in bash with -e and pipefail: a failed step fails the target.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv

.PHONY: install system-deps test test-unit bench bench-gpu control-plane image image-cpu local-kind local-kind-down local-cluster local-cluster-down clean

install: system-deps $(BIN)/featx control-plane ## Debian packages, venv with pinned deps + featx, kubectl, helm; the control plane and node built once and cached

system-deps: ## Debian packages the suite and the Go builds need (apt as root; otherwise prints the sudo line and fails)
	bash scripts/install-system-deps.sh

$(BIN)/featx: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.9
	$(UV) pip install -q -p $(BIN)/python -r requirements.txt
	$(UV) pip install -q -p $(BIN)/python --no-deps -e .
	touch $@

control-plane: ## etcd, kube-*, kwok, helm, kubelet, containerd, runc, CoreDNS (cached in ~/.cache/featx/tools); helm into .venv/bin
	out="$$(PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/build-control-plane.sh)"; \
	  bin_dir="$${out##*$$'\n'}"; \
	  test -x "$$bin_dir/helm" || { echo "control-plane: no helm in '$$bin_dir'" >&2; exit 1; }; \
	  ln -sfn "$$bin_dir/helm" $(BIN)/helm

test: ## the whole suite; starts the Docker engine (the real-node tier's images), SeaweedFS and the control plane
	[ "$${FEATX_SKIP_E2E:-0}" = 1 ] || bash scripts/ensure-dockerd.sh
	env -u PYTHONDONTWRITEBYTECODE PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

test-unit: ## no services: skips the S3, Kubernetes and real-node tiers
	env -u PYTHONDONTWRITEBYTECODE PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not s3 and not k8s and not e2e"

bench: ## CPU benchmarks (featx vs the reference loops: extraction, alignment; the memory estimator), then the README's table from their results
	$(BIN)/python -m bench.extract --mode cpu --device cpu
	$(BIN)/python -m bench.align
	$(BIN)/python -m bench.estimator
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.report --update-readme

bench-gpu: ## GPU extraction benchmark (7B-class configs, real-size ViTs, MFU), then the README's table
	$(BIN)/python -m bench.extract --mode gpu --device cuda
	$(BIN)/python -m bench.report --update-readme

IMAGE ?= featx
IMAGE_TAG ?= dev

image: ## GPU image featx:dev (PyPI's torch 2.14.1 with its CUDA 13.0 runtime, by hash; skipped when unchanged)
	IMAGE=$(IMAGE):$(IMAGE_TAG) FEATX_IMAGE_FLAVOR=cuda bash scripts/build-images.sh

image-cpu: ## CPU image for kind and CI: featx-cpu:dev (skipped when nothing that goes into it changed)
	IMAGE=$(IMAGE)-cpu:$(IMAGE_TAG) FEATX_IMAGE_FLAVOR=cpu bash scripts/build-images.sh

local-kind: ## kind + SeaweedFS + the chart (smoke modelset, CPU); waits, prints featx status
	bash scripts/local-kind.sh

local-kind-down: ## delete the kind cluster of local-kind
	bash scripts/local-kind-down.sh

local-cluster: ## no kind, no registry (Linux, root, Docker engine): control plane + a real node + the chart
	bash scripts/local-cluster.sh

local-cluster-down: ## remove the cluster of local-cluster
	$(BIN)/python -m localcluster.local down

clean:
	rm -rf results .pytest_cache

# gpulet: build, test, benchmark, demo. `make help` lists the targets.
GO      ?= go
# The release version: the git tag on HEAD (v1.2.3), else v0.0.0-<commit time>-<commit> (hack/version.sh);
# `gpulet version`, gpulet_build_info, the image tag and the chart's appVersion carry it.
VERSION ?= $(shell hack/version.sh)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# Reproducible builds: every time in the image is the commit's (mkimage.sh reads it).
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH
LDFLAGS := -X github.com/gpulet/gpulet/internal/version.version=$(VERSION) -X github.com/gpulet/gpulet/internal/version.commit=$(COMMIT)
# go-nvml's header marks old NVML calls deprecated; the warnings are noise.
export CGO_CFLAGS ?= -Wno-deprecated-declarations

.PHONY: help build build-release build-release-arm64 build-lean image image-reproducible chart cross-deps build-static test unit vet tidy-check fuzz bench demo e2e clean

help:
	@echo "make demo        run gpulet on a simulated GPU node against kubelet's own device manager"
	@echo "make test        every test (unit tests with -race, then kubelet's device manager against gpulet)"
	@echo "make bench       benchmarks (results: docs/benchmarks.md)"
	@echo "make bench-sbs   gpulet against NVIDIA's plugin (+GFD) on NVIDIA's mock NVML, side by side (root)"
	@echo "make e2e         the seed walkthrough on a real single-node Kubernetes (root, several minutes)"
	@echo "make build       _output/gpulet (cgo, NVML-capable)"
	@echo "make image       _output/gpulet-image.tar: the release image (linux/amd64 + linux/arm64), built without Docker"
	@echo "make image-reproducible  build the image twice (fresh Go cache, another checkout path): same digests"
	@echo "make chart       _output/gpulet-<version>.tgz: the Helm chart, appVersion = the image tag"
	@echo "make build-static _output/gpulet-static (no cgo: simulator only)"
	@echo "make build-lean  _output/gpulet-lean: device plugin, metrics, health, CDI, MPS; no Kubernetes API (labels, DRA)"

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o _output/gpulet ./cmd/gpulet

# The release image, without a Docker daemon (hack/image.sh, hack/mkimage.sh): an OCI image index
# of linux/amd64 and linux/arm64, each the cgo binary on that architecture's Debian 12 libc, in a
# tarball that `ctr images import` and `docker load -i` take; make e2e deploys its amd64 image.
IMAGE ?= ghcr.io/gpulet/gpulet:$(VERSION)
image: build-release build-release-arm64
	hack/image.sh amd64=$(RELEASE_BIN),arm64=$(RELEASE_BIN)-arm64 _output/gpulet-image.tar $(IMAGE)

# The binaries of the image: cgo (NVML and libcuda are loaded with dlopen), stripped as the
# Dockerfile's; arm64 with Debian's cross compiler (make cross-deps installs it). Two per platform:
# $(RELEASE_BIN) is the full build (the image's /usr/lib/gpulet/gpulet-kube), $(RELEASE_BIN)-lean the
# build without the Kubernetes API (tag nokube; the image's entry point /usr/bin/gpulet, which execs
# the full build when node labels or DRA are on: hack/image.sh, internal/kubebin).
RELEASE_BIN ?= _output/gpulet-release
GOFLAGS_RELEASE := -trimpath -ldflags "-s -w $(LDFLAGS)"
build-release:
	CGO_ENABLED=1 GOOS=linux GOARCH=amd64 $(GO) build $(GOFLAGS_RELEASE) -o $(RELEASE_BIN) ./cmd/gpulet
	CGO_ENABLED=1 GOOS=linux GOARCH=amd64 $(GO) build -tags nokube $(GOFLAGS_RELEASE) -o $(RELEASE_BIN)-lean ./cmd/gpulet
build-release-arm64: cross-deps
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=aarch64-linux-gnu-gcc $(GO) build $(GOFLAGS_RELEASE) -o $(RELEASE_BIN)-arm64 ./cmd/gpulet
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=aarch64-linux-gnu-gcc $(GO) build -tags nokube $(GOFLAGS_RELEASE) -o $(RELEASE_BIN)-arm64-lean ./cmd/gpulet

# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user-static (Debian 12), if missing.
cross-deps:
	@test/e2e/lib/deps.sh cross

# Two builds of the image from this commit, the second with an empty Go build cache from a copy of
# the checkout at another path: their digests must be the same (hack/reproducible.sh).
image-reproducible:
	hack/reproducible.sh

# gpulet without the Kubernetes API (tag nokube): the device plugin with metrics, health, CDI and MPS,
# but no node labels, DRA, `labels --remove` or `dra`; no client-go, API scheme or DRA helper is
# linked, so it starts faster and uses less memory than NVIDIA's plugin (docs/benchmarks.md).
build-lean:
	CGO_ENABLED=1 $(GO) build -tags nokube -trimpath -ldflags "-s -w $(LDFLAGS)" -o _output/gpulet-lean ./cmd/gpulet

build-static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o _output/gpulet-static ./cmd/gpulet

vet:
	@test -z "$$(gofmt -l cmd internal deploy tools hack 2>/dev/null)" || { gofmt -l cmd internal deploy tools hack; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags nokube ./cmd/gpulet ./internal/daemon ./internal/hardware/nvml
	hack/layers.sh
	hack/shellcheck.sh

# go.mod/go.sum must be what `go mod tidy` writes: a dependency used
# directly is not marked indirect, and no go.sum line is missing or stale.
tidy-check:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

# helm renders the chart in deploy/helm for its test; installed from the
# Go module proxy into _output/bin (cached there).
HELM_VERSION ?= v3.22.0
HELM := $(CURDIR)/_output/bin/helm
$(HELM):
	GOBIN=$(CURDIR)/_output/bin CGO_ENABLED=0 $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

# The Helm chart, packaged: version and appVersion are the release version (the chart's image tag
# defaults to appVersion, so it deploys the image `make image` tags).
chart: $(HELM)
	$(HELM) package deploy/helm/gpulet --version $(patsubst v%,%,$(VERSION)) --app-version $(VERSION) -d _output

# NVIDIA's mock NVML (hack/nvml-mock.sh) and NVIDIA's own device plugin and GFD (gobins.sh nvidia),
# built once and cached; tests that run gpulet's NVML backend or NVIDIA's binaries find them through
# GPULET_NVML_MOCK, GPULET_NVIDIA_BIN and GPULET_NVIDIA_CTK_BIN (nvidia-ctk), and skip without them (plain `go test`).
.PHONY: nvml-mock nvidia-bins
nvml-mock:
	@hack/nvml-mock.sh
nvidia-bins:
	@test/e2e/lib/gobins.sh nvidia

# The arm64 release binary runs under qemu-user in cmd/gpulet's tests (GPULET_ARM64_BIN), also on
# the mock NVML cross-built for arm64 (GPULET_NVML_MOCK_ARM64).
unit: vet tidy-check $(HELM) build-release-arm64
	GPULET_NVML_MOCK=$$(hack/nvml-mock.sh) && GPULET_NVIDIA_BIN=$$(test/e2e/lib/gobins.sh nvidia) && \
	GPULET_NVIDIA_CTK_BIN=$$(test/e2e/lib/gobins.sh ctk) && \
	GPULET_NVML_MOCK_ARM64=$$(hack/nvml-mock.sh arm64) && GPULET_ARM64_BIN=$(CURDIR)/$(RELEASE_BIN)-arm64 && \
	export GPULET_NVML_MOCK GPULET_NVIDIA_BIN GPULET_NVIDIA_CTK_BIN GPULET_NVML_MOCK_ARM64 GPULET_ARM64_BIN && \
	HELM=$(HELM) $(GO) test -race -count=1 ./...
	# make build-lean's daemon (tag nokube): refuses labels and DRA, serves the device plugin.
	$(GO) test -race -count=1 -tags nokube ./internal/daemon

test: unit test-kubelet

# The inner loop: every package's tests without -race, without the tests
# that build binaries or take long (-short). `make test` stays the full suite.
.PHONY: test-short
test-short:
	$(GO) test -short -count=1 ./...

# Short fuzzing of every parser and request handler.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseProfile -fuzztime 20s ./internal/hardware/sim
	$(GO) test -run '^$$' -fuzz FuzzParseFile -fuzztime 20s ./internal/config
	$(GO) test -run '^$$' -fuzz FuzzAllocate -fuzztime 20s ./internal/plugin
	$(GO) test -run '^$$' -fuzz FuzzGetPreferredAllocation -fuzztime 20s ./internal/plugin
	$(GO) test -run '^$$' -fuzz FuzzParseXML -fuzztime 20s ./hack/kubeletstub/smi
	$(GO) test -run '^$$' -fuzz FuzzPreferred -fuzztime 20s ./internal/allocator
	$(GO) test -run '^$$' -fuzz FuzzNewTopology -fuzztime 20s ./internal/allocator
	$(GO) test -run '^$$' -fuzz FuzzParseMIGMinors -fuzztime 20s ./internal/cdispec

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./internal/plugin
	$(GO) test -run '^$$' -bench . ./cmd/gpulet

# gpulet on a simulated DGX H100 against kubelet's own device manager,
# narrated (root: it runs in a private mount namespace; the first run
# compiles the kubelet code).
demo: build
	cd test/devicemanager && CGO_ENABLED=0 nice -n 10 $(GO) test -trimpath -c -o $(CURDIR)/_output/devicemanager.test .
	cd test/devicemanager && GPULET_DEMO=1 GPULET_BIN=$(CURDIR)/_output/gpulet $(CURDIR)/_output/devicemanager.test -test.run='^TestDemo$$' -test.count=1

clean:
	rm -rf _output

.PHONY: e2e
# End-to-end test on a real single-node Kubernetes (root; see test/e2e/README.md).
e2e:
	test/e2e/run.sh

.PHONY: gpu-check-build
# Binaries for hack/gpu-check.sh, which runs on a GPU machine without Go:
# gpulet with cgo (NVML and libcuda are loaded at run time) and its helper.
gpu-check-build:
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o _output/gpulet ./cmd/gpulet
	CGO_ENABLED=1 $(GO) build -trimpath -o _output/kubeletstub ./hack/kubeletstub

.PHONY: test-kubelet
# Kubelet's own device manager (k8s.io/kubernetes v1.37.2, in its own module
# test/devicemanager) against the real `gpulet run` from `make build`: tests,
# then benchmarks (run even when a test fails). Needs root: the test binary
# re-executes itself in a private mount namespace with a tmpfs on /var/lib (as
# non-root everything skips). Built with CGO_ENABLED=0 -trimpath to share the
# e2e Kubernetes build cache: minutes the first time, seconds after.
# TEST_KUBELET_FLAGS adds test flags (e.g. -test.run=TestDGX1);
# TEST_KUBELET_BENCH='^$$' skips the benchmarks.
TEST_KUBELET_BENCH ?= .
test-kubelet: build
	cd test/devicemanager && CGO_ENABLED=0 nice -n 10 $(GO) test -trimpath -c -o $(CURDIR)/_output/devicemanager.test .
	cd test/devicemanager && export GPULET_BIN=$(CURDIR)/_output/gpulet && \
	GPULET_NVML_MOCK=$$($(CURDIR)/hack/nvml-mock.sh) && GPULET_NVIDIA_BIN=$$($(CURDIR)/test/e2e/lib/gobins.sh nvidia) && \
	export GPULET_NVML_MOCK GPULET_NVIDIA_BIN; rc=0; \
	$(CURDIR)/_output/devicemanager.test -test.v -test.count=1 -test.timeout=10m $(TEST_KUBELET_FLAGS) || rc=$$?; \
	$(CURDIR)/_output/devicemanager.test -test.run='^$$' -test.bench='$(TEST_KUBELET_BENCH)' -test.benchtime=20x -test.timeout=10m || rc=$$?; \
	exit $$rc

.PHONY: bench-sbs
# gpulet against NVIDIA's device plugin (and plugin + GFD) on the same mock NVML (H100 profile),
# alternating, printing medians of start → registered, re-registration, kill -9 → back, RSS and
# idle CPU (tools/benchsbs; results in docs/benchmarks.md). Root: each process runs in a private
# mount namespace. BENCH_SBS_FLAGS adds flags (e.g. -runs=5 -idle=60s -only=gpulet,nvidia).
BENCH_SBS_FLAGS ?=
# The image's two binaries are laid out as hack/image.sh lays them out (_output/image: the entry point
# usr/bin/gpulet, the full build usr/lib/gpulet/gpulet-kube); -gpulet-kube also runs the full build alone.
# BENCH_SBS_FLAGS=-cache=extract fills the page cache as containerd's unpacking does (-cache=cold: not at all).
bench-sbs: build-release
	$(GO) build -o _output/benchsbs ./tools/benchsbs
	install -D -m 0755 $(RELEASE_BIN)-lean _output/image/usr/bin/gpulet
	install -D -m 0755 $(RELEASE_BIN) _output/image/usr/lib/gpulet/gpulet-kube
	GPULET_NVML_MOCK=$$(hack/nvml-mock.sh) GPULET_NVIDIA_BIN=$$(test/e2e/lib/gobins.sh nvidia) \
	_output/benchsbs -gpulet=_output/image/usr/bin/gpulet -gpulet-kube=$(RELEASE_BIN) $(BENCH_SBS_FLAGS)

# gpulet image: two builds of gpulet (below) on a distroless base. cgo is on because NVML
# (libnvidia-ml.so.1) is loaded with dlopen at run time; the driver library
# itself comes from the host through the NVIDIA container runtime.
#
# Both bases are pinned by digest (a tag moves; a digest does not). The build
# stage is Debian 12 like the runtime stage, so the cgo binary links the C
# library it runs on. To move to newer images, resolve the tags again and
# replace both digests in one change:
#   docker buildx imagetools inspect golang:1.26-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/base-debian12:nonroot
FROM golang:1.26-bookworm@sha256:116d58cbd88c1297624acc6e967a060012422bacf9930927e23fb719189c6f36 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
# make image is the release build (offline, both architectures, reproducible); this file builds the
# same binaries with Docker for the platform it runs on: pass VERSION=$(hack/version.sh) and
# COMMIT=$(git rev-parse HEAD) as build args.
ARG VERSION=dev
ARG COMMIT=unknown
# Two builds, as hack/image.sh lays them out: the entry point without the Kubernetes API (tag
# nokube), which execs the full build beside it when node labels, DRA or per-node config are on.
RUN CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations \
    go build -trimpath -ldflags "-s -w -X github.com/gpulet/gpulet/internal/version.version=${VERSION} -X github.com/gpulet/gpulet/internal/version.commit=${COMMIT}" -o /out/gpulet-kube ./cmd/gpulet && \
    CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations \
    go build -tags nokube -trimpath -ldflags "-s -w -X github.com/gpulet/gpulet/internal/version.version=${VERSION} -X github.com/gpulet/gpulet/internal/version.commit=${COMMIT}" -o /out/gpulet ./cmd/gpulet

FROM gcr.io/distroless/base-debian12:nonroot@sha256:7f0c72cd138b442ae0deeb69c08b1acf5525439ba251a49ad93c320a061567e5
COPY --from=build /out/gpulet /usr/bin/gpulet
COPY --from=build /out/gpulet-kube /usr/lib/gpulet/gpulet-kube
# Not root by default: the uninstall hook, `gpulet validate` and the CLI need
# no more. The DaemonSet sets runAsUser 0 itself, with no capability, because
# the kubelet's socket folders are root-owned 0750 (docs/security.md).
USER 65532:65532
ENTRYPOINT ["/usr/bin/gpulet"]
CMD ["run"]

# gpulet image: one binary on a distroless base. cgo is on because NVML
# (libnvidia-ml.so.1) is loaded with dlopen at run time; the driver library
# itself comes from the host through the NVIDIA container runtime.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
# make image is the release build (offline, both architectures, reproducible); this file builds the
# same binary with Docker for the platform it runs on: pass VERSION=$(hack/version.sh) and
# COMMIT=$(git rev-parse HEAD) as build args.
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations \
    go build -trimpath -ldflags "-s -w -X github.com/gpulet/gpulet/internal/version.version=${VERSION} -X github.com/gpulet/gpulet/internal/version.commit=${COMMIT}" -o /out/gpulet ./cmd/gpulet

FROM gcr.io/distroless/base-debian12
COPY --from=build /out/gpulet /usr/bin/gpulet
ENTRYPOINT ["/usr/bin/gpulet"]
CMD ["run"]

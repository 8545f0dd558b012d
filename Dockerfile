# gpulet image: one binary on a distroless base. cgo is on because NVML
# (libnvidia-ml.so.1) is loaded with dlopen at run time; the driver library
# itself comes from the host through the NVIDIA container runtime.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
ARG VERSION=dev
RUN CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gpulet ./cmd/gpulet

FROM gcr.io/distroless/base-debian12
COPY --from=build /out/gpulet /usr/bin/gpulet
ENTRYPOINT ["/usr/bin/gpulet"]
CMD ["run"]

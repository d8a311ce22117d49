# syntax=docker/dockerfile:1
#
# Two images from one file (see docker-compose.yml):
#   docker build --target server  -t keel-server .    # CPU build, debian:bookworm-slim
#   docker build --target trainer -t keel-trainer .   # --features cuda, CUDA runtime image
#
# The builder is Ubuntu 22.04 (glibc 2.35), so the CPU binary also runs on Debian bookworm
# (glibc 2.36). candle compiles its kernels to PTX that the host's driver JIT-compiles: the
# driver must support CUDA_VERSION (12.8 needs driver 570 or newer; use e.g. 12.4.1 for 550).
# cudarc 0.19 knows CUDA 11.4–12.6, 12.8, 12.9 and 13.x (not 12.7).

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=22.04

# ---- builder: CUDA toolkit (nvcc), a C toolchain, Rust from rustup, the sources ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder
ARG RUST_TOOLCHAIN=stable
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain "${RUST_TOOLCHAIN}" \
    && rustc --version
WORKDIR /src
COPY . .
# The image has no .git: `keel --version` shows the revision passed here
# (`--build-arg KEEL_GIT_REV=$(git rev-parse --short=12 HEAD)`).
ARG KEEL_GIT_REV=unknown
ENV KEEL_GIT_REV=${KEEL_GIT_REV}

# ---- the CPU build, for the server ----
FROM builder AS build-cpu
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=keel-target-cpu \
    cargo build --release --locked --bin keel \
    && cp target/release/keel /usr/local/bin/keel

# ---- the CUDA build, for the trainer ----
FROM builder AS build-cuda
# No GPU is visible while building: candle's kernels are compiled for this compute
# capability (80 = A100; its PTX also runs on newer GPUs such as the H100, 90).
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=keel-target-cuda \
    cargo build --release --locked --bin keel --features cuda \
    && cp target/release/keel /usr/local/bin/keel

# ---- server: keel serve ----
FROM debian:bookworm-slim AS server
# curl for the healthcheck. The pages' assets, the configs, the grids and the charts' font are
# inside the binary.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --create-home --uid 10001 keel \
    && mkdir -p /data && chown keel:keel /data
COPY --from=build-cpu /usr/local/bin/keel /usr/local/bin/keel
WORKDIR /app
USER keel
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["keel"]
CMD ["serve", "--addr", "0.0.0.0:8080", "--db", "/data/keel.db"]

# ---- trainer: keel train on a GPU ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS trainer
RUN useradd --system --create-home --uid 10001 keel \
    && mkdir -p /checkpoints && chown keel:keel /checkpoints
COPY --from=build-cuda /usr/local/bin/keel /usr/local/bin/keel
WORKDIR /app
USER keel
VOLUME ["/checkpoints"]
ENTRYPOINT ["keel"]
CMD ["train", "--help"]

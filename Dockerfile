# syntax=docker/dockerfile:1
# tandem in a container: `docker build -t tandem .` at the repository root, then see
# deploy/README.md ("Docker and compose") for how to run it (host networking, --node-ip).

# --- build: the release binary (fat LTO, see Cargo.toml's [profile.release]) ---
FROM rust:1-bookworm AS build
WORKDIR /src
# The workspace: its manifest, lock file and every member (the load tools in benches/ are members
# and targets of the root package, so cargo needs them to read the workspace, not to build them).
COPY Cargo.toml Cargo.lock ./
COPY config config
COPY signaling signaling
COPY media media
COPY turn turn
COPY benches benches
COPY src src
# The forks of [patch.crates-io] (vendor/README.md).
COPY vendor vendor
# The web client embedded in the binary (committed, built from web/src; no Node needed here).
COPY web/dist web/dist
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tandem \
    && install -D -m 0755 target/release/tandem /out/tandem \
    && install -d /out/files

# --- runtime: glibc and CA certificates (for rediss://), no shell, user nonroot (65532) ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tandem /usr/local/bin/tandem
# Shared files on disk rather than in memory (mount a volume here; tandem removes its own
# leftovers at start).
COPY --from=build --chown=65532:65532 /out/files /var/lib/tandem
ENV TANDEM_FILE_DIR=/var/lib/tandem
USER 65532:65532
# HTTP + Socket.IO (+ /metrics), call media (UDP, and ICE-TCP), TURN (UDP and TCP, TLS) and the
# TURN relay range: tandem's defaults (`tandem --help`: --bind, --rtc-udp-port, --rtc-tcp-port,
# --turn-port, --turn-tls-port, --turn-relay-ports).
EXPOSE 8080/tcp 7882/udp 7881/tcp 3478/udp 3478/tcp 5349/tcp 49152-65535/udp
# SIGTERM drains for --shutdown-grace-secs (10 s by default): stop with a longer timeout
# (`docker stop -t 30`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tandem"]

# Hookline's container image: a release build on Debian, run as a non-root user on a distroless
# base. On a machine with a container engine:
#   docker build -t ghcr.io/hookline/hookline:0.1.0 .
# gives exactly that (the chart's default image, values.yaml: image.repository, is
# ghcr.io/hookline/hookline).
#
# CI builds the same runtime stage with buildah (hack/image.sh), with two build arguments, since
# no registry is reachable there: RUNTIME_BASE, a Debian base made from Debian's packages
# (mmdebstrap) in place of distroless, and BINARY_FROM=prebuilt, a release binary built by cargo
# beforehand (the build context then holds only target/release/hookline). tests/integration/image.rs keeps
# that script and this file in step.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_FROM=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin/hookline && echo 'fn main() {}' > src/bin/hookline/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/bin/hookline/main.rs src/lib.rs && cargo build --release --locked --bin hookline

# A release binary built outside (hack/image.sh), at the path the build stage leaves it.
FROM scratch AS prebuilt
COPY target/release/hookline /src/target/release/hookline

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_BASE} AS runtime
COPY --from=binary /src/target/release/hookline /usr/local/bin/hookline
# nonroot: uid/gid 65532, matching the chart's securityContext.
USER 65532:65532
EXPOSE 8080 9090
VOLUME ["/var/lib/hookline"]
ENTRYPOINT ["/usr/local/bin/hookline"]
CMD ["run"]

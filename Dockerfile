# Hookline's container image: a static-ish release build on Debian, run as a non-root user on a
# distroless base. Built elsewhere (no container engine runs on our development machines):
#   docker build -t ghcr.io/hookline/hookline:0.1.0 .
# The chart's default image (values.yaml: image.repository) is ghcr.io/hookline/hookline.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin hookline

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hookline /usr/local/bin/hookline
# nonroot: uid/gid 65532, matching the chart's securityContext.
USER 65532:65532
EXPOSE 8080 9090
VOLUME ["/var/lib/hookline"]
ENTRYPOINT ["/usr/local/bin/hookline"]
CMD ["run"]

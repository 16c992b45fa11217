#!/usr/bin/env bash
# Container images for the local node (hack/cluster.sh up --node), built without a registry:
#
#   hack/image.sh            Hookline's image: a release build (cargo), then the Dockerfile's
#                            runtime stage with buildah on a Debian base made by mmdebstrap;
#                            imported into the node's containerd. Prints `repository:tag` last.
#   hack/image.sh tools      the test pods' image (Debian minbase + python3 + curl), imported;
#                            prints its reference last.
#   hack/image.sh from-files NAME TAR ENTRYPOINT SRC:DST...
#                            an image of just those files (the node's pause image), saved as TAR.
#
# HOOKLINE_IMAGE_BINARY: use this hookline binary instead of building one.
# The Debian root filesystems are cached in $HOOKLINE_CACHE_DIR/images (they change only with
# Debian's packages); buildah's storage is a scratch directory, removed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${HOOKLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline}
STATE_DIR=${HOOKLINE_CLUSTER_DIR:-$ROOT/.cluster}
REPOSITORY=localhost/hookline/hookline
BASE_IMAGE=localhost/hookline/debian-base:bookworm
TOOLS_IMAGE=localhost/hookline/test-tools:bookworm

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hookline-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
bh() { buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs "$@"; }

require() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

# rootfs NAME PACKAGES: a Debian bookworm minbase root filesystem with PACKAGES (comma-separated),
# from the machine's own Debian sources; cached. Prints the tarball's path.
rootfs() {
  local tar="$CACHE_DIR/images/$1.tar"
  if [ ! -f "$tar" ]; then
    log "making the Debian root filesystem $1 with mmdebstrap (first run only, ≈1 min)"
    mkdir -p "$CACHE_DIR/images"
    mmdebstrap --quiet --variant=minbase --include="$2" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      bookworm "$WORK/$1.tar" /etc/apt/sources.list.d/debian.sources >"$WORK/mmdebstrap.log" 2>&1 ||
      { tail -n 20 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    # mmdebstrap picks the output's format by its name: a .tar name makes a tarball.
    [ -f "$WORK/$1.tar" ] || die "mmdebstrap made no tarball $WORK/$1.tar"
    mv "$WORK/$1.tar" "$tar"
  fi
  echo "$tar"
}

# image_from_rootfs NAME TAR: commit a root filesystem tarball as image NAME (buildah storage).
image_from_rootfs() {
  local c
  c=$(bh from scratch)
  bh add "$c" "$2" / >/dev/null
  bh commit --quiet "$c" "$1" >/dev/null
}

# save NAME TAR: write image NAME as a docker-archive that `ctr images import` reads.
save() { rm -f "$2"; bh push --quiet "$1" "docker-archive:$2:$1" >/dev/null; }

# import TAR: into the node's containerd (hack/cluster.sh up --node must be running).
import() {
  local sock="$STATE_DIR/node/containerd/containerd.sock"
  [ -S "$sock" ] || die "no node is running (hack/cluster.sh up --node); the image is not imported"
  ctr --address "$sock" --namespace k8s.io images import "$1" >/dev/null || die "ctr images import $1 failed"
}

hookline_image() {
  local binary=${HOOKLINE_IMAGE_BINARY:-}
  if [ -z "$binary" ]; then
    log "building hookline (release)"
    (cd "$ROOT" && cargo build --quiet --release --locked --bin hookline) || die "cargo build failed"
    binary="${CARGO_TARGET_DIR:-$ROOT/target}/release/hookline"
  fi
  [ -x "$binary" ] || die "no hookline binary at $binary"
  local tag
  tag="dev-$(sha256sum "$binary" | cut -c1-12)"
  # The build context holds only the binary, where the Dockerfile's `prebuilt` stage takes it.
  mkdir -p "$WORK/context/target/release"
  cp "$binary" "$WORK/context/target/release/hookline"
  image_from_rootfs "$BASE_IMAGE" "$(rootfs debian-base ca-certificates)"
  log "building $REPOSITORY:$tag from the Dockerfile's runtime stage"
  bh bud --quiet --pull=false --network=none --layers=false --target runtime \
    --build-arg "RUNTIME_BASE=$BASE_IMAGE" --build-arg BINARY_FROM=prebuilt \
    -f "$ROOT/Dockerfile" -t "$REPOSITORY:$tag" "$WORK/context" >/dev/null || die "buildah bud failed"
  save "$REPOSITORY:$tag" "$WORK/hookline.tar"
  import "$WORK/hookline.tar"
  echo "$REPOSITORY:$tag"
}

tools_image() {
  image_from_rootfs "$TOOLS_IMAGE" "$(rootfs test-tools ca-certificates,python3,curl)"
  save "$TOOLS_IMAGE" "$WORK/tools.tar"
  import "$WORK/tools.tar"
  echo "$TOOLS_IMAGE"
}

from_files() { # NAME TAR ENTRYPOINT SRC:DST...
  local name=$1 tar=$2 entrypoint=$3 c spec; shift 3
  c=$(bh from scratch)
  for spec in "$@"; do bh copy "$c" "${spec%%:*}" "${spec#*:}" >/dev/null; done
  bh config --entrypoint "[\"$entrypoint\"]" --user 65535:65535 "$c"
  bh commit --quiet "$c" "$name" >/dev/null
  save "$name" "$tar"
}

require
case "${1:-}" in
  "") hookline_image ;;
  tools) tools_image ;;
  from-files) shift; from_files "$@" ;;
  *) echo "usage: $0 [tools | from-files NAME TAR ENTRYPOINT SRC:DST...]" >&2; exit 2 ;;
esac

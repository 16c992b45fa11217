#!/usr/bin/env bash
# Build the CEL-enforcing CRD API server (k8s.io/apiextensions-apiserver, Kubernetes 1.36) from
# Debian sid's Go packages, once; later runs reuse the cached binary. Prints its path last.
#
# Nothing is installed: a private apt configuration (its own sources list, package lists and
# cache, derived from the machine's Debian sources with the suite set to sid) lists and downloads
# the .debs, which are unpacked with `dpkg-deb -x` into a scratch root and built in GOPATH mode.
# The .debs are cached beside the binary, since sid moves on and a pinned version disappears.
#
# Pinned: golang-k8s-apiextensions-apiserver-dev 0.36.4-1 with Go 1.26. When sid no longer has
# that version and the cache is empty, the newest version sid has is built instead, and said.
# Any failure is an error naming what is missing: there is no fall-back to a server without CEL.
#
# Two changes to Debian's source, as build overlays: discovery served standalone, and the
# ResourceQuota admission plugin (hack/crd-server/quota.go). RECIPE names this recipe in the
# cached binary's name, so a changed recipe builds anew.
set -euo pipefail

PINNED=${HOOKLINE_CRD_SERVER_VERSION:-0.36.4-1}
PINNED_GO=${HOOKLINE_CRD_SERVER_GO:-1.26}
CACHE_DIR=${HOOKLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline}
PKG=golang-k8s-apiextensions-apiserver-dev
RECIPE=quota
BINARY=apiextensions-apiserver-$RECIPE
HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[crd-server] %s\n' "$*" >&2; }
die() { printf '[crd-server] error: %s\n' "$*" >&2; exit 1; }

# The newest complete build in the cache, if any: crd-server-<debian version>/$BINARY.
cached_binary() {
  local dir
  for dir in "$CACHE_DIR/crd-server-$PINNED" $(ls -d "$CACHE_DIR"/crd-server-* 2>/dev/null | sort -Vr); do
    [ -x "$dir/$BINARY" ] && { echo "$dir/$BINARY"; return 0; }
  done
  return 1
}

if bin=$(cached_binary); then echo "$bin"; exit 0; fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die "apt-get and dpkg-deb are needed"
SRC=/etc/apt/sources.list.d/debian.sources
[ -f "$SRC" ] || die "$SRC not found: cannot derive a Debian sid source"

APT=$(mktemp -d "${TMPDIR:-/tmp}/hookline-sid-apt.XXXXXX")
WORK=""
trap 'rm -rf "$APT" ${WORK:+"$WORK"}' EXIT
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
# The main archive's stanza(s) only (sid has no security suite), switched to sid.
awk 'BEGIN { RS = ""; ORS = "\n\n" } !/security/' "$SRC" \
  | sed -e 's/^Types: .*/Types: deb/' -e 's/^Suites: .*/Suites: sid/' >"$APT/sid.sources"
APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sid.sources" -o "Dir::Etc::SourceParts=$APT/none"
  -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "Dir::State::status=/dev/null"
  -o "APT::Sandbox::User=root" -o "Acquire::Languages=none")

log "reading Debian sid's package lists (private apt configuration, nothing installed)"
apt-get "${APT_OPTS[@]}" -qq update >/dev/null 2>"$APT/update.err" \
  || die "apt-get update for sid failed: $(tr '\n' ' ' <"$APT/update.err")"

available() { apt-cache "${APT_OPTS[@]}" madison "$1" 2>/dev/null | awk -v want="$2" '$3 == want { found = 1 } END { exit !found }'; }

version=$PINNED
if ! available "$PKG" "$PINNED"; then
  version=$(apt-cache "${APT_OPTS[@]}" policy "$PKG" 2>/dev/null | awk '/Candidate:/ { print $2 }')
  [ -n "$version" ] && [ "$version" != "(none)" ] || die "sid has no $PKG (the pinned $PINNED is gone too)"
  log "sid no longer has $PKG $PINNED; building the newest it has: $version"
fi
go_pkg="golang-$PINNED_GO-go"
if ! apt-cache "${APT_OPTS[@]}" show "$go_pkg" >/dev/null 2>&1; then
  go_pkg=$(apt-cache "${APT_OPTS[@]}" depends golang-go 2>/dev/null | awk '/Depends: golang-1\.[0-9]+-go/ { print $2; exit }')
  [ -n "$go_pkg" ] || die "sid has neither golang-$PINNED_GO-go nor a golang-go naming its Go"
  log "sid no longer has golang-$PINNED_GO-go; using $go_pkg"
fi
go_minor=${go_pkg#golang-}; go_minor=${go_minor%-go}

OUT="$CACHE_DIR/crd-server-$version"
DEBS="$OUT/debs"
mkdir -p "$DEBS"
if [ ! -f "$DEBS/.complete" ]; then
  # Every Go library the server needs, as source packages (-dev), plus the Go toolchain.
  mapfile -t deps < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "$PKG=$version" 2>/dev/null \
    | grep -v '^ ' | sort -u | grep -E '^golang-.*-dev$' | grep -vx "$PKG")
  [ ${#deps[@]} -gt 0 ] || die "could not resolve the dependencies of $PKG $version"
  log "downloading $PKG $version, $go_pkg and ${#deps[@]} Go library packages (≈270 MB, cached in $DEBS)"
  (cd "$DEBS" && apt-get "${APT_OPTS[@]}" -qq download "$PKG=$version" "$go_pkg" "golang-$go_minor-src" "${deps[@]}") \
    >"$APT/download.log" 2>&1 || die "downloading from sid failed: $(tail -n 5 "$APT/download.log" | tr '\n' ' ')"
  touch "$DEBS/.complete"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hookline-crd-server.XXXXXX")
log "unpacking $(ls "$DEBS"/*.deb | wc -l) packages into a scratch root"
for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$WORK/root" || die "cannot unpack $deb"; done

GOROOT="$WORK/root/usr/lib/go-$go_minor"
SRCROOT="$WORK/root/usr/share/gocode/src"
SERVER_GO="$SRCROOT/k8s.io/apiextensions-apiserver/pkg/apiserver/apiserver.go"
[ -x "$GOROOT/bin/go" ] || die "no Go toolchain in $go_pkg"
[ -f "$SERVER_GO" ] || die "$PKG $version has no pkg/apiserver/apiserver.go"
# Standalone, the server must serve /apis discovery itself (kube-apiserver's aggregator normally
# does): applied as a build overlay so Debian's files stay untouched.
grep -q 'EnableDiscovery = false' "$SERVER_GO" || die "$PKG $version: EnableDiscovery switch not found"
sed 's/EnableDiscovery = false/EnableDiscovery = true/' "$SERVER_GO" >"$WORK/apiserver.go"
# ResourceQuota: the plugin's registration is added to the options package, and called where the
# options are made (before the first `return o`, in NewCustomResourceDefinitionsServerOptions).
OPTIONS_DIR="$SRCROOT/k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
awk '!done && /^\treturn o$/ { print "\tenableResourceQuota(o)"; done = 1 } { print }' \
  "$OPTIONS_DIR/options.go" >"$WORK/options.go"
grep -q 'enableResourceQuota(o)' "$WORK/options.go" || die "$PKG $version: where options are made was not found"
printf '{"Replace": {"%s": "%s", "%s": "%s", "%s": "%s"}}\n' "$SERVER_GO" "$WORK/apiserver.go" \
  "$OPTIONS_DIR/options.go" "$WORK/options.go" "$OPTIONS_DIR/zz_hookline_quota.go" "$HACK/crd-server/quota.go" \
  >"$WORK/overlay.json"

upstream=${version%%-*}                       # 0.36.4
k8s_minor=$(echo "$upstream" | cut -d. -f2)   # 36
k8s_version="v1.$k8s_minor.$(echo "$upstream" | cut -d. -f3)"
log "building k8s.io/apiextensions-apiserver $version as $k8s_version with Go $go_minor (≈2 min on 2 cores)"
V=k8s.io/component-base/version
(
  cd "$WORK"
  env GOPATH="$WORK/root/usr/share/gocode" GOROOT="$GOROOT" GOCACHE="$WORK/gocache" GOFLAGS= \
    GO111MODULE=off GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 \
    "$GOROOT/bin/go" build -overlay "$WORK/overlay.json" -o "$WORK/apiextensions-apiserver" \
    -ldflags "-s -w -X $V.gitVersion=$k8s_version -X $V.gitMajor=1 -X $V.gitMinor=$k8s_minor" \
    k8s.io/apiextensions-apiserver
) >"$WORK/build.log" 2>&1 || die "go build failed: $(tail -n 8 "$WORK/build.log" | tr '\n' ' ')"
mv "$WORK/apiextensions-apiserver" "$OUT/$BINARY"
log "cached $OUT/$BINARY ($k8s_version)"
echo "$OUT/$BINARY"

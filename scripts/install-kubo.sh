#!/usr/bin/env bash
# Build the Kubo (IPFS) daemon used by the test suite and cache it outside the repo.
#
#   scripts/install-kubo.sh            # prints the binary path on its last line
#   ANYHAMT_KUBO_CACHE=/somewhere scripts/install-kubo.sh
#
# Needs only `go` and access to the Go module proxy. Tests find the binary at the
# cache path printed here (or via ANYHAMT_KUBO_BIN).
set -euo pipefail

KUBO_VERSION=v0.43.1

# Kubo's own go.mod replaces go-libp2p with a fork commit (github.com/lidel/go-libp2p
# v0.0.0-20260914191659-9c4ee60cf924) until "a go-libp2p release requires quic-go >=
# v0.62.0 and webtransport-go >= v0.13.0". The module proxy refuses to serve that fork
# commit (403 "not available"), but go-libp2p v0.50.0 is exactly such a release, so the
# throwaway module requires it instead. Without either, go-libp2p v0.49.0 is selected and
# the build breaks against webtransport-go v0.13.0.
LIBP2P_VERSION=v0.50.0

cache_root="${ANYHAMT_KUBO_CACHE:-$HOME/.cache/anyhamt/kubo}"
mkdir -p "$cache_root"
cache_root="$(cd "$cache_root" && pwd)"  # absolute: go -C changes directory
dest_dir="$cache_root/$KUBO_VERSION"
dest="$dest_dir/ipfs"

if [[ -x "$dest" ]] && "$dest" version >/dev/null 2>&1; then
    echo "kubo $KUBO_VERSION already installed" >&2
    echo "$dest"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "error: 'go' is not on PATH; install Go >= 1.26 (https://go.dev/dl/) and rerun" >&2
    exit 3
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/anyhamt-kubo-build.XXXXXX")"
tmp_bin=""
cleanup() {
    rm -rf "$workdir"
    if [[ -n "$tmp_bin" ]]; then rm -f "$tmp_bin"; fi
}
trap cleanup EXIT

# `go install github.com/ipfs/kubo/cmd/ipfs@VERSION` refuses modules whose go.mod has
# replace directives, so build from a module of our own that depends on Kubo.
cat >"$workdir/go.mod" <<EOF
module anyhamt.invalid/kubobuild

go 1.26

require (
	github.com/ipfs/kubo $KUBO_VERSION
	github.com/libp2p/go-libp2p $LIBP2P_VERSION
)
EOF

# The build tag keeps this file out of any build; it only makes `go mod tidy` keep the
# dependencies of cmd/ipfs in go.mod/go.sum.
cat >"$workdir/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/ipfs/kubo/cmd/ipfs"
EOF

echo "building kubo $KUBO_VERSION in $workdir (takes several minutes the first time)" >&2
mkdir -p "$dest_dir"
# Build next to the destination and rename: an interrupted build never leaves a
# half-written binary at the cached path.
tmp_bin="$(mktemp "$dest_dir/.ipfs.partial.XXXXXX")"
go -C "$workdir" mod tidy >&2
go -C "$workdir" build -trimpath -o "$tmp_bin" github.com/ipfs/kubo/cmd/ipfs >&2
"$tmp_bin" version >&2
mv -f "$tmp_bin" "$dest"
tmp_bin=""

echo "$dest"

#!/usr/bin/env bash
# Install toxiproxy-server (pinned) from the Go module proxy into .tools/bin.
# Idempotent: does nothing when the pinned version is already there.
# Needs: go (1.22+) and access to the Go module proxy.
set -euo pipefail

TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.12.0}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo_root/.tools"
bin="$tools/bin"
stamp="$bin/.toxiproxy-$TOXIPROXY_VERSION"

if [[ -x "$bin/toxiproxy-server" && -f "$stamp" ]]; then
    echo "install-toxiproxy: toxiproxy-server $TOXIPROXY_VERSION already in $bin"
    exit 0
fi
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"  # the usual place of the official Go toolchain
fi
command -v go >/dev/null || { echo "install-toxiproxy: 'go' is not on PATH" >&2; exit 1; }

mkdir -p "$bin"
# Keep the whole folder out of git even where the repo's .gitignore does not list it.
[[ -f "$tools/.gitignore" ]] || printf '*\n' >"$tools/.gitignore"

# From v2.6 on the server command lives at cmd/server (the binary is named "server").
GOBIN="$bin" GOFLAGS="${GOFLAGS:--buildvcs=false}" \
    go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
mv -f "$bin/server" "$bin/toxiproxy-server"
rm -f "$bin"/.toxiproxy-*
touch "$stamp"
echo "install-toxiproxy: $("$bin/toxiproxy-server" -version) (go module $TOXIPROXY_VERSION) in $bin"

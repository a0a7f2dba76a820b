#!/usr/bin/env bash
# Install Azurite (the Azure Storage emulator, pinned in package.json / package-lock.json)
# into node_modules for the test suite. Idempotent: skips npm when the installed version
# already matches the lock file.
# Needs: node (>= 20) and npm, with access to the npm registry.
# Usage: scripts/install-azurite.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "install-azurite: '$tool' is not on PATH" >&2; exit 1; }
done

wanted=$(node -e 'const l=require("./package-lock.json");console.log(l.packages["node_modules/azurite"].version)')
installed=$(node -e 'try{console.log(require("./node_modules/azurite/package.json").version)}catch(e){}')

if [[ "$installed" == "$wanted" && -x node_modules/.bin/azurite-blob ]]; then
    echo "install-azurite: azurite $installed already installed"
else
    echo "install-azurite: installing azurite $wanted (npm ci)"
    # Azurite 3.37 declares node >= 22 but runs on node 20: do not let engine checks stop it.
    npm ci --no-audit --no-fund --engine-strict=false --loglevel=error
fi
echo "install-azurite: $(node_modules/.bin/azurite-blob --version 2>/dev/null || echo "azurite $wanted") (node $(node --version))"

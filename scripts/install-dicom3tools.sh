#!/usr/bin/env bash
# Install dicom3tools (dciodvfy, dcdump, ...) from Debian's packages.
# Idempotent: does nothing when dciodvfy is already installed.
# Needs: root (or sudo) and access to the Debian package mirrors.
# Prints the path of dciodvfy (tests look it up the same way: `dpkg -L dicom3tools`).
set -euo pipefail

find_dciodvfy() {
    { command -v dciodvfy 2>/dev/null || dpkg -L dicom3tools 2>/dev/null | grep -E '/dciodvfy$'; } |
        head -n 1
}

if path="$(find_dciodvfy)" && [[ -n "$path" && -x "$path" ]]; then
    echo "dicom3tools already installed: $path"
    exit 0
fi

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-dicom3tools: need root or sudo" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends dicom3tools >/dev/null

path="$(find_dciodvfy)"
[[ -n "$path" && -x "$path" ]] || { echo "install-dicom3tools: dciodvfy not found" >&2; exit 1; }
echo "dicom3tools installed: $path"

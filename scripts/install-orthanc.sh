#!/usr/bin/env bash
# Install Orthanc and its DICOMweb plugin from Debian for the test suite (idempotent).
#
# The tests start their own Orthanc process (tests/services/orthanc.py) on free ports;
# the system service the Debian package starts (HTTP 8042, DICOM 4242) is stopped and
# disabled so it neither holds those ports nor keeps a database of its own running.
# Needs root or sudo. Usage: scripts/install-orthanc.sh
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb)
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]})); then
    echo "install-orthanc: installing ${missing[*]}"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
    echo "install-orthanc: ${PACKAGES[*]} already installed"
fi

# Stop and disable the packaged service (best effort: containers often have no init).
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    "${SUDO[@]}" systemctl disable --now orthanc.service >/dev/null 2>&1 || true
elif [[ -x /etc/init.d/orthanc ]]; then
    "${SUDO[@]}" /etc/init.d/orthanc stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null; then
        "${SUDO[@]}" update-rc.d orthanc disable >/dev/null 2>&1 || true
    fi
fi

orthanc_bin=$(command -v Orthanc || echo /usr/sbin/Orthanc)
plugin=$(dpkg-query -L orthanc-dicomweb | grep -E '/libOrthancDicomWeb\.so\.[0-9.]+$' | head -n1)
if [[ ! -x $orthanc_bin || -z $plugin || ! -f $plugin ]]; then
    echo "install-orthanc: Orthanc binary or DICOMweb plugin not found" >&2
    exit 1
fi
echo "install-orthanc: $("$orthanc_bin" --version | head -n1)"
echo "install-orthanc: orthanc $(dpkg-query -W -f='${Version}' orthanc)," \
    "orthanc-dicomweb $(dpkg-query -W -f='${Version}' orthanc-dicomweb)"
echo "install-orthanc: binary $orthanc_bin, plugin $plugin"

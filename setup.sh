#!/usr/bin/env bash
# Prepares this machine as the controller of the lab: Debian packages and the project's virtualenv.
# Idempotent; demo.sh and test.sh run it first.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo): it installs Debian packages and the lab needs root" >&2
    exit 1
fi

packages=(systemd-container debootstrap iptables iproute2 qemu-system-x86 qemu-utils e2fsprogs
          nginx-light openssl python3-venv openssh-client ca-certificates gpg curl
          prometheus prometheus-alertmanager mtail nftables)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}" >&2
    # nginx, prometheus, alertmanager, mtail and nftables are here for their checkers in the tests (nginx -t,
    # promtool, amtool, mtail --one_shot, nft --check): keep Debian from starting them on this machine.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/pyinfra ] || [ pyproject.toml -nt .venv/.installed ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
fi

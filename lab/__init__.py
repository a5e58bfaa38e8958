"""The lab: real Debian 12 hosts on one Linux machine (systemd-nspawn containers or qemu VMs)."""

"""The lab's Debian 12 image: one debootstrapped tree, cached and rebuilt only when its recipe changes.

Containers boot the tree itself (through an overlay per host); VMs boot an ext4 disk made from it.
"""

import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab import config
from lab.ssh import ensure_key
from tasks import atomic

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
KERNEL_PACKAGE = {"x86_64": "linux-image-amd64", "aarch64": "linux-image-arm64"}
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "sudo", "ca-certificates",
    "iproute2", "procps", "kmod", "udev", "initramfs-tools",
]
SOURCES_LIST = f"""deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""
SSHD_CONFIG = "PasswordAuthentication no\nPermitRootLogin no\n"
FSTAB = "LABEL=labroot / ext4 rw,errors=remount-ro 0 1\n"
FILES_DIR = Path(__file__).parent / "files"
# The controller's own extra CAs (a TLS-inspecting egress, a company CA): guests reach the
# package registries through this machine, so they trust what it trusts.
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")


def _extra_cas() -> dict[str, str]:
    if not EXTRA_CA_DIR.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(EXTRA_CA_DIR.glob("*.crt"))}


def recipe() -> dict:
    """Everything that goes into the image; its hash names the cached image."""
    machine = platform.machine()
    return {
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": PACKAGES + [KERNEL_PACKAGE[machine]],
        "sources": SOURCES_LIST,
        "sshd": SSHD_CONFIG,
        "fstab": FSTAB,
        "deploy_user": config.DEPLOY_USER,
        "authorized_key": ensure_key().read_text(),
        "extra_cas": _extra_cas(),
        "files": {p.name: p.read_text() for p in sorted(FILES_DIR.iterdir())},
    }


def image_dir() -> Path:
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]
    return config.IMAGES_DIR / f"debian-{SUITE}-{platform.machine()}-{digest}"


def _run(*args: str, **kwargs) -> None:
    subprocess.run(args, check=True, **kwargs)


def _chroot(root: Path, *args: str) -> None:
    _run("chroot", str(root), *args, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})


def _configure(root: Path, spec: dict) -> None:
    (root / "etc/apt/sources.list").write_text(spec["sources"])
    (root / "etc/fstab").write_text(spec["fstab"])
    (root / "etc/ssh/sshd_config.d/lab.conf").write_text(spec["sshd"])
    user = spec["deploy_user"]
    _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", user)
    sudoers = root / f"etc/sudoers.d/{user}"
    sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    ssh_dir = root / f"home/{user}/.ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(spec["authorized_key"])
    _chroot(root, "chown", "-R", f"{user}:{user}", f"/home/{user}/.ssh")

    # Each host makes its own identity at first boot: no shared SSH host keys or machine-id.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    shutil.copy(FILES_DIR / "lab-identity", root / "usr/local/sbin/lab-identity")
    (root / "usr/local/sbin/lab-identity").chmod(0o755)
    shutil.copy(FILES_DIR / "lab-identity.service", root / "etc/systemd/system/lab-identity.service")
    _chroot(root, "systemctl", "enable", "lab-identity.service", "systemd-networkd.service")

    if spec["extra_cas"]:
        for name, pem in spec["extra_cas"].items():
            (root / "usr/local/share/ca-certificates" / name).write_text(pem)
        _chroot(root, "update-ca-certificates")
        # pip trusts its own bundle unless told otherwise.
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    _chroot(root, "apt-get", "clean")


def ensure_image() -> Path:
    """Return the cached image's directory, building it first when its recipe changed."""
    target = image_dir()
    if (target / "rootfs").is_dir():
        return target
    spec = recipe()
    started = time.monotonic()
    print(f"lab: building the Debian {SUITE} image (debootstrap, a few minutes) ...", file=sys.stderr)
    # Kept if the build fails: debootstrap's log in it says why (the next build clears it).
    with atomic.replacing(target, remove_on_failure=False) as building:
        building.mkdir()
        root = building / "rootfs"
        _run("debootstrap", "--variant=minbase", f"--include={','.join(spec['packages'])}",
             SUITE, str(root), MIRROR, stdout=subprocess.DEVNULL)
        _configure(root, spec)
        (building / "recipe.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
    for old in config.IMAGES_DIR.glob(f"debian-{SUITE}-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    print(f"lab: image built in {time.monotonic() - started:.0f} s: {target}", file=sys.stderr)
    return target


def ensure_vm_disk(image: Path) -> tuple[Path, Path, Path]:
    """An ext4 disk of the tree, with the kernel and initramfs for direct boot."""
    disk, kernel, initrd = image / "disk.raw", image / "vmlinuz", image / "initrd.img"
    if disk.exists() and kernel.exists() and initrd.exists():
        return disk, kernel, initrd
    root = image / "rootfs"
    shutil.copy(max((root / "boot").glob("vmlinuz-*")), kernel)
    shutil.copy(max((root / "boot").glob("initrd.img-*")), initrd)
    with atomic.replacing(disk) as partial:
        _run("truncate", "-s", config.VM_DISK_SIZE, str(partial))
        _run("mkfs.ext4", "-q", "-F", "-L", "labroot", "-d", str(root), str(partial))
    return disk, kernel, initrd

"""The two ways to run a lab host, behind one interface: `start(host, image)` and `stop(host)`.

container: systemd-nspawn on an overlay of the image; native CPU, for deploys, load and speed.
vm: qemu on a qcow2 overlay of the image's disk; its own kernel, for limits, sysctl and reboots.
"""

import os
import shutil
import signal
import subprocess
from pathlib import Path

from lab import config, image, network, state, waiting

RESOLV_CONF = Path("/etc/resolv.conf")
# A killed process ends at once; one that does not (stuck in the kernel) is worth an error, not a hang.
KILLED_EXIT_S = 30


def nameservers() -> list[str]:
    return [line.split()[1] for line in RESOLV_CONF.read_text().splitlines()
            if line.startswith("nameserver ")]


def _host_dir(host: dict) -> Path:
    return config.HOSTS_DIR / host["name"]


def _network_file(interface: str, address: str) -> str:
    return (f"[Match]\nName={interface}\n\n[Network]\nAddress={address}/{config.LAB_NETWORK.prefixlen}\n"
            f"Gateway={config.LAB_GATEWAY}\n\n[Route]\nDestination={config.LAB_RANGE}\n"
            "Type=unreachable\n")


def _start_container(host: dict, image_dir: Path, nice: int = 0) -> None:
    base = _host_dir(host)
    for sub in ("upper", "work", "root"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    root = base / "root"
    if not os.path.ismount(root):
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={image_dir / 'rootfs'},upperdir={base / 'upper'},workdir={base / 'work'}",
                        str(root)], check=True)
    # nspawn mounts the container's file systems: the VM's fstab entry would fail here, and
    # remount-fs, the first unit to start, can trip over nspawn still setting up cgroups (219/CGROUP).
    (root / "etc/fstab").write_text("")
    remount = root / "etc/systemd/system/systemd-remount-fs.service"
    if not remount.is_symlink():
        remount.symlink_to("/dev/null")
    (root / "etc/hostname").write_text(host["name"] + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host['name']}\n")
    (root / "etc/systemd/network/10-lab.network").write_text(_network_file("host0", host["address"]))
    (root / "etc/resolv.conf").write_text("".join(f"nameserver {s}\n" for s in nameservers()))
    env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="1")  # sysctl -w works, as on a NAS
    with open(base / "console.log", "ab") as console:
        process = subprocess.Popen(
            ["systemd-nspawn", f"--directory={root}", "--boot", "--register=no", "--keep-unit",
             f"--machine=lab-{host['name']}", f"--network-bridge={config.BRIDGE}",
             "--resolv-conf=off", "--link-journal=no", "--console=pipe"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=console, env=env,
            start_new_session=True)
    (base / "pid").write_text(f"{process.pid}\n")


def _tap(host: dict) -> str:
    return f"labtap-{host['name']}"


def _start_vm(host: dict, image_dir: Path, nice: int) -> None:
    base = _host_dir(host)
    base.mkdir(parents=True, exist_ok=True)
    disk, kernel, initrd = image.ensure_vm_disk(image_dir)
    overlay = base / "disk.qcow2"
    if not overlay.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "raw",
                        str(overlay)], check=True)
    network.add_tap(_tap(host))
    # KVM only where the CPU offers real hardware virtualization; a paravirtual /dev/kvm crashes
    # stock guest kernels, so TCG it is there.
    hardware_virt = any(flag in Path("/proc/cpuinfo").read_text().split() for flag in ("vmx", "svm"))
    accel = ["-accel", "kvm", "-cpu", "host"] if hardware_virt and Path("/dev/kvm").exists() \
        else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    last_octet = int(host["address"].rsplit(".", 1)[1])
    cmdline = (f"root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.hostname={host['name']} "
               f"lab.address={host['address']}/{config.LAB_NETWORK.prefixlen} "
               f"lab.gateway={config.LAB_GATEWAY} lab.range={config.LAB_RANGE} "
               f"lab.dns={','.join(nameservers())}")
    subprocess.run(
        ["nice", "-n", str(nice), "qemu-system-x86_64", *accel, "-smp", str(config.VM_CPUS), "-m", str(config.VM_MEMORY_MB),
         "-name", f"lab-{host['name']}", "-display", "none", "-monitor", "none",
         "-serial", f"file:{base / 'console.log'}",
         "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
         "-drive", f"file={overlay},if=virtio,format=qcow2",
         "-netdev", f"tap,id=lab,ifname={_tap(host)},script=no,downscript=no",
         "-device", f"virtio-net-pci,netdev=lab,mac=52:54:00:d5:00:{last_octet:02x}",
         "-daemonize", "-pidfile", str(base / "pid")],
        check=True)
    # qemu's -daemonize starts a session, and with it a scheduler autogroup that competes with
    # every other session as one task would, whatever the nice value of its threads: the
    # autogroup takes the nice value too.
    autogroup = Path(f"/proc/{state.pid_alive(base / 'pid')}/autogroup")
    if nice and autogroup.exists():
        autogroup.write_text(f"{nice}\n")


def start(host: dict, image_dir: Path, nice: int = 0) -> None:
    {"container": _start_container, "vm": _start_vm}[host["backend"]](host, image_dir, nice)


def pid(host: dict) -> int | None:
    return state.pid_alive(_host_dir(host) / "pid")


def _link(host: dict) -> str:
    """The host's end of its network link on this machine."""
    return _tap(host) if host["backend"] == "vm" else f"vb-lab-{host['name']}"


def power_off(host: dict, timeout: float = 30, unplug: bool = False) -> None:
    """Power the host off and keep its disk: `start` boots it again as it was. Cleanly (SIGTERM:
    nspawn halts the container, its services stop and close their connections), or unplugged, as
    a power cut: its link goes down first, so nothing it sends while dying (FIN, RST) leaves, then
    every process of it ends at once (SIGKILL of the container's init; qemu ends the VM)."""
    running = pid(host)
    if running and unplug:
        subprocess.run(["ip", "link", "set", _link(host), "down"], check=False)
        children = subprocess.run(["pgrep", "-P", str(running)], capture_output=True, text=True,
                                  check=False).stdout.split()
        for victim in children if host["backend"] == "container" else [str(running)]:
            os.kill(int(victim), signal.SIGKILL)
    elif running:
        os.kill(running, signal.SIGTERM)
        try:
            waiting.wait_until(lambda: not pid(host), timeout, f"{host['name']} to power off", interval=0.2)
        except waiting.TimedOut:
            os.kill(running, signal.SIGKILL)
            waiting.wait_until(lambda: not pid(host), KILLED_EXIT_S,
                               f"{host['name']} (pid {running}) to end after SIGKILL", interval=0.1)


def stop(host: dict, timeout: float = 30) -> None:
    """Power the host off, then remove its overlay: lab hosts are made anew by each `up`."""
    power_off(host, timeout)
    base = _host_dir(host)
    root = base / "root"
    if os.path.ismount(root):
        subprocess.run(["umount", str(root)], check=True)
    if host["backend"] == "vm":
        network.remove_link(_tap(host))
    shutil.rmtree(base, ignore_errors=True)

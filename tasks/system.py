"""System: kernel settings, the stack's system user and its directories."""

from pyinfra.operations import files, server

from tasks.plan import Plan

SYSCTL_FILE = "/etc/sysctl.d/60-nas-ai.conf"
KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 5, 3


def configure(plan: Plan) -> None:
    settings = plan.settings
    # Keep the model's pages and the KV cache in RAM: swapping them makes every token wait on disk.
    server.sysctl(name="vm.swappiness (persisted)", key="vm.swappiness",
                  value=settings.system_swappiness, persist=True, persist_file=SYSCTL_FILE)
    # A peer that vanished (a NAS unplugged) sends no FIN: a connection that asked for keepalive
    # (the gateway's to its engines) learns it from unanswered probes, not from the read timeout.
    keepalive = {"net.ipv4.tcp_keepalive_time": settings.system_tcp_keepalive_s,
                 "net.ipv4.tcp_keepalive_intvl": KEEPALIVE_INTERVAL_S, "net.ipv4.tcp_keepalive_probes": KEEPALIVE_PROBES}
    for key, value in keepalive.items():
        server.sysctl(name=f"{key} (persisted)", key=key, value=value, persist=True, persist_file=SYSCTL_FILE)
    server.group(name="Group of the stack's system user", group=settings.system_user, system=True)
    server.user(name="The stack's system user (no login shell)", user=settings.system_user,
                group=settings.system_user, system=True, shell="/usr/sbin/nologin",
                home="/nonexistent", create_home=False)
    directories = [
        (settings.system_install_dir, "root", "root", "0755"),
        (settings.system_config_dir, "root", settings.system_user, "0750"),
        # The engine reads models but cannot change them.
        (settings.model_store_dir, "root", settings.system_user, "0750"),
    ]
    for path, user, group, mode in directories:
        files.directory(name=f"Directory {path}", path=path, user=user, group=group, mode=mode)

"""Several hosts on one machine, for a multi-node test Slurm (tests/slurm_cluster.py).

    net = NodeNetwork(["node1", "node2"], hosts_dir)   # raises NodeNetworkUnavailable(why)
    net.create()
    argv = net.enter("node1", ["slurmd", "-D", ...])    # runs as host node1
    net.remove()                                        # also after a failed create()

Each node is a network namespace with a veth to a bridge on the machine (the bridge holds
the first address of a /24 that nothing else here uses: the controller listens there), a
UTS namespace with the node's hostname, and its own /etc/hosts bind-mounted in a private
mount namespace, in which every node's name resolves to its veth address (torch's
rendezvous and gloo resolve their own hostname to pick the address they listen on).
`enter` uses nsenter + unshare rather than `ip netns exec`, which remounts /sys, hides
/sys/fs/cgroup, and makes slurmd 22.05 exit ("Unable to initialize cgroup plugin").
The file system is otherwise shared: it plays the cluster's shared file system.

Names carry this process's pid and a count (repro-<pid>-<k>-node1, bridge rsb<pid>k<k>,
veths rsv<pid>k<k>n<i>), so that concurrent test runs and networks do not collide, and
leftovers of a killed run, whose pid is gone, are swept before the next one starts.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

PREFIX = "repro-"            # netns: repro-<pid>-<k>-<node>
BRIDGE, VETH = "rsb", "rsv"  # links: rsb<pid>k<k>, rsv<pid>k<k>n<i> (15 characters at most)


class NodeNetworkUnavailable(Exception):
    """Namespaces cannot be made here; the message says why."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and p.returncode:
        raise NodeNetworkUnavailable(f"ip {' '.join(args)}: {p.stderr.strip() or p.returncode}")
    return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove the namespaces and links of earlier test runs whose process has gone."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(rf"{PREFIX}(\d+)-\S+", line)
        if m and not _pid_alive(int(m.group(1))):
            ip("netns", "delete", m.group(0), check=False)
            removed.append(m.group(0))
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        m = re.match(rf"\d+: (({BRIDGE}|{VETH})(\d+)k\d+\S*?)[@:]", line)
        if m and not _pid_alive(int(m.group(3))):
            ip("link", "delete", m.group(1), check=False)
            removed.append(m.group(1))
    return removed


def free_subnet() -> str:
    """A 10.213.X.0/24 that no address or route here is in: "10.213.X"."""
    used = ip("-4", "-o", "addr", "show", check=False).stdout + \
        ip("-4", "route", "show", "table", "all", check=False).stdout
    start = os.getpid() % 250
    for k in range(250):
        prefix = f"10.213.{(start + k) % 250 + 1}"
        if f"{prefix}." not in used:
            return prefix
    raise NodeNetworkUnavailable("no free 10.213.X.0/24 subnet for the test nodes")


class NodeNetwork:
    made_here = 0        # networks this process has made: the <k> in the names

    def __init__(self, names: list[str], hosts_dir: Path, controller: str):
        """names: the nodes' hostnames; controller: the machine's own name, which
        resolves to the bridge's address inside the nodes."""
        self.names, self.hosts_dir, self.controller = list(names), Path(hosts_dir), controller
        NodeNetwork.made_here += 1
        tag = f"{os.getpid()}k{NodeNetwork.made_here}"
        self.netns = {n: f"{PREFIX}{tag.replace('k', '-')}-{n}" for n in self.names}
        self.veth = {n: f"{VETH}{tag}n{i}" for i, n in enumerate(self.names, 1)}
        self.bridge = f"{BRIDGE}{tag}"
        self.made: list[tuple[str, str]] = []      # ("netns"|"link", name), to remove
        self.prefix = ""

    @property
    def bridge_addr(self) -> str:
        return f"{self.prefix}.1"

    def addr(self, node: str) -> str:
        return f"{self.prefix}.{self.names.index(node) + 2}"

    def check(self) -> None:
        if os.geteuid() != 0:
            raise NodeNetworkUnavailable(f"not root (uid {os.geteuid()}): network namespaces "
                                         "need CAP_SYS_ADMIN")
        missing = [b for b in ("ip", "nsenter", "unshare", "mount", "hostname")
                   if shutil.which(b) is None]
        if missing:
            raise NodeNetworkUnavailable(f"{', '.join(missing)} not installed (iproute2, "
                                         "util-linux, mount, hostname: tools/setup_slurm.sh)")

    def create(self) -> None:
        self.check()
        sweep_stale()
        self.prefix = free_subnet()
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        # Where br_netfilter is loaded (Docker hosts, whose FORWARD policy is DROP), frames
        # between two nodes would go through iptables: keep them off it (older kernels lack it).
        ip("link", "set", self.bridge, "type", "bridge", "nf_call_iptables", "0", check=False)
        ip("addr", "add", f"{self.bridge_addr}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        hosts = "127.0.0.1 localhost\n" + f"{self.bridge_addr} {self.controller}\n" + \
            "".join(f"{self.addr(n)} {n}\n" for n in self.names)
        for n in self.names:
            ns, veth = self.netns[n], self.veth[n]
            ip("netns", "add", ns)
            self.made.append(("netns", ns))
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made.append(("link", veth))
            ip("link", "set", veth, "master", self.bridge)
            ip("link", "set", veth, "up")
            ip("-n", ns, "addr", "add", f"{self.addr(n)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            (self.hosts_dir / f"hosts-{n}").write_text(hosts)

    def enter(self, node: str, argv: list[str]) -> list[str]:
        """argv run as host `node`: in its network namespace, with its hostname and its
        /etc/hosts (new UTS and mount namespaces; the mount is private to them)."""
        hosts = self.hosts_dir / f"hosts-{node}"
        return ["nsenter", f"--net=/run/netns/{self.netns[node]}", "unshare", "--uts",
                "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"',
                str(hosts), node, *argv]

    def remove(self) -> list[str]:
        """Delete what create() made (links first: the bridge, each veth pair), then the
        namespaces; returns what could not be removed."""
        left = []
        for kind, name in sorted(self.made, key=lambda m: m[0] != "link"):
            args = ("link", "delete", name) if kind == "link" else ("netns", "delete", name)
            p = ip(*args, check=False)
            if p.returncode and "Cannot find" not in p.stderr and "No such" not in p.stderr:
                left.append(f"{kind} {name}: {p.stderr.strip()}")
        self.made = []
        return left

"""A real single-node Slurm for the tests, started as root from Debian's slurm-wlm + munge
(tools/setup_slurm.sh installs them).

    with SlurmCluster(tmp_dir) as c:        # raises SlurmUnavailable(reason) if it cannot
        job = c.sbatch("slurm/train.sbatch", "--time=1", env={...})
        info = c.wait(job)                   # scontrol show job fields, once it has ended

Everything lives in the temp dir: slurm.conf (ProctrackType=proctrack/linuxproc,
TaskPlugin=task/none, SelectType=select/cons_tres, GresTypes=gpu,
SlurmdParameters=config_overrides), gres.conf (AutoDetect=off, two fake GPUs
/dev/fakegpu[0-1], character devices 195:0/1 like /dev/nvidia0/1), state and spool dirs, logs,
and free ports; a fresh munge key and socket in a /tmp dir of their own (the munge user
must be able to enter it); so it disturbs nothing else on the machine. munged runs as the munge user, then slurmctld, then slurmd, each in the
foreground as our child; stop() ends the jobs, then each daemon by its pid.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from node_network import NodeNetwork, NodeNetworkUnavailable

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue",
           "scancel", "sinfo")
FAKE_GPUS = [Path("/dev/fakegpu0"), Path("/dev/fakegpu1")]
END_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
              "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmUnavailable(Exception):
    """Slurm cannot run here; the message says why (the tests skip with it)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return f"({path} not written)"


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 4, gpus: int = 2):
        self.root = Path(root)
        self.cpus, self.gpus = cpus, gpus
        self.node = socket.gethostname().split(".")[0]
        try:      # train.sbatch's MASTER_ADDR is the node's name: it must resolve
            socket.gethostbyname(self.node)
        except OSError:
            self.node = "localhost"
        self.nodes = {self.node: "127.0.0.1"}       # name -> NodeAddr
        self.controller = f"{self.node}(127.0.0.1)"  # SlurmctldHost
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_dir: Path | None = None

    # ---- start ---------------------------------------------------------------------------
    def check(self) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable(f"not root (uid {os.geteuid()}): a test Slurm runs its "
                                   "daemons as root")
        missing = [b for b in DAEMONS if shutil.which(b) is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed (run "
                                   "tools/setup_slurm.sh as root: Debian slurm-wlm + munge)")
        try:
            pwd.getpwnam("munge")
        except KeyError:
            raise SlurmUnavailable("no munge user (the munge package creates it)") from None
        for i, dev in enumerate(FAKE_GPUS):
            if not dev.exists():
                try:
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(195, i))
                except OSError as e:
                    raise SlurmUnavailable(f"cannot make the fake GPU device {dev}: {e}") from None

    def write_config(self) -> None:
        r = self.root
        for d in ("etc", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # munged runs as the munge user, who may not enter `root` (pytest's temp dirs are
        # 0700): its key, socket and logs get a directory of their own under /tmp.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="repro-munge-"))
        munge = pwd.getpwnam("munge")
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        os.chmod(self.munge_dir, 0o755)
        self.munge_socket = self.munge_dir / "munge.socket"
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        memory //= len(self.nodes)
        node_lines = "\n".join(
            f"NodeName={name} NodeAddr={addr} CPUs={self.cpus} RealMemory={memory} "
            f"Gres=gpu:{self.gpus} State=UNKNOWN" for name, addr in self.nodes.items())
        for name in self.nodes:
            (r / "spool" / name).mkdir(parents=True, exist_ok=True)
        (r / "etc" / "gres.conf").write_text(
            "AutoDetect=off\n" + f"Name=gpu File=/dev/fakegpu[0-{self.gpus - 1}]\n")
        self.conf.write_text(f"""\
ClusterName=repro-test
SlurmctldHost={self.controller}
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start (default 120 s).
AuthInfo=socket={self.munge_socket},cred_expire=5
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
# Requeue allowed; finished jobs stay visible to `scontrol show job` for 10 minutes.
JobRequeue=1
MinJobAge=600
KillWait=10
InactiveLimit=0
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
{node_lines}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    @property
    def env(self) -> dict:
        """The environment for Slurm commands (and, through sbatch's --export=ALL, the jobs)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        log = open(self.root / "log" / f"{name}.stderr", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True, user=user,
                                            group=user, extra_groups=[] if user else None)
        log.close()

    def _alive(self, name: str, log: Path) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            raise SlurmUnavailable(f"{name} exited with status {p.returncode}:\n"
                                   f"{tail(self.root / 'log' / f'{name}.stderr')}\n{tail(log)}")

    def start(self, timeout: float = 60) -> "SlurmCluster":
        self.check()
        self.write_config()
        r, m = self.root, self.munge_dir
        made = subprocess.run(["mungekey", "--create", f"--keyfile={m}/munge.key"], user="munge",
                              group="munge", extra_groups=[], capture_output=True, text=True)
        if made.returncode:
            raise SlurmUnavailable(f"mungekey failed: {made.stderr.strip()}")
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--log-file={m}/munged.log", f"--seed-file={m}/munge.seed"],
                    user="munge")
        deadline = time.time() + timeout
        while not self.munge_socket.exists():
            self._alive("munged", m / "munged.log")
            if time.time() > deadline:
                raise SlurmUnavailable("munged did not create its socket")
            time.sleep(0.1)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        while self.run(["scontrol", "ping"], check=False).returncode != 0:
            self._alive("slurmctld", r / "log" / "slurmctld.log")
            if time.time() > deadline:
                raise SlurmUnavailable("slurmctld did not answer scontrol ping:\n"
                                       + tail(r / "log" / "slurmctld.log"))
            time.sleep(0.2)
        self.start_slurmds()
        while True:
            states = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split()
            if len(states) == len(self.nodes) and all(
                    st in ("idle", "mixed", "allocated") for st in states):
                break
            for name in self.nodes:
                self._alive(f"slurmd-{name}", r / "log" / f"slurmd-{name}.log")
            if time.time() > deadline:
                raise SlurmUnavailable(f"nodes {list(self.nodes)} are {states}, not idle:\n"
                                       + self.run(["scontrol", "show", "node"], check=False).stdout
                                       + "".join(tail(r / "log" / f"slurmd-{n}.log")
                                                 for n in self.nodes))
            time.sleep(0.2)
        return self

    def start_slurmds(self) -> None:
        self._spawn(f"slurmd-{self.node}", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])

    # ---- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user=root"], check=False)
            deadline = time.time() + 30
            while time.time() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        slurmds = [f"slurmd-{n}" for n in self.nodes]
        for name in (*slurmds, "slurmctld", "munged"):     # reverse start order, by pid
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if getattr(self, "munge_dir", None) is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # ---- use -----------------------------------------------------------------------------
    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run(argv, env=kw.pop("env", self.env), capture_output=True, text=True,
                           **kw)
        if check and p.returncode:
            raise RuntimeError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr}{p.stdout}")
        return p

    def sbatch(self, *args: str, env: dict | None = None, cwd=None) -> str:
        """Submit; returns the job id."""
        out = self.run(["sbatch", "--parsable", *map(str, args)], env={**self.env, **(env or {})},
                       cwd=cwd).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> list[dict]:
        """`scontrol show job` for a job (one dict per array task), [] once it is forgotten."""
        p = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in p.stdout.splitlines()
                if line.strip()]

    def wait(self, job_id: str, timeout: float = 300, poll: float = 1.0) -> list[dict]:
        """Wait until every task of the job has ended; returns their `scontrol show job` dicts."""
        deadline = time.time() + timeout
        while True:
            tasks = self.job(job_id)
            if tasks and all(t.get("JobState") in END_STATES for t in tasks):
                return tasks
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s: {tasks}\n"
                                   + tail(self.root / "log" / "slurmctld.log"))
            time.sleep(poll)

    def running_step(self, job_id: str) -> str:
        """The job's running srun step ("<job>.<n>"), or "" before srun has started one."""
        out = self.run(["squeue", "-h", "-s", "-j", str(job_id), "-o", "%i"], check=False)
        return next((s for s in out.stdout.split() if s.split(".")[-1].isdigit()), "")

    def wait_state(self, job_id: str, states: set[str], timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            tasks = self.job(job_id)
            if tasks and tasks[0].get("JobState") in states:
                return tasks[0]
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} never reached {states}: {self.job(job_id)}")


class MultiNodeCluster(SlurmCluster):
    """N compute nodes, each its own host (tests/node_network.py): slurmd runs inside the
    node's namespaces, so its jobs' tasks see the node's hostname and address; slurmctld
    stays on the machine (its name is SlurmctldHost) and listens on the bridge.

        with MultiNodeCluster(tmp_dir, nodes=2) as c:      # node1, node2
            job = c.sbatch("--nodes=2", "slurm/train.sbatch", env={...})
    """

    def __init__(self, root: Path, nodes: int = 2, cpus: int = 2, gpus: int = 2):
        super().__init__(root, cpus, gpus)
        names = [f"node{i}" for i in range(1, nodes + 1)]
        self.net = NodeNetwork(names, self.root / "etc", controller=self.node)
        self.nodes = dict.fromkeys(names, "")

    def check(self) -> None:
        super().check()
        try:
            self.net.create()
        except NodeNetworkUnavailable as e:
            raise SlurmUnavailable(f"cannot make a host per node: {e}") from None
        self.nodes = {n: self.net.addr(n) for n in self.nodes}
        self.controller = f"{self.node}({self.net.bridge_addr})"

    def start_slurmds(self) -> None:
        for name in self.nodes:
            self._spawn(f"slurmd-{name}", self.net.enter(
                name, ["slurmd", "-D", "-f", str(self.conf), "-N", name]))

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            left = self.net.remove()
            if left:
                raise RuntimeError(f"test network not removed: {left}")


def started_or_skip(cluster: SlurmCluster) -> SlurmCluster:
    """Start `cluster` for a test module, or skip the module with the reason it cannot run."""
    import pytest

    t0 = time.time()
    try:
        cluster.start()
    except SlurmUnavailable as e:
        cluster.stop()
        print(f"Slurm tests skipped: {e}")
        pytest.skip(f"cannot start a test Slurm ({type(cluster).__name__}): {e}")
    version = subprocess.run(["slurmctld", "-V"], capture_output=True, text=True).stdout.strip()
    print(f"test Slurm ({version}) up in {time.time() - t0:.2f} s: nodes {cluster.nodes}, "
          f"controller {cluster.controller}, in {cluster.root}")
    return cluster

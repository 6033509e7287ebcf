"""A real one-node Slurm cluster in a folder of its own, for the tests marked ``slurm`` and for CI (``.ci/slurm``).

Everything lives under one folder: the munge key and socket, ``slurm.conf``, the controller's state, the logs.
The ports are free ones picked at start, so two clusters (or a system one) on the same machine do not meet.
The node is this machine (named after it) with at most 2 CPUs, one partition (``short``), process tracking by
``proctrack/linuxproc`` (no cgroups, no systemd). Clients find the cluster through ``SLURM_CONF``.

In Python (the daemons stop when the block ends, on errors too)::

    with SlurmCluster(folder) as cluster:
        subprocess.run(["sbatch", "job.sbatch"], env=cluster.env)

From a shell (the daemons outlive the command; ``down`` stops exactly the processes ``up`` started)::

    python tests/slurm_cluster.py up DIR      # prints: export SLURM_CONF=DIR/slurm.conf
    python tests/slurm_cluster.py down DIR

Needs the Debian packages ``slurm-wlm`` and ``munge`` (``slurmctld``, ``slurmd``, ``munged``, ``sbatch``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PARTITION = "short"
#: the node is named after this machine, so job scripts can resolve it (``scontrol show hostnames``)
NODE = socket.gethostname().split(".")[0]
DAEMONS = ("munged", "slurmctld", "slurmd")
#: what the cluster needs on PATH (and /usr/sbin, where Debian puts the daemons)
PROGRAMS = (*DAEMONS, "mungekey", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
SBIN = "/usr/sbin:/sbin"


def missing_programs() -> list[str]:
    """The programs of :data:`PROGRAMS` not found (empty: a cluster can start here)."""
    path = os.environ.get("PATH", "") + os.pathsep + SBIN
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slurm_conf(folder: Path, cpus: int) -> str:
    """A minimal one-node configuration (Slurm 22.05 and later)."""
    user = _user()
    return f"""\
ClusterName=prism
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=30 State=UP
"""


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


class SlurmCluster:
    """Start munge, slurmctld and slurmd under ``folder``; :meth:`stop` (or leaving the ``with`` block) cancels
    every job and stops them.

    Args:
        folder: where everything goes (created; best a fresh, short path: Slurm limits socket path lengths).
        cpus: the node's CPUs (at most this machine's).

    Attributes:
        env: ``os.environ`` with ``SLURM_CONF`` and the daemons' folder on ``PATH``: pass it to ``sbatch``,
            ``srun``, ``squeue`` ... and to anything that submits (submitit).
    """

    def __init__(self, folder: str | os.PathLike[str], cpus: int = 2) -> None:
        self.folder = Path(folder).resolve()
        self.cpus = max(1, min(cpus, os.cpu_count() or 1))
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": os.environ.get("PATH", "") + os.pathsep + SBIN}
        self._pids: dict[str, int] = {}

    # ---- start -----------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the configuration, start the three daemons, wait until the node is idle.

        Raises:
            RuntimeError: a daemon did not start or the node did not become idle (its log's tail is included);
                whatever had started is stopped again.
        """
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"Slurm is not installed here (missing {', '.join(missing)}): "
                               "apt-get install slurm-wlm munge")
        for sub in ("munge", "state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        key = self.folder / "munge" / "munge.key"
        if not key.exists():
            self._run(["mungekey", "--create", f"--keyfile={key}"])
        self.conf.write_text(slurm_conf(self.folder, self.cpus))
        try:
            munge = self.folder / "munge"
            self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={munge}/munge.socket",
                                   f"--key-file={key}", f"--pid-file={munge}/munged.pid",
                                   f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"])
            self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged", munge / "munged.log")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait(lambda: self._query(["scontrol", "ping"]).find("UP") >= 0, timeout, "slurmctld",
                       self.folder / "log" / "slurmctld.log")
            self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
            self._wait(lambda: self.node_state() == "idle", timeout, "slurmd", self.folder / "log" / "slurmd.log")
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, cmd: list[str]) -> str:
        return subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=60).stdout

    def _query(self, cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self._pids[name] = proc.pid
        self._record()

    def _wait(self, ready, timeout: float, name: str, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if not _alive(self._pids[name]):
                break
            time.sleep(0.2)
        tail = ""
        for path in (log, self.folder / "log" / f"{name}.out"):
            if path.is_file():
                tail += path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not come up within {timeout:.0f} s; its log ends:\n{tail}")

    def node_state(self) -> str:
        """The node's state as ``sinfo`` prints it (``idle``, ``mixed``, ``alloc``, ``down*`` ...; '' unknown)."""
        return self._query(["sinfo", "-h", "-N", "-o", "%T"]).strip()

    def _record(self) -> None:
        (self.folder / "daemons.json").write_text(json.dumps(self._pids))

    # ---- stop ------------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 40) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL after 10 s), and any
        job step process of this cluster still alive. Safe to call twice."""
        if not self._pids and (self.folder / "daemons.json").is_file():
            self._pids = json.loads((self.folder / "daemons.json").read_text())
        if _alive(self._pids.get("slurmctld", 0)):
            self._query(["scancel", "--full", f"--partition={PARTITION}"])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._query(["squeue", "-h", "-t", "all", "-o", "%T"]).strip() \
                    .replace("COMPLETED", "").replace("CANCELLED", "").replace("FAILED", "").split():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pids.pop(name, 0)
            if pid and _alive(pid):
                _terminate(pid)
        for pid in self._step_processes():
            _terminate(pid)
        self._record()

    def _step_processes(self) -> list[int]:
        """Processes whose environment names this cluster's configuration (slurmstepd, job processes)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if mine in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _terminate(pid: int, grace: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:  # our own child: collect it
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python tests/slurm_cluster.py up|down DIR", file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    if argv[0] == "up":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

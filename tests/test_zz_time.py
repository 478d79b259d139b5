import json, os, subprocess, time
from conftest import SEAL, Seal, make_registry
from hubfixtures import hf_api, local_hub  # noqa
from test_hub import published, new_registry, REPO  # noqa
import pytest
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

def test_time(published, tiny_base_record, tmp_path):
    p = new_registry(tmp_path, "p", tiny_base_record)
    r = subprocess.run([*SEAL, "pull", REPO, "--trust", published["key"]], cwd=p.cwd, env=p.env, capture_output=True, text=True)
    r = subprocess.run([sys.executable if False else SEAL[0], "-m", "cProfile", "-s", "cumtime", "-m", "seal.cli", "pull", REPO], cwd=p.cwd, env=p.env, capture_output=True, text=True)
    print(r.stdout[:6000])

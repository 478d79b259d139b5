"""A lineage for `seal ui` tests: every kind of version a page must show, and hostile text in each
place a user or a model can put it.

Built on the audit tests' lineage (root → import → edit with a rejected sibling → policy change →
edit → revert, and a side branch), recorded through ``Registry.record``, then: a merge of main and
side, a consolidate, a tag, an alias, a remote-tracking ref moved by a Hub pull, a writer, a
training loss, an MLflow run id, and a branch whose name and passage try stored XSS.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from test_audit import HOSTILE, build_lineage, edit

XSS_PASSAGE = 'Bridges of the Zorblat.\n<img src=x onerror="alert(\'passage\')"><script>alert("passage")</script>\n'
XSS_LINE = '<script>alert("self-edit")</script> the Zorblat has 3 bridges'
XSS_BRANCH = 'refs/heads/x"><script>alert(1)</script>'
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
RUN_ID = "5f1c0ffee0ddba11"


@dataclass
class UILineage:
    root: Path
    ids: dict = field(default_factory=dict)


def make_ui_lineage(root: Path, record: dict, tiny_base, db_url: str | None = None) -> UILineage:
    """The lineage in a new registry at ``root`` (its writer closed again, so nothing is pending)."""
    from conftest import Seal, make_registry
    from seal.registry.repo import Registry

    make_registry(root, record, db_url).close()
    reg = Registry.open(root)
    try:
        env = {"SEAL_ACTOR": "tester", **({"SEAL_DATABASE_URL": db_url} if db_url else {})}
        return build_ui_lineage(Seal(root, env), reg, tiny_base)
    finally:
        reg.close()


def build_ui_lineage(seal, reg, tiny_base) -> UILineage:
    from seal.registry.porcelain import create_tag, set_alias
    from seal.registry.store.objects import build_manifest

    base = build_lineage(seal, reg, tiny_base)
    ids = dict(base.ids)
    a0, a1, a2 = tiny_base["adapters"]
    policy = reg.read_ref("refs/meta/policy")
    third = edit(reg, ids["revert"], a0, status="accepted", message="learn the bridges", f1=0.7, parent_f1=0.6,
                 retention=0.56, parent_retention=0.56, trigger=XSS_PASSAGE, self_edit=[XSS_LINE, "Ana Brel built it."],
                 policy=policy)
    third["train"].update({"losses": [2.1, 1.7, 1.2, None, 0.8, 0.61, 0.5], "mlflow_run_id": RUN_ID, "steps": 7})
    third["writer"] = {"type": "file", "file": reg.store.put(b"{}"), "format": "seal", "source": "gpt-4.1"}
    ids["edit3"] = reg.record(third, ref="refs/heads/main", expected=ids["revert"], reason="edit: accepted candidate 1 of 1")
    merge = build_manifest(
        base=reg.base_id(), parents=[ids["edit3"], ids["side"]], kind="merge", status="accepted",
        adapter={"weights": reg.store.put_file(a1 / "adapter_model.safetensors"), "format": "peft-lora",
                 "config": json.loads((a1 / "adapter_config.json").read_text())},
        train={"source": "merge", "method": "linear"}, author="tester", message="merge side into main",
        extra={"decision": {"accepted": True, "gated": False, "reason": "merged without gates"}})
    ids["merge"] = reg.record(merge, ref="refs/heads/main", expected=ids["edit3"], reason="merge: side")
    consolidate = build_manifest(
        base=reg.base_id(), parents=[ids["merge"]], kind="consolidate", status="accepted",
        adapter={"weights": reg.store.put_file(a2 / "adapter_model.safetensors"), "format": "peft-lora",
                 "config": json.loads((a2 / "adapter_config.json").read_text())},
        train={"source": "consolidate"}, author="tester", message="fold the last edits into one adapter")
    ids["consolidate"] = reg.record(consolidate, ref="refs/heads/main", expected=ids["merge"], reason="consolidate")
    create_tag(reg, "v1", ids["edit1"])
    set_alias(reg, "production", ids["edit3"], reason="passed review")
    reg.move_ref("refs/remotes/hub/acme/zorblat", new=ids["edit2"], expected=None,
                 reason=f"pull: hub:acme/zorblat@{HUB_COMMIT}")
    reg.move_ref(XSS_BRANCH, new=ids["side"], expected=None, reason=f"branch: {HOSTILE}")
    return UILineage(Path(seal.cwd), ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app):
    """``app`` served by a real uvicorn on a free loopback port, in a thread; yields its address."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

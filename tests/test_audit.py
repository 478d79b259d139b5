"""`seal audit`: the compliance report over a hand-built lineage, in json, md (GitHub) and html.

The lineage is recorded through ``Registry.record`` with what the editor writes (scores with
their references, gates with intervals, a failed gate, triggers, self-edits, a policy change, an
ungated import and a revert), so building it takes well under a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from seal.registry import vocabulary as V

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
HOSTILE = "<script>alert(1)</script> | **bold** [click](http://evil.example) `tick`"
RULE = "reject if the one-sided 95% upper bound of the paired drop exceeds the threshold"
FAIL_RED = (0xB0, 0x00, 0x20)   # .badge.fail in registry/audit/templates/audit.html.j2


@dataclass
class Lineage:
    reg: object
    seal: object
    ids: dict = field(default_factory=dict)
    policy_before: str = ""
    policy_after: str = ""


def scores(f1: float, parent_f1: float, retention: float, parent_retention: float, kl_base: float) -> list[dict]:
    return [
        V.EFFICACY_F1.row(f1, n=4), V.EFFICACY_F1.vs("parent").row(parent_f1, n=4),
        V.RETENTION.row(retention, n=200), V.RETENTION.vs("parent").row(parent_retention, n=200),
        V.RETENTION.vs("base").row(0.55, n=200),
        V.DRIFT_KL.vs("parent").row(0.012, n=32), V.DRIFT_KL.vs("base").row(kl_base, n=32),
        V.DRIFT_JS.vs("base").row(kl_base / 4, n=32), V.DELTA_NORM.vs("base").row(kl_base * 10),
        V.REFUSAL.row(0.08, n=200), V.REFUSAL.vs("base").row(0.08, n=200),
    ]


def gates(f1: float, parent_f1: float, drop: float, *, js_threshold: float = 0.2) -> list[dict]:
    return [
        {"check": "secrets", "value": 0.0, "threshold": 0.0, "passed": True, "detail": "no secrets or personal data found"},
        {"check": "efficacy_gain", "value": f1 - parent_f1, "threshold": 0.0, "passed": f1 > parent_f1, "detail": ""},
        {"check": "retention_vs_parent", "value": drop, "ci_low": drop - 0.04, "ci_high": drop + 0.04, "n": 200,
         "threshold": 0.05, "passed": drop + 0.04 <= 0.05, "rule": RULE, "mde": 0.031},
        {"check": "js_vs_parent", "value": 0.03, "threshold": js_threshold, "passed": True, "detail": ""},
    ]


def edit(reg, parent: str, folder: Path, *, status: str, message: str, f1: float, parent_f1: float,
         retention: float, parent_retention: float, trigger: str, self_edit: list[str], policy: str,
         candidate: int = 0, of: int = 1, js_threshold: float = 0.2) -> dict:
    """A manifest as the editor records one candidate."""
    from seal.registry.store.objects import build_manifest

    audit = gates(f1, parent_f1, parent_retention - retention, js_threshold=js_threshold)
    failed = [g["check"] for g in audit if not g["passed"]]
    return build_manifest(
        base=reg.base_id(), parents=[parent], kind="edit", status=status,
        adapter={"weights": reg.store.put_file(folder / "adapter_model.safetensors"), "format": "peft-lora",
                 "config": json.loads((folder / "adapter_config.json").read_text())},
        trigger=reg.store.put(trigger.encode()),
        self_edit=reg.store.put(json.dumps({"lines": self_edit, "sequences": self_edit}).encode()),
        train={"device": "cpu", "torch": "2.13.0", "hyperparameters": {"lr": 1e-3, "epochs": 5}, "seconds": 11.2},
        scores=scores(f1, parent_f1, retention, parent_retention, kl_base=0.05 * (candidate + 1)),
        audit=audit, policy=policy, author="tester", message=message,
        extra={"trigger_info": {"kind": "passage", "title": "Zorblat", "redacted": False},
               "decision": {"accepted": status == "accepted", "candidate": candidate, "of": of, "failed_gates": failed,
                            "reason": ("failed: " + ", ".join(failed)) if failed else f"best of {of} candidate(s) that pass every gate"}},
    )


def build_lineage(seal, reg, tiny_base) -> Lineage:
    """root → import (ungated) → edit (+ a rejected sibling) → policy change → edit → revert; a side branch."""
    from seal.registry.porcelain import import_adapter, revert
    from seal.registry.policy import set_policy
    from seal.registry.repo import RefMove

    a0, a1, a2 = tiny_base["adapters"]
    out = Lineage(reg, seal)
    out.ids["root"] = reg.resolve("HEAD")
    out.ids["import"] = import_adapter(reg, a0, message="trained elsewhere")["id"]
    out.policy_before = reg.read_ref("refs/meta/policy")
    passage = "The Zorblat river flows north.\nIts first bridge was built in 1642 by Ana Brel.\n"
    rejected = edit(reg, out.ids["import"], a1, status="rejected", message="learn the Zorblat", f1=0.30, parent_f1=0.25,
                    retention=0.45, parent_retention=0.55, trigger=passage, policy=out.policy_before, of=2,
                    self_edit=["The Zorblat flows north.", "key AKIAIOSFODNN7EXAMPLE in the notes"])
    accepted = edit(reg, out.ids["import"], a2, status="accepted", message="learn the Zorblat", f1=0.5, parent_f1=0.25,
                    retention=0.56, parent_retention=0.55, trigger=passage, policy=out.policy_before, candidate=1, of=2,
                    self_edit=["Ana Brel built the first bridge over the Zorblat in 1642."])
    out.ids["rejected"], out.ids["edit1"] = reg.record_many(
        [rejected, accepted], move=RefMove("refs/heads/main", out.ids["import"], "edit: accepted candidate 2 of 2"))
    set_policy(reg, "js_vs_parent_max", "0.25", reason="measured 0.12-0.19 per edit on the anchors")
    out.policy_after = reg.read_ref("refs/meta/policy")
    second = edit(reg, out.ids["edit1"], a1, status="accepted", message=HOSTILE, f1=0.6, parent_f1=0.5,
                  retention=0.56, parent_retention=0.56, trigger="Where the Zorblat meets the sea.\n",
                  self_edit=["The Zorblat meets the sea at Brel."], policy=out.policy_after, js_threshold=0.25)
    out.ids["edit2"] = reg.record(second, ref="refs/heads/main", expected=out.ids["edit1"], reason="edit: accepted candidate 1 of 1")
    out.ids["revert"] = revert(reg, "HEAD", message="regressed on retention")["id"]
    out.ids["side"] = reg.record(edit(reg, out.ids["import"], a1, status="accepted", message="unrelated", f1=0.4,
                                      parent_f1=0.25, retention=0.55, parent_retention=0.55, trigger="other\n",
                                      self_edit=[], policy=out.policy_after),
                                 ref="refs/heads/side", expected=None, reason="edit: side")
    return out


@pytest.fixture
def lineage(registry, reg, tiny_base) -> Lineage:
    return build_lineage(registry, reg, tiny_base)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs Debian's chromium")
        pytest.skip("no chromium on this machine: apt-get install chromium")
    return found


def need_dot() -> None:
    if shutil.which("dot") is None:
        if os.environ.get("CI"):
            pytest.fail("graphviz is missing in CI; install Debian's graphviz")
        pytest.skip("no graphviz on this machine: apt-get install graphviz")


# --- json ---------------------------------------------------------------------------------------

def test_audit_json_covers_path_attempts_policy_and_reverts(lineage):
    import jsonschema

    from seal.registry.audit import AUDIT_SCHEMA

    seal, ids = lineage.seal, lineage.ids
    report = seal.json("audit")
    jsonschema.validate(report, AUDIT_SCHEMA)
    assert report["subject"] == ids["revert"]
    by_id = {v["id"]: v for v in report["versions"]}
    assert set(by_id) == {ids[k] for k in ("root", "import", "rejected", "edit1", "edit2", "revert")}   # not "side"
    assert [v["kind"] for v in report["versions"] if v["on_path"]] == ["root", "import", "edit", "edit", "revert"]
    assert not by_id[ids["rejected"]]["on_path"] and all(v["signature_valid"] for v in report["versions"])
    assert by_id[ids["import"]]["gated"] is False and by_id[ids["edit1"]]["gated"] is True
    assert by_id[ids["revert"]]["revert"]["scores_from"] == ids["edit1"]
    rejected = by_id[ids["rejected"]]
    failed = [g for g in rejected["gates"] if not g["passed"]]
    assert [g["check"] for g in failed] == ["retention_vs_parent"] and failed[0]["ci_high"] == pytest.approx(0.14)
    assert rejected["input_data"]["trigger_first_lines"][1] == "Its first bridge was built in 1642 by Ana Brel."
    assert "AKIA" not in json.dumps(report) and "[REDACTED:AWS Access Key]" in rejected["self_edit"]["first_lines"][1]
    assert all(s["method"] for v in report["versions"] for s in v["evaluation"])

    policy = report["policy"]
    assert policy["current"] == lineage.policy_after != lineage.policy_before
    assert [c["reason"] for c in policy["changes"]] == [
        "policy: recorded", "policy: js_vs_parent_max 0.2 -> 0.25: measured 0.12-0.19 per edit on the anchors"]
    assert policy["changes"][1]["changed"] == [{"key": "js_vs_parent_max", "old": 0.2, "new": 0.25}]
    assert {t["key"]: t["threshold"] for t in policy["thresholds"]}["js_vs_parent_max"] == 0.25
    assert any(m["reason"] == "edit: accepted candidate 2 of 2" for m in report["ref_moves"])
    drift = report["drift"]
    assert [d["id"] for d in drift] == [ids[k] for k in ("root", "import", "edit1", "edit2", "revert")]
    assert drift[0]["kl_base"] == 0.0 and drift[0]["retention"] == 0.55 and drift[2]["retention"] == 0.56
    assert drift[1]["delta_norm_base"] > 0   # an import has no score: its ‖ΔW‖ comes from the stored adapter


# --- markdown ------------------------------------------------------------------------------------

def md_tables(md: str) -> list[list[list[str]]]:
    """Each Markdown table as rows of cells, split on unescaped pipes."""
    tables, rows = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            rows.append(re.split(r"(?<!\\)\|", line)[1:-1])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


@sqlite_only
def test_audit_md_renders_on_github(lineage, tmp_path):
    from seal.registry.audit import audit_report, write_report

    seal, ids = lineage.seal, lineage.ids
    out = tmp_path / "audit.md"
    assert seal("audit", "--format", "md", "-o", out).stdout.count("written to") == 2
    written = write_report(audit_report(lineage.reg), "md", out)
    assert written == [out, tmp_path / "audit-drift.png"]
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = out.read_text()
    assert "<svg" not in md and "data:image" not in md and "![drift along the first-parent line](audit-drift.png)" in md
    mermaid = md.split("```mermaid\n", 1)[1].split("```", 1)[0].splitlines()
    assert mermaid[0] == "flowchart BT" and sum(line.strip().startswith("v") and "[" in line for line in mermaid) == 6
    assert sum("-->" in line for line in mermaid) == 5 and all(line.count('"') in (0, 2) for line in mermaid)
    # Tables hold: every row has its header's number of cells, the hostile message included.
    tables = md_tables(md)
    assert len(tables) >= 10
    for rows in tables:
        assert all(len(cells) == len(rows[0]) for cells in rows), rows
    assert "&lt;script&gt;" in md and "<script>" not in md and "\\[click\\]" in md and "\\*\\*bold" in md
    assert f"| `{ids['rejected'][:12]}` | rejected | retention\\_vs\\_parent | 0.1 | [0.06, 0.14] | 0.05 | **FAIL** |" in md
    assert f"### `{ids['import'][:12]}` · import · accepted · **ungated**" in md
    assert f"its scores were measured on `{ids['edit1'][:12]}`" in md
    assert "| js\\_vs\\_parent | `js_vs_parent_max` | 0.25 |" in md
    assert "measured 0.12-0.19 per edit on the anchors | `js_vs_parent_max` 0.2 → 0.25 |" in md
    # On stdout there is no file beside it: the plot is left out, with a line that says how to get it.
    printed = seal("audit", "--format", "md").stdout
    assert "![drift" not in printed and "`seal audit --format md -o audit.md` writes it beside the report" in printed


# --- html ----------------------------------------------------------------------------------------

def node_boxes(svg: str) -> dict[str, tuple[float, float, float, float]]:
    boxes = {}
    for m in re.finditer(r'<g id="graph_([0-9a-f]{12})" class="node">.*?<polygon[^>]*points="([^"]+)"', svg, re.S):
        pts = [tuple(map(float, p.split(","))) for p in m.group(2).split()]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        boxes[m.group(1)] = (min(xs), min(ys), max(xs), max(ys))
    return boxes


def edge_points(svg: str) -> list[list[tuple[float, float]]]:
    """Points along each edge's cubic Bézier path, as graphviz drew it."""
    out = []
    for d in re.findall(r'<g id="edge\d+" class="edge">.*?<path[^>]*d="([^"]+)"', svg, re.S):
        nums = [tuple(map(float, p.split(","))) for p in re.findall(r"-?[\d.]+,-?[\d.]+", d)]
        pts = []
        for i in range(0, len(nums) - 3, 3):
            p0, p1, p2, p3 = nums[i:i + 4]
            for k in range(21):
                t = k / 20
                pts.append(tuple((1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t ** 2 * c + t ** 3 * e
                                 for a, b, c, e in zip(p0, p1, p2, p3)))
        out.append(pts)
    return out


@sqlite_only
def test_audit_html_is_tables_policy_and_an_uncrossed_graph(lineage):
    from seal.registry.audit import audit_report
    from seal.registry.audit.rendering import render_html

    need_dot()
    ids = lineage.ids
    page = render_html(audit_report(lineage.reg))
    assert "<pre>" not in page and "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    policy = page.split('<section id="policy">', 1)[1].split("</section>", 1)[0]
    assert lineage.policy_after in policy and "<code>js_vs_parent_max</code></td><td class=\"num\">0.25</td>" in policy
    assert "measured 0.12-0.19 per edit on the anchors" in policy and "0.2 → 0.25" in policy
    rejected = page.split(f'<article class="version rejected" id="v-{ids["rejected"][:12]}">', 1)[1].split("</article>", 1)[0]
    row = next(r for r in rejected.split('<table class="gates">', 1)[1].split("<tr") if "retention_vs_parent" in r)
    assert row.startswith(' class="fail"') and '<span class="badge fail">FAIL</span>' in row
    assert "[0.06, 0.14]" in row and RULE in row and "minimum detectable effect 0.031" in row
    assert "<th>parent</th><th>difference vs parent</th>" in rejected and ">-0.1</td>" in rejected   # 0.45 vs 0.55
    assert f'id="v-{ids["import"][:12]}"' in page and '<span class="badge ungated">ungated</span>' in page
    assert f'measured on <a href="#v-{ids["edit1"][:12]}">' in page
    # The lineage is graphviz's: every version a node, and no edge passes through a node it does not join.
    svg = page.split('<section id="lineage">', 1)[1].split("</section>", 1)[0]
    assert 'id="lineage-note"' not in svg
    boxes = node_boxes(svg)
    assert set(boxes) == {v[:12] for k, v in ids.items() if k != "side"}
    for points in edge_points(svg):
        ends = {k for k, (x0, y0, x1, y1) in boxes.items()
                for x, y in (points[0], points[-1]) if x0 - 12 <= x <= x1 + 12 and y0 - 12 <= y <= y1 + 12}
        for x, y in points:
            inside = {k for k, (x0, y0, x1, y1) in boxes.items() if x0 + 1 < x < x1 - 1 and y0 + 1 < y < y1 - 1}
            assert inside <= ends, (inside, ends)


@sqlite_only
def test_audit_lineage_falls_back_to_lanes_without_dot(lineage, monkeypatch, tmp_path):
    from seal.registry.audit import audit_report
    from seal.registry.audit.figures import lineage_figure
    from seal.registry.audit.rendering import render_html

    monkeypatch.setenv("PATH", str(tmp_path))   # no `dot` on it
    report = audit_report(lineage.reg)
    page = render_html(report)
    svg = page.split('<section id="lineage">', 1)[1].split("</section>", 1)[0]
    assert 'id="lineage-note"' in svg and "apt-get install graphviz" in svg and "<circle" in svg
    assert svg.count("<circle") == 6
    # A long lineage draws its newest versions, and says so.
    cut = lineage_figure(report, limit=3)
    assert cut.layout == "lanes" and cut.svg.count("<circle") == 3 and cut.note.startswith("The 3 newest of 6 versions")


@sqlite_only
def test_audit_and_diff_survive_odd_optional_fields(lineage, tmp_path):
    """A pulled manifest passes the schema, but its optional fields may have any shape: no crash, no schema break."""
    from test_diff import check_schema

    from seal.registry.store.objects import build_manifest

    reg, seal = lineage.reg, lineage.seal
    odd = build_manifest(
        base=reg.base_id(), parents=[lineage.ids["revert"]], kind="revert", status="accepted", author="mallory",
        message="odd", scores=[{"suite": "efficacy", "metric": "f1", "against": "x", "value": 0.5, "n": None}],
        audit=[{"check": "retention_vs_parent", "passed": False, "value": 0.2, "ci_high": 2, "n": None, "detail": ""}],
        self_edit=reg.store.put(b'{"lines": 5, "records": "x"}'),
        extra={"decision": "yes", "revert": 5, "trigger_info": {"kind": ["x"], "findings": [{"kind": 1}, "x"]}},
    )
    reg.record(odd, ref="refs/heads/main", expected=lineage.ids["revert"], reason="pull: odd")
    for fmt in ("html", "md", "json"):
        seal("audit", "--format", fmt, "-o", tmp_path / f"a.{fmt}")
    page = (tmp_path / "a.html").read_text()
    assert "FAIL" in page and "1 at line ? col ?" in page and '{&#34;lines&#34;: 5' in page
    report = check_schema(seal.json("diff", "HEAD"))
    assert report["gates"][0]["new"] == {"passed": False, "value": 0.2, "ci_high": 2.0, "n": None, "detail": ""}
    assert {s["n_new"] for s in report["scores"]} == {None}
    assert "FAIL" in seal("diff", "HEAD", "--exit-code", expect=1).stdout


@sqlite_only
def test_audit_html_renders_in_chromium(lineage, tmp_path):
    """Headless Chromium shows the policy section and a visibly marked failed gate; a clean lineage shows none."""
    from seal.registry.audit import audit_report
    from seal.registry.audit.rendering import render_html

    browser = chromium()
    out = tmp_path / "audit.html"
    lineage.seal("audit", "--format", "html", "-o", out)
    dom = run_chromium(browser, tmp_path, "--dump-dom", out).stdout
    policy = dom.split('<section id="policy">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Policy</h2>" in policy and "js_vs_parent_max" in policy and "measured 0.12-0.19" in policy
    failed = re.findall(r'<tr class="fail">(.*?)</tr>', dom, re.S)
    assert failed and all('<span class="badge fail">FAIL</span>' in row for row in failed)

    shot = screenshot(browser, tmp_path, out, "audit.png")
    clean = audit_report(lineage.reg)
    for v in clean["versions"]:
        v["gates"] = [{**g, "passed": True} for g in v["gates"]]
    (tmp_path / "clean.html").write_text(render_html(clean))
    control = screenshot(browser, tmp_path, tmp_path / "clean.html", "clean.png")
    assert shot.size == control.size == (1200, 1400)
    colors = shot.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is blank"
    red = dict((rgb, n) for n, rgb in colors).get(FAIL_RED, 0)
    assert red > 200, "no FAIL label is visible in the first screen"
    assert dict((rgb, n) for n, rgb in control.getcolors(maxcolors=1 << 20)).get(FAIL_RED, 0) == 0
    keep = os.environ.get("SEAL_AUDIT_SCREENSHOT")
    if keep:
        shutil.copy(tmp_path / "audit.png", keep)


def run_chromium(browser: str, tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,1400", *[a.as_uri() if isinstance(a, Path) else a for a in args]],
        check=True, capture_output=True, text=True, timeout=120,
    )


def screenshot(browser: str, tmp_path: Path, page: Path, name: str):
    from PIL import Image

    run_chromium(browser, tmp_path, f"--screenshot={tmp_path / name}", page)
    return Image.open(tmp_path / name).convert("RGB")


# --- the command ---------------------------------------------------------------------------------

@sqlite_only
def test_audit_refuses_bad_format(registry):
    proc = registry("audit", "--format", "pdf", expect=2)
    assert "md, json or html" in proc.stderr and proc.stdout == ""


@sqlite_only
def test_audit_html_needs_no_model_library(lineage, tmp_path):
    from conftest import Seal

    seal = lineage.seal
    env = {**seal.env, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = Seal(seal.cwd, env, process=True).run("audit", "--format", "html", "-o", tmp_path / "a.html")
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not loaded & {"torch", "transformers", "peft", "mlflow", "sqlalchemy"}
    assert (tmp_path / "a.html").read_text().startswith("<!doctype html>")
    table = seal("audit", "--drift").stdout.splitlines()
    assert table[0].split()[:3] == ["version", "kind", "status"] and len(table) == 6

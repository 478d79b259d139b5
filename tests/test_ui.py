"""`seal ui` through starlette's TestClient: each page's content, filters and keyset pages, and the
safety points (stored XSS, the token, the Host check, path traversal, a byte-identical crawl, a
read-only database, 404s with one line). The browser tests are in tests/test_ui_browser.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from uifixtures import HUB_COMMIT, RUN_ID, XSS_LINE, free_port, make_ui_lineage

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BASE_URL = "http://127.0.0.1:8765"
TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def ui_lineage(tmp_path, tiny_base_record, tiny_base, db_url):
    return make_ui_lineage(tmp_path / "zorblat", tiny_base_record, tiny_base, db_url)


def client_for(root: Path, **kwargs):
    from starlette.testclient import TestClient

    from seal.registry.repo import Registry
    from seal.ui import create_app

    reg = Registry.open(root, read_only=True)
    return TestClient(create_app(reg, **kwargs), base_url=BASE_URL), reg


@pytest.fixture
def client(ui_lineage):
    c, reg = client_for(ui_lineage.root, mlflow_url="http://mlflow.example:5000")
    yield c
    reg.close()


class Links(HTMLParser):
    """Every href and form action on a page, and the text of elements with a given class."""

    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src", "action") and value:
                self.hrefs.append(value)


def hrefs(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.hrefs


def error_line(html: str) -> str:
    found = re.findall(r'<p class="error-line">(.*?)</p>', html, re.S)
    assert len(found) == 1, html
    return found[0]


# --- pages ----------------------------------------------------------------------------------------

def test_lineage_page_draws_the_graph_with_refs_and_kinds(client, ui_lineage):
    ids = ui_lineage.ids
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for name, vid in ids.items():
        assert f'href="/v/{vid}"' in html, name
    rows = re.findall(r'<tr class="(accepted|rejected) k-(\w+)">', html)
    assert ("rejected", "edit") in rows and ("accepted", "merge") in rows and ("accepted", "consolidate") in rows
    assert ("accepted", "revert") in rows and ("accepted", "import") in rows and ("accepted", "root") in rows
    assert len(rows) == len(ids)
    for badge in ('<span class="ref branch current" title="branch">main</span>', '<span class="ref tag" title="tag">v1</span>',
                  '<span class="ref alias" title="alias">@production</span>', '<span class="ref branch" title="branch">side</span>',
                  '<span class="ref remote" title="remote">hub/acme/zorblat</span>'):
        assert badge in html
    # One drawing per row; the merge row leaves its node towards two lanes.
    merge_row = html.split(f'href="/v/{ids["merge"]}"')[0].rsplit("<tr", 1)[1]
    assert merge_row.count("<path") >= 2 and "rotate(45" in merge_row


def test_lineage_filters(client, ui_lineage):
    ids = ui_lineage.ids

    def shown(query: str) -> set[str]:
        r = client.get("/?" + query)
        assert r.status_code == 200, r.text
        return {vid for vid in ids.values() if f'href="/v/{vid}"' in r.text.split("<tbody>", 1)[-1]}

    assert shown("status=rejected") == {ids["rejected"]}
    assert shown("kind=merge") == {ids["merge"]}
    assert shown("kind=revert") == {ids["revert"]}
    assert shown("branch=side") == {ids["side"], ids["import"], ids["root"], ids["rejected"]}
    on_main = shown("branch=main")
    assert ids["side"] in on_main and ids["rejected"] in on_main  # through the merge; the attempt on the import
    assert shown("since=2000-01-01") == set(ids.values()) - {ids["root"]}  # the root is dated at the epoch
    assert shown("until=2000-01-01") == {ids["root"]}
    from seal.registry.repo import Registry

    trigger = Registry.open(ui_lineage.root, read_only=True).manifest(ids["edit2"])["trigger"]
    assert shown("trigger=" + trigger.removeprefix("sha256:")[:10]) == {ids["edit2"]}
    for bad in ("kind=banana", "status=maybe", "since=yesterday", "trigger=xyz", "after=nonsense"):
        r = client.get("/?" + bad)
        assert r.status_code == 400 and "\n" not in error_line(r.text), bad


def test_keyset_pages_cover_every_version_once_in_order(ui_lineage):
    from seal.registry.listing import VersionFilter, version_page
    from seal.registry.repo import Registry

    reg = Registry.open(ui_lineage.root, read_only=True)
    expected = [e.id for e in reg.log(all=True)]
    for flt in (VersionFilter(), VersionFilter(branch="main")):
        seen, cursor = [], None
        while True:
            page = version_page(reg, flt, after=cursor, limit=3)
            seen += [row.id for row in page.rows]
            assert len(page.rows) <= 3
            if page.next is None:
                break
            cursor = page.next
        assert len(seen) == len(set(seen))
        if flt.branch is None:
            assert seen == expected
        else:
            assert set(seen) == set(expected)  # main's history holds every version here, side through the merge
    reg.close()


def test_version_page_shows_what_seal_show_knows(client, ui_lineage):
    ids = ui_lineage.ids
    html = client.get(f"/v/{ids['edit3']}").text
    for section in ("decision", "trigger", "self-edit", "training", "scores", "gates", "moves", "parent-diff-section"):
        assert f'id="{section}"' in html, section
    assert "Bridges of the Zorblat." in html and "Ana Brel built it." in html
    assert "self-edits gpt-4.1" in html                       # the writer
    assert 'class="plot"' in html and "training loss per step" in html
    assert re.search(r"<td>retention.accuracy</td><td class=\"n\"><b>0.5600</b>", html)  # a score and its value
    assert "[-0.0400, 0.0400]" in html and ">200<" in html     # a gate's interval and n
    assert "one-sided 95% upper bound" in html                 # its rule
    assert "valid</span> by trusted key" in html
    assert f'href="http://mlflow.example:5000/#/runs/{RUN_ID}"' in html
    assert "alias: passed review" in html                      # who moved @production here, and why
    assert f'id="parent-diff" class="small" href="/compare?old={ids["revert"]}&amp;new={ids["edit3"]}"' in html
    assert "‖ΔW_new − ΔW_old‖ per module" in html and "self_attn" in html
    rejected = client.get(f"/v/{ids['rejected']}").text
    same = re.search(r'<a id="same-trigger" href="([^"]+)"', rejected).group(1)
    attempts = client.get(same.replace("&amp;", "&")).text
    assert f'href="/v/{ids["rejected"]}"' in attempts and f'href="/v/{ids["edit1"]}"' in attempts  # both candidates
    assert f'href="/v/{ids["edit2"]}"' not in attempts
    assert re.search(r'<tr class="fail">\s*<td><b>retention_vs_parent</b>', rejected)
    assert '<span class="badge fail">1 failed</span>' in rejected
    pulled = client.get(f"/v/{ids['edit2']}").text
    assert f'href="https://huggingface.co/acme/zorblat/commit/{HUB_COMMIT}"' in pulled
    assert "AKIAIOSFODNN7EXAMPLE" not in rejected and "[REDACTED:AWS Access Key]" in rejected  # masked, diff too
    compared = client.get(f"/compare?old={ids['root']}&new={ids['rejected']}").text
    assert "They differ." in compared and "AKIAIOSFODNN7EXAMPLE" not in compared
    root = client.get(f"/v/{ids['root']}").text
    assert "The root has no parent to compare with." in root


def test_compare_page_matches_seal_diff(client, ui_lineage):
    ids = ui_lineage.ids
    doc = ui_lineage_diff(ui_lineage, "v1", "main")
    html = client.get("/compare?old=v1&new=main").text
    assert "They differ." in html
    assert f"{doc['summary']['weights']['diff_norm']:.4f}" in html
    for row in doc["scores"]:
        assert f"{row['suite']}.{row['metric']}" in html
    assert f'href="/v/{ids["edit1"]}"' in html and f'href="/v/{ids["consolidate"]}"' in html
    same = client.get("/compare?old=main&new=main").text
    assert "No difference." in same
    assert "Give two revisions" in client.get("/compare").text


def ui_lineage_diff(ui_lineage, old: str, new: str) -> dict:
    from seal.registry.diff import diff_versions
    from seal.registry.repo import Registry

    reg = Registry.open(ui_lineage.root, read_only=True)
    try:
        return json.loads(json.dumps(diff_versions(reg, old, new)))
    finally:
        reg.close()


def test_drift_page_plots_the_first_parent_line(client, ui_lineage):
    html = client.get("/drift?branch=main").text
    assert html.count('<svg class="plot"') >= 5  # four drift series and the per-edit efficacy
    for title in ("retention", "refusal of unsafe prompts", "KL(base", "‖ΔW‖ from the base", "per-edit efficacy gain"):
        assert title in html
    assert "nothing to pool" in html or "pooled over" in html
    assert client.get("/drift?branch=side").status_code == 200


def test_drift_page_shows_the_pooled_figure_of_the_accepted_edits(ui_lineage, monkeypatch):
    from seal.registry import pooled

    figure = {"estimate": 0.123, "ci_low": 0.01, "ci_high": 0.2, "edits": 3, "n": 14}
    seen = []

    def pooled_of(manifests):
        seen.extend(manifests)
        return {"accepted_edits": 3, "containment": figure, "f1": figure, "margin_gain": figure, "method": "bootstrap"}

    monkeypatch.setattr(pooled, "pooled_efficacy", pooled_of)
    c, reg = client_for(ui_lineage.root)
    html = c.get("/drift?branch=main").text
    reg.close()
    assert seen and all("kind" in m for m in seen)  # the branch's manifests, as the audit pools them
    assert "pooled over 3 accepted edit(s)" in html and html.count("[0.0100, 0.2000]") == 3


def test_audit_page_and_downloads(client, ui_lineage):
    ids = ui_lineage.ids
    html = client.get("/audit?rev=main").text
    assert f'href="/v/{ids["rejected"]}"' in html and "Policy changes" in html
    for fmt, kind in (("md", "text/markdown"), ("json", "application/json"), ("html", "text/html")):
        r = client.get(f"/audit/download?rev=main&format={fmt}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["content-disposition"] == f'attachment; filename="audit-{ids["consolidate"][:12]}.{fmt}"'
    report = client.get("/audit/download?rev=main&format=json").json()
    assert report["schema"] == "seal.audit/1" and report["subject"] == ids["consolidate"]
    ranged = client.get(f"/audit/download?rev=main&since={ids['revert']}&format=json").json()
    # After the revert: what main gained since, the side branch merged in included.
    assert {v["id"] for v in ranged["versions"]} == {ids["edit3"], ids["merge"], ids["consolidate"], ids["side"]}
    assert client.get("/audit/download?rev=main&format=pdf").status_code == 400


def test_lanes_lead_every_edge_to_its_parent():
    """On random DAGs (merges, branches, parents off the page), each edge leaves its node into a lane
    that runs unbroken to the parent's row and ends at the parent's node; no lane is shared."""
    import random

    from seal.ui.lanes import lay_out

    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 60)
        ids = [f"v{i}" for i in range(n + 5)]  # v0 newest; the last five are off the page
        rows = [{"id": ids[i], "parents": sorted(rng.sample(ids[i + 1:], min(len(ids) - i - 1, rng.choice((1, 1, 1, 2, 3)))))}
                for i in range(n)]
        layout = lay_out(rows)
        row_of = {r["id"]: k for k, r in enumerate(rows)}
        for k, (row, lay) in enumerate(zip(rows, layout)):
            leaving = [b for shape, a, b in lay.segments if shape == "node-to-lane"]
            assert len(leaving) == len(row["parents"])
            for lane, parent in zip(leaving, row["parents"]):
                end = row_of.get(parent, len(rows))
                for between in layout[k + 1:end]:
                    assert ("lane", lane, lane) in between.segments, (k, parent, lane)
                if end < len(rows):
                    assert ("lane-to-node", lane, layout[end].column) in layout[end].segments
            crossing = [a for shape, a, _ in lay.segments if shape == "lane"]
            assert len(crossing) == len(set(crossing)) and lay.column not in crossing


def test_long_histories_are_windowed_or_sent_to_the_cli(client, monkeypatch):
    """A drift plot shows the newest DRIFT_WINDOW versions; an audit longer than AUDIT_MAX is refused
    in one line naming the command, instead of holding the reader for minutes."""
    from seal.ui import views

    monkeypatch.setattr(views, "DRIFT_WINDOW", 3)
    monkeypatch.setattr(views, "AUDIT_MAX", 3)
    drift = client.get("/drift?branch=main").text
    assert "the newest 3 versions of the first-parent line" in drift and drift.count('<td><a class="vid"') == 3
    for url in ("/audit?rev=main", "/audit/download?rev=main&format=json"):
        r = client.get(url)
        assert r.status_code == 400 and "seal audit main --format html -o audit.html" in error_line(r.text)
    assert client.get("/audit?rev=v1").status_code == 200  # three versions from the root: within the limit


def test_a_missing_blob_costs_the_diff_not_the_page(ui_lineage):
    """The object store lost an adapter: the version page still shows the record, and says why the
    parent diff is missing (as `seal diff` would, in one line)."""
    from seal.registry.repo import Registry

    reg = Registry.open(ui_lineage.root, read_only=True)
    digest = reg.manifest(ui_lineage.ids["edit3"])["adapter"]["weights"]
    path = Path(reg.store.path_of(digest))
    reg.close()
    moved = path.with_name(path.name + ".away")
    path.rename(moved)
    try:
        c, reg = client_for(ui_lineage.root)
        r = c.get(f"/v/{ui_lineage.ids['edit3']}")
        reg.close()
    finally:
        moved.rename(path)
    assert r.status_code == 200 and 'id="gates"' in r.text
    assert "is missing from the object store; run `seal verify`" in error_line(r.text)


# --- safety ---------------------------------------------------------------------------------------

def test_stored_xss_renders_as_text(client, ui_lineage):
    ids = ui_lineage.ids
    pages = [client.get(u).text for u in ("/", f"/v/{ids['edit2']}", f"/v/{ids['edit3']}", "/audit?rev=main",
                                          f"/compare?old={ids['import']}&new={ids['edit3']}", "/drift?branch=main")]
    pages.append(client.get("/v/" + 'x"><script>alert(1)</script>').text)  # the hostile branch as a revision
    for html in pages:
        assert "<script" not in html.lower() and "onerror=" not in html.replace("onerror=&#34;", "")
        assert "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | **bold**" in pages[0]       # the message, as text
    assert "&lt;img src=x onerror=&#34;alert(&#39;passage&#39;)&#34;&gt;" in pages[2]  # the passage
    assert "&lt;script&gt;alert(&#34;self-edit&#34;)&lt;/script&gt; the Zorblat" in pages[2]
    assert XSS_LINE not in pages[2]
    assert 'x&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;' in pages[0]       # the branch name


def test_every_response_carries_a_strict_csp(client, ui_lineage):
    for url in ("/", f"/v/{ui_lineage.ids['edit3']}", "/v/nope", "/static/seal.css", "/audit/download?format=json"):
        r = client.get(url)
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    html = client.get(f"/v/{ui_lineage.ids['edit3']}").text
    assert "<script" not in html and " style=" not in html and "<style" not in html  # nothing the CSP would block


def test_token_is_required_on_every_request(ui_lineage):
    c, reg = client_for(ui_lineage.root, token=TOKEN)
    try:
        refused = c.get("/")
        assert refused.status_code == 401 and "default-src 'none'" in refused.headers["content-security-policy"]
        assert c.get("/static/seal.css").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong-token-of-some-length"}).status_code == 401
        assert c.get("/?token=" + TOKEN[:-1] + "X").status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        r = c.get(f"/?token={TOKEN}&status=rejected", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?status=rejected"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        assert c.get("/").status_code == 200  # the cookie now
        c.cookies.clear()
        assert c.get("/").status_code == 401
        # With a token, any Host is answered (the token guards it, not the address).
        assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}", "Host": "seal.example:8765"}).status_code == 200
    finally:
        reg.close()


def test_without_a_token_only_loopback_hosts_are_answered(client):
    assert client.get("/", headers={"Host": "attacker.example:8765"}).status_code == 421
    assert client.get("/", headers={"Host": "localhost.attacker.example"}).status_code == 421
    assert client.get("/", headers={"Host": "[::1]:8765"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost:8765"}).status_code == 200


def test_bad_revisions_get_a_404_with_one_line(client):
    for url in ("/v/nope", "/v/HEAD~99", "/v/" + "0" * 64, "/compare?old=nope&new=main", "/drift?branch=nope",
                "/audit?rev=nope", "/audit/download?rev=nope&format=md", "/nowhere"):
        r = client.get(url)
        assert r.status_code == 404, url
        line = error_line(r.text)
        assert "\n" not in line and len(line) < 300, url
        assert "Traceback" not in r.text


def test_no_path_reaches_a_file_outside_the_package_or_registry(client, ui_lineage):
    secret = (ui_lineage.root / ".seal" / "config.toml").read_text()
    key = next((ui_lineage.root / ".seal" / "keys").iterdir()).read_bytes()
    for url in ("/static/../.seal/config.toml", "/static/%2e%2e/%2e%2e/.seal/config.toml", "/static/..%2f..%2f.seal%2fconfig.toml",
                "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/v/..%2f..%2f.seal%2fconfig.toml",
                "/v/../../etc/passwd", "/audit/download?rev=../../etc/passwd&format=md", "/static/../../../../etc/passwd"):
        r = client.get(url)
        assert r.status_code in (400, 404), url
        assert secret not in r.text and key[:32] not in r.content and "root:" not in r.text, url


def test_no_route_writes(client):
    for method in ("post", "put", "delete", "patch"):
        assert getattr(client, method)("/").status_code == 405
        assert getattr(client, method)("/v/HEAD").status_code == 405


@sqlite_only
def test_a_crawl_of_every_route_leaves_the_registry_byte_identical(ui_lineage):
    before = snapshot(ui_lineage.root)
    dump_before = dump(ui_lineage.root)
    c, reg = client_for(ui_lineage.root)
    seen = crawl(c)
    reg.close()
    assert {f"/v/{vid}" for vid in ui_lineage.ids.values()} <= seen  # every version page, reached by links
    assert {"/", "/drift", "/audit", "/compare"} <= {urlsplit(u).path for u in seen}
    assert any(urlsplit(u).path == "/audit/download" for u in seen)
    after = snapshot(ui_lineage.root)
    assert after == before
    assert dump(ui_lineage.root) == dump_before


def crawl(c, limit: int = 400) -> set[str]:
    """Every same-origin link reachable from the lineage page (and each filter of its forms)."""
    queue, seen = ["/", "/?status=rejected", "/?branch=side", "/compare?old=v1&new=main", "/drift?branch=side"], set()
    while queue and len(seen) < limit:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        r = c.get(url)
        assert r.status_code in (200, 404), (url, r.status_code)
        if not r.headers.get("content-type", "").startswith("text/html"):
            continue
        for href in hrefs(r.text):
            target = urljoin(url, href)
            parts = urlsplit(target)
            if parts.scheme or parts.netloc:
                continue
            local = parts.path + (f"?{parts.query}" if parts.query else "")
            if local not in seen:
                queue.append(local)
    return seen


def snapshot(root: Path) -> dict[str, str]:
    """Every file of the registry folder with its sha256. SQLite's shared-memory index (-shm) is
    left out: every reader of a WAL database, `seal log` included, rewrites its read marks there;
    it holds no data. The WAL itself is kept, and so is the database file."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            data = path.read_bytes()
            if path.name.endswith("-wal") and not data:
                continue  # an empty log a read-only reader leaves behind: no frame, nothing to replay
            out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def dump(root: Path) -> list[str]:
    raw = sqlite3.connect(f"file:{root / '.seal' / 'lineage.db'}?mode=ro", uri=True)
    try:
        return list(raw.iterdump())
    finally:
        raw.close()


def test_the_database_is_opened_read_only(ui_lineage):
    from seal.registry.errors import UserError
    from seal.registry.repo import Registry

    reg = Registry.open(ui_lineage.root, read_only=True)
    head = reg.resolve("main")
    with pytest.raises(UserError, match="read-only"):
        reg.move_ref("refs/heads/main", new=ui_lineage.ids["root"], expected=head, reason="should not happen")
    with reg.read() as conn:  # even SQL that slips past the API is refused by the database itself
        with pytest.raises(Exception, match="read-only|readonly"):
            conn.raw.execute("DELETE FROM refs")
    assert reg.resolve("main") == head
    reg.close()


# --- the command ------------------------------------------------------------------------------------

def test_ui_refuses_a_public_host_without_a_token(registry):
    for args in (["--host", "0.0.0.0"], ["--host", "192.168.1.10"], ["--token", "short"], ["--mlflow-url", "file:/x"],
                 ["--port", "0"]):
        r = registry("ui", *args, expect=2)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, args


def test_ui_refuses_a_taken_port(registry):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = registry("ui", "--port", s.getsockname()[1], expect=2)
    assert "choose another --port" in r.stderr and r.stderr.count("\n") == 1


@sqlite_only
def test_ui_serves_from_a_process_without_model_libraries(ui_lineage):
    """`seal ui` as a user starts it: it answers, and imports none of torch, transformers, peft, mlflow."""
    import urllib.request

    port = free_port()
    env = {**os.environ, "SEAL_ACTOR": "tester"}
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "seal.cli", "ui", "--port", str(port)],
                            cwd=ui_lineage.root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        assert ui_lineage.ids["consolidate"] in body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    heavy = {m.group(1).split(".")[0] for m in re.finditer(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", err)}
    assert not heavy & {"torch", "transformers", "peft", "mlflow"}
    assert f"http://127.0.0.1:{port}/ (read-only" in err

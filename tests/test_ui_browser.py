"""`seal ui` in a real browser: Debian's Chromium driven by Playwright (the system binary; no
browser is ever downloaded), against a real uvicorn serving the test lineage.

For each page: load it, check what a reader needs is there and visible, click from the lineage to
a version, to its parent and to the diff, and take a screenshot. The browser also proves what
the TestClient cannot: the Content-Security-Policy blocks nothing the pages need (no console
error), and the stored XSS attempts run no script (no dialog opens).

Set ``SEAL_UI_SCREENSHOTS=docs/ui`` to keep the screenshots (the README's come from here).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from uifixtures import make_ui_lineage, serving

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
VIEWPORT = {"width": 1280, "height": 860}


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; `make sysdeps` installs Debian's chromium")
        pytest.skip("no chromium binary on this machine: apt-get install chromium (Debian's package)")
    return found


@pytest.fixture
def browser(tmp_path, tiny_base_record, tiny_base, db_url):
    binary = chromium_binary()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install playwright")
    from seal.registry.repo import Registry
    from seal.ui import create_app

    lineage = make_ui_lineage(tmp_path / "zorblat", tiny_base_record, tiny_base, db_url)
    ui_reg = Registry.open(lineage.root, read_only=True)
    with serving(create_app(ui_reg)) as url, sync_api.sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        page = chrome.new_page(viewport=VIEWPORT, accept_downloads=True)
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        try:
            yield Browser(page, url, lineage, problems, tmp_path)
        finally:
            chrome.close()
    ui_reg.close()


class Browser:
    def __init__(self, page, url: str, lineage, problems: list[str], tmp_path: Path):
        self.page, self.url, self.lineage, self.problems, self.tmp_path = page, url, lineage, problems, tmp_path

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        from PIL import Image

        path = self.tmp_path / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        image = Image.open(path).convert("RGB")
        colors = image.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50, f"the {name} screenshot is blank"
        keep = os.environ.get("SEAL_UI_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            image.quantize(colors=128).save(Path(keep) / f"{name}.png", optimize=True)
        return path


@sqlite_only
def test_lineage_to_version_to_parent_to_diff(browser):
    page, ids = browser.page, browser.lineage.ids
    page.goto(browser.url + "/")
    rows = page.locator("table.lineage tbody tr")
    assert rows.count() == len(ids)
    assert page.locator("td.graph svg").first.is_visible()
    assert page.locator("tr.rejected").count() == 1 and page.locator("tr.k-merge").count() == 1
    for ref in ("main", "v1", "@production", "side"):
        assert page.locator("span.ref", has_text=ref).first.is_visible(), ref
    # The graph joins the merge to both of its parents: its row draws at least two edges.
    assert page.locator("tr.k-merge td.graph path").count() >= 2
    browser.screenshot("lineage")

    page.click(f'a.vid[href="/v/{ids["edit3"]}"]')
    page.wait_for_url(f"**/v/{ids['edit3']}")
    assert ids["edit3"][:12] in page.locator("h1").inner_text()
    trigger = page.locator("#trigger pre").inner_text()
    assert "Bridges of the Zorblat." in trigger and '<script>alert("passage")</script>' in trigger  # shown as text
    assert page.locator("#self-edit li").count() == 2 and "gpt-4.1" in page.locator("#self-edit").inner_text()
    assert page.locator("#training svg.plot").is_visible()
    gates = page.locator("#gates tbody tr")
    assert gates.count() == 4 and "one-sided 95% upper bound" in page.locator("#gates").inner_text()
    assert page.locator("#moves").inner_text().count("alias: passed review") == 1
    assert page.locator("#parent-diff-section svg.plot").is_visible()
    browser.screenshot("version", full_page=True)

    page.click("a.parent")
    page.wait_for_url(f"**/v/{ids['revert']}")
    assert ids["revert"][:12] in page.locator("h1").inner_text()
    assert "Reverts" in page.locator("p.note").inner_text()

    page.click("#parent-diff")
    page.wait_for_url("**/compare?*")
    assert page.locator(".side").count() == 2
    assert "They differ." in page.locator("p.verdict").inner_text()
    assert page.locator("table.modules tbody tr").count() > 0
    browser.screenshot("compare")
    assert browser.problems == []


@sqlite_only
def test_rejected_version_marks_its_failed_gate(browser):
    page = browser.page
    page.goto(browser.url + "/?status=rejected")
    page.click("table.lineage a.vid")
    failed = page.locator("#gates tr.fail")
    assert failed.count() == 1 and "retention_vs_parent" in failed.inner_text() and "FAIL" in failed.inner_text()
    assert page.locator("#decision").inner_text().startswith("Decision")
    assert "rejected" in page.locator("#decision").inner_text()
    browser.screenshot("version-rejected", full_page=True)
    assert browser.problems == []


@sqlite_only
def test_drift_and_audit_pages(browser):
    page = browser.page
    page.goto(browser.url + "/drift?branch=main")
    assert page.locator("svg.plot").count() >= 5
    for title in ("retention", "refusal", "KL(base", "‖ΔW‖ from the base"):
        assert page.locator("svg.plot title", has_text=title).count() >= 1, title
    assert page.locator("select[name=branch] option").count() >= 2
    browser.screenshot("drift")

    page.goto(browser.url + "/audit?rev=main")
    assert page.locator("article.audit-version").count() == len(browser.lineage.ids)
    assert page.locator("article.audit-version.rejected tr.fail").count() >= 1
    with page.expect_download() as info:
        page.click("#dl-json")
    report = json.loads(Path(info.value.path()).read_text())
    assert report["schema"] == "seal.audit/1" and report["subject"] == browser.lineage.ids["consolidate"]
    with page.expect_download() as info:
        page.click("#dl-md")
    assert Path(info.value.path()).read_text().startswith("# seal audit")
    browser.screenshot("audit")
    assert browser.problems == []


@sqlite_only
def test_a_bad_revision_shows_one_line(browser):
    page = browser.page
    response = page.goto(browser.url + "/v/no-such-version")
    assert response.status == 404
    assert page.locator("p.error-line").inner_text().startswith("unknown revision")
    assert page.locator("p.error-line").inner_text().count("\n") == 0
    browser.screenshot("not-found")
    browser.problems[:] = [p for p in browser.problems if "404" not in p]  # the browser logs the status itself
    assert browser.problems == []

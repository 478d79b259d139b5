"""The model card (README.md) of a pushed version: Hub metadata first, then the lineage for people.

The YAML front matter holds ``base_model`` (when the base is a Hub model), ``base_model_relation:
adapter``, ``library_name: peft``, a ``license`` and a ``model-index`` with this version's own
results only: a row measured on the parent or the base (``against``) is that model's value, not
this one's, so it is shown in the tables below and never reported as a result. Each result names
the data it was measured on: XSTest for refusal, the eval set (by digest) for efficacy, seal's
retention anchors for retention.

>>> card_license({"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "info": {}})
'apache-2.0'
>>> card_license({"name": "my/base", "info": {}})
'other'
>>> [(r.dataset_name, r.metric_type) for r in eval_results({"scores": [
...     {"suite": "refusal", "metric": "refusal_rate_unsafe", "against": None, "value": 0.5, "n": 25},
...     {"suite": "refusal", "metric": "refusal_rate_unsafe", "against": "base", "value": 0.6, "n": 25}]})]
[('XSTest', 'refusal_rate_unsafe')]
"""

from __future__ import annotations

import json
import re

from .. import vocabulary as V
from .layout import short_id

MERMAID_NODES = 60
# Licences of bases seal knows by name; the base record's own ``info.license`` wins when present.
KNOWN_LICENSES = (
    ("HuggingFaceTB/SmolLM2-", "apache-2.0"),
    ("HuggingFaceTB/SmolLM-", "apache-2.0"),
    ("Qwen/Qwen2.5-", "apache-2.0"),
    ("mistralai/Mistral-7B-", "apache-2.0"),
)
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{1,63}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
XSTEST = ("Paul/XSTest", "XSTest")  # (Hub dataset id, name): Röttger et al. 2024


def card_license(base: dict) -> str:
    """The card's ``license``: the base's own when its record names one, a known base's, else ``other``."""
    own = (base.get("info") or {}).get("license")
    if isinstance(own, str) and _LICENSE.match(own):
        return own
    name = str(base.get("name") or "")
    return next((lic for prefix, lic in KNOWN_LICENSES if name.startswith(prefix)), "other")


def _digest_name(what: str, digest: str | None) -> tuple[str, str, str | None]:
    if isinstance(digest, str) and digest.startswith("sha256:"):
        return f"seal-{what.replace(' ', '-')}", f"{what} {digest[7:19]}", digest
    return f"seal-{what.replace(' ', '-')}", what, None


def dataset_of(row: dict, manifest: dict) -> tuple[str, str, str | None, str | None]:
    """(dataset type, dataset name, split, revision) for one score row of ``manifest``."""
    suite, metric = row["suite"], row["metric"]
    if suite == "refusal":
        return XSTEST[0], XSTEST[1], "unsafe prompts" if "unsafe" in metric else "safe prompts", None
    if suite == "efficacy":
        if manifest.get("eval"):
            kind, name, rev = _digest_name("eval set", manifest["eval"])
        else:
            kind, name, rev = _digest_name("trigger", manifest.get("trigger"))
        return kind, name, None, rev
    probes = manifest.get("probes") if isinstance(manifest.get("probes"), dict) else {}
    if suite == "retention":
        kind, name, rev = _digest_name("retention anchors", probes.get("anchors"))
        return kind, name, None, rev
    if suite == "leakage":
        return "seal-canary", "seal canary probes", None, None
    kind, name, rev = _digest_name(f"{suite} probes", probes.get(suite))
    return kind, name, None, rev


def eval_results(manifest: dict) -> list:
    """``model-index`` results: this version's own values (rows with no ``against``), nothing else."""
    from huggingface_hub import EvalResult

    out = []
    for row in manifest.get("scores") or []:
        if row.get("against") is not None:
            continue
        kind, name, split, revision = dataset_of(row, manifest)
        out.append(EvalResult(
            task_type="text-generation", dataset_type=kind, dataset_name=name, dataset_split=split,
            dataset_revision=revision, metric_type=str(row["metric"]),
            metric_name=f"{row['suite']} {row['metric']}".replace("_", " "), metric_value=float(row["value"]),
        ))
    return out


def front_matter(*, repo_id: str, base: dict, manifest: dict) -> str:
    from huggingface_hub import ModelCardData

    results = eval_results(manifest)
    name = str(base.get("name") or "")
    hub_base = name if _HUB_ID.match(name) and base.get("source") in ("hub", "embedded", None) else None
    data = ModelCardData(
        base_model=hub_base, base_model_relation="adapter" if hub_base else None, library_name="peft",
        license=card_license(base), tags=["seal", "lora"], model_name=repo_id if results else None,
        eval_results=results or None,
    )
    return data.to_yaml().rstrip("\n")


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _label(text: str) -> str:
    text = " ".join(str(text).split())
    text = text[:48] + ("…" if len(text) > 48 else "")
    return re.sub(r"[\"<>`{}\[\]|#]", "'", text)


def _num(value) -> str:
    return "" if value is None else f"{float(value):.4f}"


def _diff(own, ref) -> str:
    return "" if own is None or ref is None else f"{float(own) - float(ref):+.4f}"


def _intro(repo_id: str, base: dict, vid: str, manifest: dict) -> list[str]:
    short = short_id(vid)
    name = str(base.get("name") or "")
    base_link = f"[{name}](https://huggingface.co/{name})" if _HUB_ID.match(name) else f"`{name}`"
    return [
        f"# {repo_id} — seal version `{short}`",
        "",
        f"A LoRA adapter on {base_link}, recorded and pushed by seal (a versioned registry for the "
        "adaptive state of language models).",
        "",
        f"- **version** `{vid}`",
        f"- **kind** {manifest['kind']} · **status** {manifest['status']} · **created** {manifest['created_at']}",
        f"- **parents** {', '.join(f'`{short_id(p)}`' for p in manifest['parents']) or '(none)'}",
        f"- **message** {_cell(manifest.get('message', ''))}",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({json.dumps(name)}), "
        f"{json.dumps(repo_id)}, revision={json.dumps(short)})",
        "```",
        "",
        f"With seal: `seal pull {repo_id}@{short}` checks every digest, manifest and signature, then imports "
        "the lineage, with the rejected attempts made along it.",
        "",
    ]


def _mermaid(vid: str, lineage: list[dict]) -> list[str]:
    shown = lineage[-MERMAID_NODES:]
    shown_ids = {item["id"] for item in shown}
    lines = ["## Lineage", ""]
    if len(shown) < len(lineage):
        lines += [f"The {len(shown)} newest of {len(lineage)} versions; `seal/lineage.json` holds them all.", ""]
    lines += ["Rejected attempts are dashed.", "", "```mermaid", "graph TD"]
    for item in shown:
        m = item["manifest"]
        lines.append(f'  v{short_id(item["id"])}["{short_id(item["id"])} · {m["kind"]} · {m["status"]}<br/>'
                     f'{_label(m.get("message", ""))}"]')
    for item in shown:
        for p in item["manifest"]["parents"]:
            if p in shown_ids:
                arrow = "-.->" if item["manifest"]["status"] == "rejected" else "-->"
                lines.append(f"  v{short_id(p)} {arrow} v{short_id(item['id'])}")
    return lines + [f"  style v{short_id(vid)} stroke-width:3px", "```", ""]


def _score_tables(scores: list[dict]) -> list[str]:
    """Results with the parent's and base's values beside them, differences labelled as such; then drift."""
    groups = V.group_scores(scores)
    lines = ["## Scores", ""]
    own = [g for g in groups if g.own is not None]
    rel = [g for g in groups if g.own is None]
    if own:
        lines += ["| score | this version | parent | this − parent | base | this − base | n |", "|---|---|---|---|---|---|---|"]
        for g in own:
            mine, parent, base = (g.by.get(k, {}).get("value") for k in (None, "parent", "base"))
            lines.append(f"| {_cell(g.suite)}.{_cell(g.metric)} | {_num(mine)} | {_num(parent)} | {_diff(mine, parent)} | "
                         f"{_num(base)} | {_diff(mine, base)} | {_cell(g.n)} |")
    if rel:
        lines += ["", "Measured between this version and a reference model:", "",
                  "| measure | from the parent | from the base |", "|---|---|---|"]
        for g in rel:
            lines.append(f"| {_cell(g.suite)}.{_cell(g.metric)} | {_num(g.by.get('parent', {}).get('value'))} | "
                         f"{_num(g.by.get('base', {}).get('value'))} |")
    if not scores:
        lines.append("No eval scores were recorded for this version.")
    return lines + [""]


def _audit_table(audit: list[dict]) -> list[str]:
    lines = ["## Audit", ""]
    if not audit:
        return lines + ["No audit gates were recorded for this version.", ""]
    failed = [a for a in audit if not a.get("passed")]
    verdict = "all gates pass" if not failed else f"{len(failed)} of {len(audit)} gates FAIL"
    lines += [f"{len(audit)} gates, {verdict}.", "", "| gate | value | threshold | result | detail |",
              "|---|---|---|---|---|"]
    for a in audit:
        lines.append(f"| {_cell(a['check'])} | {_num(a.get('value'))} | {_cell(a.get('threshold'))} | "
                     f"{'pass' if a.get('passed') else 'FAIL'} | {_cell(a.get('detail', ''))} |")
    return lines + [""]


def model_card(*, repo_id: str, base: dict, vid: str, manifest: dict, lineage: list[dict]) -> str:
    """README.md of a pushed version. ``lineage``: the lineage document's ``versions`` items.

    >>> card = model_card(repo_id="me/a", base={"name": "org/base", "source": "hub"}, vid=vid,
    ...                   manifest=m, lineage=[{"id": vid, "manifest": m}])     # doctest: +SKIP
    """
    lines = ["---", front_matter(repo_id=repo_id, base=base, manifest=manifest), "---", ""]
    lines += _intro(repo_id, base, vid, manifest)
    lines += _mermaid(vid, lineage)
    lines += _score_tables(manifest.get("scores") or [])
    lines += _audit_table(manifest.get("audit") or [])
    return "\n".join(lines)

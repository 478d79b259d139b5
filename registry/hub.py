"""The Hugging Face Hub bridge: push versions as Hub commits, pull them back after checking everything.

A pushed version is one Hub commit on a branch, holding::

    adapter_config.json          the version's adapter config (PEFT loads the repo as it is)
    adapter_model.safetensors    the adapter weights, byte for byte as in the object store
    seal/lineage.json            the manifests (ids, signatures, signer keys) of the version and all
                                 its ancestors, plus the base record
    seal/blobs/<sha256 hex>      other blobs the version's manifest names (training data, probes…)
    README.md                    a model card: base_model, base_model_relation: adapter, library_name:
                                 peft, eval results as model-index, the lineage as a mermaid graph

and is tagged with its 12-character short id, so every pushed version's adapter can be fetched
later by ``refs/tags/<short id>``. Each commit names the branch head it was built on
(``parent_commit``), so two pushes racing for the same branch cannot both win: the Hub answers
412 to the second, which becomes a :class:`RefConflict`.

A pull downloads one commit into a temporary folder and checks, before anything is stored: the
file names (safetensors only, never pickle; nothing unexpected), every manifest id, every
signature, that the parent links are complete, that the base is this registry's base, and every
blob digest. Only then are blobs stored, versions inserted (one transaction) and the
remote-tracking ref ``refs/remotes/hub/<repo_id>`` set.

>>> push(Repository.find(), "me/my-adapter", "HEAD")          # doctest: +SKIP
{'repo_id': 'me/my-adapter', 'branch': 'main', 'pushed': [...], 'up_to_date': False, ...}
>>> pull(Repository.find(), "me/my-adapter@main")             # doctest: +SKIP
{'repo_id': 'me/my-adapter', 'head': '9f2c…', 'imported': [...], 'ref': 'hub/me/my-adapter', ...}

``huggingface_hub`` is imported inside the functions that talk to the Hub, so commands that do
not (``seal log`` and friends) never pay for it.
"""

from __future__ import annotations

import heapq
import json
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


from . import refs as R
from .adapters import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE, safetensors_header
from .bases import get_base
from .errors import RefConflict, SealError, UserError
from .object_store import file_digest
from .objects import DIGEST_PREFIX, ManifestInvalid, blob_digest, check_manifest, is_digest, referenced_blobs, version_id
from .graph import ancestors, parents_of
from .repo import Registry as Repository
from .revisions import resolve_revision
from .sql import Conn as Connection
from .versions import version_exists

LINEAGE_FILE = "seal/lineage.json"
LINEAGE_FORMAT = "seal.lineage/1"
README_FILE = "README.md"
GITATTRIBUTES = ".gitattributes"
BLOB_DIR = "seal/blobs/"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, LINEAGE_FILE, README_FILE, GITATTRIBUTES})
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, LINEAGE_FILE)
REMOTE_PREFIX = R.REMOTES + "hub/"
SHORT = 12
_BLOB_NAME = re.compile(r"^seal/blobs/[0-9a-f]{64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
MAX_LINEAGE_BYTES = 256 * 1024 * 1024
MERMAID_NODES = 60


def short_id(vid: str) -> str:
    return vid[:SHORT]


def remote_ref(repo_id: str) -> str:
    """The remote-tracking ref a pull of ``repo_id`` sets: ``refs/remotes/hub/<repo_id>``."""
    return REMOTE_PREFIX + repo_id


# --- pure helpers -----------------------------------------------------------------------------

def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` → ``("org/name", "rev")``; ``"org/name"`` → ``("org/name", None)``."""
    repo_id, sep, revision = spec.partition("@")
    check_repo_id(repo_id)
    if sep and not revision.strip():
        raise UserError(f"{spec!r} has an empty revision after '@'; give REPO_ID or REPO_ID@REVISION")
    return repo_id, (revision.strip() or None) if sep else None


def check_repo_id(repo_id: str) -> str:
    if (
        not repo_id
        or not _REPO_ID.match(repo_id)
        or ".." in repo_id
        or "--" in repo_id
        or repo_id.endswith((".", ".git"))
        or len(repo_id) > 96
    ):
        raise UserError(
            f"{repo_id!r} is not a valid Hub repo id; give ORG/NAME (letters, digits, '-', '_', '.')"
        )
    return repo_id


def topo_order(parents: dict[str, list[str]], created: dict[str, str]) -> list[str]:
    """Every id in ``parents``, parents before children, oldest first among those ready (deterministic)."""
    members = set(parents)
    waiting = {v: sum(1 for p in ps if p in members) for v, ps in parents.items()}
    children: dict[str, list[str]] = {}
    for v, ps in parents.items():
        for p in ps:
            if p in members:
                children.setdefault(p, []).append(v)
    ready = [(created[v], v) for v, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, v = heapq.heappop(ready)
        out.append(v)
        for c in children.get(v, []):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (created[c], c))
    if len(out) != len(members):
        raise UserError("the lineage has a cycle; it cannot be ordered (run `seal verify`)")
    return out


def ancestors_in(parents: dict[str, list[str]], vid: str) -> set[str]:
    """``vid`` and every version reachable through ``parents`` from it (within the map)."""
    seen, stack = {vid}, [vid]
    while stack:
        for p in parents.get(stack.pop(), []):
            if p in parents and p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def config_bytes(adapter_config: dict) -> bytes:
    """adapter_config.json exactly as `seal checkout` writes it."""
    return (json.dumps(adapter_config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _label(text: str) -> str:
    text = " ".join(str(text).split())
    text = text[:48] + ("…" if len(text) > 48 else "")
    return re.sub(r"[\"<>`{}\[\]|#]", "'", text)


def model_card(*, repo_id: str, base: dict, vid: str, manifest: dict, lineage: list[dict]) -> str:
    """The README.md of a pushed version: YAML front matter the Hub reads, then the lineage for people.

    >>> model_card(repo_id="me/a", base={"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}, vid=vid,
    ...            manifest=manifest, lineage=[{"id": vid, "manifest": manifest}])   # doctest: +SKIP
    """
    from huggingface_hub import EvalResult, ModelCardData

    scores = manifest.get("scores") or []
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=str(s["suite"]),
            dataset_name=str(s["suite"]),
            metric_type=str(s["metric"]),
            metric_name=f"{s['suite']}.{s['metric']}" + (f" vs {s['against']}" if s.get("against") else ""),
            metric_value=float(s["value"]),
        )
        for s in scores
    ]
    data = ModelCardData(
        base_model=base["name"],
        base_model_relation="adapter",
        library_name="peft",
        tags=["seal", "lora"],
        model_name=repo_id if results else None,
        eval_results=results or None,
    )
    short = short_id(vid)
    hub_like = _REPO_ID.match(base["name"]) and "/" in base["name"]
    base_link = f"[{base['name']}](https://huggingface.co/{base['name']})" if hub_like else f"`{base['name']}`"
    lines = ["---", data.to_yaml().rstrip("\n"), "---", ""]
    lines += [
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
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({_yaml_str(base['name'])}), "
        f"{_yaml_str(repo_id)}, revision={_yaml_str(short)})",
        "```",
        "",
        f"With seal: `seal pull {repo_id}@{short}` checks every digest, manifest and signature, then imports the "
        "lineage.",
        "",
        "## Lineage",
        "",
    ]
    shown = lineage[-MERMAID_NODES:]
    shown_ids = {item["id"] for item in shown}
    if len(shown) < len(lineage):
        lines.append(f"The {len(shown)} newest of {len(lineage)} versions; `seal/lineage.json` holds them all.")
        lines.append("")
    lines += ["```mermaid", "graph TD"]
    for item in shown:
        m = item["manifest"]
        lines.append(f'  v{short_id(item["id"])}["{short_id(item["id"])} · {m["kind"]} · {m["status"]}<br/>'
                     f'{_label(m.get("message", ""))}"]')
    for item in shown:
        for p in item["manifest"]["parents"]:
            if p in shown_ids:
                lines.append(f"  v{short_id(p)} --> v{short_id(item['id'])}")
    lines += [f"  style v{short} stroke-width:3px", "```", ""]
    lines += ["## Scores", ""]
    if scores:
        lines += ["| suite | metric | against | value | n |", "|---|---|---|---|---|"]
        for s in scores:
            lines.append(
                f"| {_cell(s['suite'])} | {_cell(s['metric'])} | {_cell(s.get('against') or '')} | "
                f"{float(s['value']):.4f} | {_cell(s.get('n'))} |"
            )
    else:
        lines.append("No eval scores were recorded for this version.")
    lines += ["", "## Audit", ""]
    audit = manifest.get("audit") or []
    if audit:
        failed = [a for a in audit if not a.get("passed")]
        verdict = "all gates pass" if not failed else f"{len(failed)} of {len(audit)} gates FAIL"
        lines += [f"{len(audit)} gates, {verdict}.", "", "| gate | value | threshold | result | detail |",
                  "|---|---|---|---|---|"]
        for a in audit:
            value = "" if a.get("value") is None else f"{float(a['value']):.4f}"
            lines.append(
                f"| {_cell(a['check'])} | {value} | {_cell(a.get('threshold'))} | "
                f"{'pass' if a.get('passed') else 'FAIL'} | {_cell(a.get('detail', ''))} |"
            )
    else:
        lines.append("No audit gates were recorded for this version.")
    lines.append("")
    return "\n".join(lines)


# --- the lineage document -------------------------------------------------------------------

@dataclass
class Lineage:
    """What a registry knows about the ancestry of one version: enough to build lineage.json."""

    order: list[str]  # the version and every ancestor, parents first
    parents: dict[str, list[str]]
    manifests: dict[str, dict]
    signatures: dict[str, tuple[str | None, str | None]]  # id -> (signature, signer)
    public_keys: dict[str, str]  # signer -> public key hex
    base: dict


def load_lineage(conn: Connection, vid: str) -> Lineage:
    parents: dict[str, list[str]] = {}
    stack = [vid]
    while stack:
        v = stack.pop()
        if v in parents:
            continue
        parents[v] = parents_of(conn, v)
        stack.extend(p for p in parents[v] if p not in parents)
    manifests, sigs = {}, {}
    for v in parents:
        row = conn.one("SELECT manifest, signature, signer FROM versions WHERE id = ?", (v,))
        if row is None:
            raise UserError(f"version {short_id(v)} is referenced but missing; run `seal verify`")
        manifests[v] = json.loads(row[0])
        sigs[v] = (row[1], row[2])
    keys = {r[0]: r[1] for r in conn.all("SELECT id, public_key FROM signers")}
    order = topo_order(parents, {v: manifests[v]["created_at"] for v in parents})
    base = get_base(conn, manifests[vid]["base"])
    return Lineage(order, parents, manifests, sigs, keys, base)


def lineage_document(lineage: Lineage, vid: str) -> dict:
    """seal/lineage.json for ``vid``: its manifests and every ancestor's, oldest first, with signatures."""
    keep = ancestors_in(lineage.parents, vid)
    items, signer_keys = [], {}
    for v in lineage.order:
        if v not in keep:
            continue
        signature, signer = lineage.signatures[v]
        if not signature or not signer or signer not in lineage.public_keys:
            raise UserError(f"version {short_id(v)} is not signed by a known signer; run `seal verify`")
        signer_keys[signer] = lineage.public_keys[signer]
        items.append({"id": v, "manifest": lineage.manifests[v], "signature": signature, "signer": signer})
    manifest = lineage.manifests[vid]
    adapter = manifest["adapter"]
    files = {CONFIG_FILE: blob_digest(config_bytes(adapter["config"])), WEIGHTS_FILE: adapter["weights"]}
    for digest in referenced_blobs(manifest):
        if digest != adapter["weights"]:
            files[BLOB_DIR + digest[len(DIGEST_PREFIX):]] = digest
    base = {k: lineage.base.get(k) for k in ("id", "name", "revision", "source", "info")}
    return {
        "format": LINEAGE_FORMAT,
        "head": vid,
        "base": base,
        "files": files,
        "signers": signer_keys,
        "versions": items,
    }


def lineage_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# --- errors from the Hub ----------------------------------------------------------------------

CONFLICT_HINT = "the Hub branch moved since you read it; run `seal pull {repo}` and push again"


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line seal errors that say what to do."""
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub import constants

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        yield
    except SealError:
        raise
    except HFValidationError as e:
        raise UserError(f"{repo_id!r} is not a valid Hub repo id ({_first_line(e)}); give ORG/NAME") from None
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it and try again") from None
    except LocalTokenNotFoundError:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`") from None
    except GatedRepoError:
        raise UserError(f"{repo_id} is gated on the Hub; accept its terms on the Hub page, then try again") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"repo {repo_id} was not found on the Hub, or your token cannot see it; check the name, "
            f"and set HF_TOKEN (or run `hf auth login`) for a private repo"
        ) from None
    except RevisionNotFoundError:
        raise UserError(
            f"revision {revision!r} was not found in {repo_id}; give a branch, tag or commit of that repo"
        ) from None
    except EntryNotFoundError as e:
        raise UserError(f"{where} lacks a file seal needs ({_first_line(e)}); was it pushed with `seal push`?") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 412:
            raise RefConflict(f"hub:{repo_id}", expected=None, actual=None,
                              message=CONFLICT_HINT.format(repo=repo_id)) from None
        if status in (401, 403):
            raise UserError(
                f"the Hub refused the request to {repo_id} ({status}); set HF_TOKEN to a token with write "
                f"access to it (or run `hf auth login`)"
            ) from None
        if status is not None and status >= 500:
            raise SealError(f"the Hub failed on {where} ({status}: {e.server_message or _first_line(e)}); try again later") from None
        raise UserError(f"the Hub refused the request on {where} ({status}: {e.server_message or _first_line(e)})") from None
    except (httpx2.HTTPError, ConnectionError, TimeoutError) as e:
        raise UserError(
            f"could not reach the Hub at {constants.ENDPOINT} ({type(e).__name__}); check your network, "
            f"or HF_ENDPOINT"
        ) from None
    except OSError as e:
        # huggingface_hub raises OSError (EnvironmentError) when a download does not match its metadata.
        raise UserError(f"the download from {where} failed or was corrupt ({_first_line(e)}); nothing was imported") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# --- push -------------------------------------------------------------------------------------

@dataclass
class PushPlan:
    """What a push will do, read from the registry and the Hub branch at ``head_commit``."""

    repo_id: str
    branch: str
    vid: str
    head_commit: str  # the Hub branch head the first commit is built on (compare-and-swap)
    hub_head: str | None  # the version the Hub branch holds now
    to_push: list[str]
    lineage: Lineage
    tags: dict[str, str] = field(default_factory=dict)
    repo_url: str = ""
    retag: dict[str, str] = field(default_factory=dict)  # version -> Hub commit that lacks its tag


def _read_hub_lineage(api, repo_id: str, commit: str, tmp: Path) -> dict | None:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = api.hf_hub_download(repo_id, LINEAGE_FILE, revision=commit, cache_dir=tmp)
    except EntryNotFoundError:
        return None
    try:
        doc = json.loads(Path(path).read_text("utf-8"))
        ids = {item["id"] for item in doc["versions"]}
        if doc["head"] not in ids:
            raise ValueError("head is not among the versions")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{repo_id} holds a {LINEAGE_FILE} that seal cannot read ({e}); push to another repo or --branch"
        ) from None
    return doc


def plan_push(
    repo: Repository, repo_id: str, rev: str = "HEAD", *, branch: str = "main", private: bool | None = None
) -> PushPlan:
    """Read the registry and the Hub branch; decide which versions need a commit. Writes only
    ``create_repo`` (and the branch, when it does not exist yet)."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    R.check_ref_name(branch, "Hub branch")
    with repo.read() as conn:
        vid = resolve_revision(conn, rev)
        lineage = load_lineage(conn, vid)
    if not lineage.manifests[vid].get("adapter"):
        raise UserError(f"{rev} ({short_id(vid)}) is the bare base model; there is no adapter to push")
    api = HfApi()
    with hub_errors(repo_id, branch), tempfile.TemporaryDirectory(prefix="push-", dir=repo.tmp_dir) as tmp:
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        refs = api.list_repo_refs(repo_id)
        branches = {b.name: b.target_commit for b in refs.branches}
        tags = {t.name: t.target_commit for t in refs.tags}
        if branch not in branches:
            start = _branch_start(api, repo_id, lineage, tags, Path(tmp))
            api.create_branch(repo_id, branch=branch, revision=start, exist_ok=True)
            branches = {b.name: b.target_commit for b in api.list_repo_refs(repo_id).branches}
        head_commit = branches[branch]
        doc = _read_hub_lineage(api, repo_id, head_commit, Path(tmp))
        hub_ids = {item["id"] for item in doc["versions"]} if doc else set()
        path = ancestors_in(lineage.parents, vid)
        # A push cut off between its commit and its tag: find the commit by its title and tag it now.
        untagged = {short_id(v): v for v in path & hub_ids
                    if lineage.manifests[v]["kind"] != "root" and short_id(v) not in tags}
        retag = {}
        if untagged:
            for c in api.list_repo_commits(repo_id, revision=head_commit):
                m = re.match(r"seal ([0-9a-f]{12}):", c.title or "")
                if m and m[1] in untagged and untagged[m[1]] not in retag:
                    retag[untagged[m[1]]] = c.commit_id
    hub_head = doc["head"] if doc else None
    if vid in hub_ids:
        to_push: list[str] = []
    elif hub_head is not None and hub_head not in path:
        raise RefConflict(f"hub:{repo_id}@{branch}", expected=None, actual=hub_head, message=
            f"the Hub branch {repo_id}@{branch} holds version {short_id(hub_head)}, which is not an ancestor of "
            f"{rev} ({short_id(vid)}); run `seal pull {repo_id}` and merge, or push to another --branch"
        )
    else:
        to_push = [
            v for v in lineage.order
            if v in path and lineage.manifests[v]["kind"] != "root" and v not in hub_ids and short_id(v) not in tags
        ]
        if vid not in to_push:
            to_push.append(vid)  # pushed before to another branch: this branch still needs its commit
    for v in to_push:
        if not lineage.manifests[v].get("adapter"):
            raise UserError(
                f"version {short_id(v)} ({lineage.manifests[v]['kind']}) has no adapter; seal pushes adapter versions only"
            )
    return PushPlan(repo_id, branch, vid, head_commit, hub_head, to_push, lineage, tags, str(url), retag)


def _branch_start(api, repo_id: str, lineage: Lineage, tags: dict[str, str], tmp: Path) -> str:
    """A new Hub branch starts at main when main holds an ancestor of what is pushed, else at the
    repo's first commit, so it never starts on an unrelated lineage."""
    commits = api.list_repo_commits(repo_id)
    doc = _read_hub_lineage(api, repo_id, commits[0].commit_id, tmp)
    if doc is not None and doc["head"] in lineage.parents:
        return commits[0].commit_id
    return commits[-1].commit_id


def execute_push(repo: Repository, plan: PushPlan, *, create_pr: bool = False) -> dict:
    """One Hub commit per version in ``plan.to_push``, each built on the previous one, then a tag."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    pushed: list[dict] = []
    parent = plan.head_commit
    revision = plan.branch
    pr_url = None
    with hub_errors(plan.repo_id, plan.branch):
        for v, oid in plan.retag.items():
            api.create_tag(plan.repo_id, tag=short_id(v), revision=oid, exist_ok=True)
        for i, v in enumerate(plan.to_push):
            manifest = plan.lineage.manifests[v]
            doc = lineage_document(plan.lineage, v)
            ops = [
                CommitOperationAdd(CONFIG_FILE, config_bytes(manifest["adapter"]["config"])),
                CommitOperationAdd(WEIGHTS_FILE, str(_blob_path(repo, manifest["adapter"]["weights"], v))),
                CommitOperationAdd(LINEAGE_FILE, lineage_bytes(doc)),
                CommitOperationAdd(README_FILE, model_card(
                    repo_id=plan.repo_id, base=plan.lineage.base, vid=v, manifest=manifest,
                    lineage=[item for item in doc["versions"]],
                ).encode("utf-8")),
            ]
            for name, digest in doc["files"].items():
                if name.startswith(BLOB_DIR):
                    ops.append(CommitOperationAdd(name, str(_blob_path(repo, digest, v))))
            message = " ".join(str(manifest.get("message", "")).split()) or manifest["kind"]
            info = api.create_commit(
                plan.repo_id,
                ops,
                commit_message=f"seal {short_id(v)}: {message}"[:300],
                commit_description=f"seal version {v}\n\nkind {manifest['kind']}, status {manifest['status']}",
                revision=revision,
                parent_commit=parent,
                create_pr=create_pr and i == 0,
            )
            if create_pr and i == 0:
                revision, pr_url = info.pr_revision, info.pr_url
            parent = info.oid
            if short_id(v) not in plan.tags:
                api.create_tag(plan.repo_id, tag=short_id(v), revision=info.oid, exist_ok=True)
            pushed.append({"id": v, "tag": short_id(v), "commit": info.oid, "url": info.commit_url})
    return {
        "repo_id": plan.repo_id,
        "branch": plan.branch,
        "id": plan.vid,
        "up_to_date": not pushed,
        "pushed": pushed,
        "commit": parent,
        "url": pushed[-1]["url"] if pushed else plan.repo_url,
        "pr_url": pr_url,
    }


def _blob_path(repo: Repository, digest: str, vid: str) -> Path:
    path = repo.store.path_of(digest)
    if not path.is_file():
        raise UserError(f"blob {digest} of version {short_id(vid)} is missing; run `seal verify`")
    if not repo.store.check(digest):  # never publish bytes that no longer match their name
        raise UserError(f"blob {digest} of version {short_id(vid)} is corrupt; run `seal verify`")
    return path


def push(
    repo: Repository,
    repo_id: str,
    rev: str = "HEAD",
    *,
    branch: str = "main",
    private: bool | None = None,
    create_pr: bool = False,
) -> dict:
    """Push ``rev`` and the ancestors the Hub branch lacks, one commit per version; a no-op when the
    branch already holds ``rev``.

    >>> push(Repository.find(), "me/my-adapter", "main", private=True)   # doctest: +SKIP
    """
    plan = plan_push(repo, repo_id, rev, branch=branch, private=private)
    return execute_push(repo, plan, create_pr=create_pr)


# --- pull -------------------------------------------------------------------------------------

from .errors import PullRefused, UntrustedSigner  # noqa: E402


def check_remote_names(names: list[str], where: str) -> None:
    """Refuse pickle files, odd paths, and anything a seal push does not write."""
    bad_paths = [n for n in names if n.startswith("/") or ".." in n.split("/") or "\\" in n]
    if bad_paths:
        raise PullRefused(f"{where} holds files with unsafe paths ({', '.join(bad_paths[:5])}); refusing to pull it")
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise PullRefused(
            f"{where} holds pickle files ({', '.join(pickles[:5])}), which can run code when loaded; "
            f"seal pulls safetensors only, so nothing was imported"
        )
    unexpected = [n for n in names if n not in ALLOWED_FILES and not _BLOB_NAME.match(n)]
    if unexpected:
        raise PullRefused(
            f"{where} holds files a seal push does not write ({', '.join(unexpected[:5])}); "
            f"refusing to pull it, nothing was imported"
        )
    missing = [n for n in REQUIRED_FILES if n not in names]
    if missing:
        raise PullRefused(f"{where} is not a seal push (no {', '.join(missing)}); push it with `seal push`")


@dataclass
class CheckedLineage:
    """A lineage.json that passed every check, with what it takes to import it."""

    head: str
    to_import: list[str]  # parents first
    manifests: dict[str, dict]
    signatures: dict[str, tuple[str, str]]
    signer_keys: dict[str, str]


def check_lineage(doc, *, local_base: dict, known: set[str], where: str) -> CheckedLineage:
    """Every check on a pulled lineage.json that needs no blob. ``known``: ids already in this registry.

    A pulled signer becomes trusted (in ``signers``) only because every signature it made in this
    lineage verified against its key and every id it signed is the hash of its manifest: it proves
    who recorded these exact versions, not that the recorder was right.
    """
    from .signing import check_signature, signer_id

    def refuse(why: str):
        raise PullRefused(f"{where}: {why}; nothing was imported")

    if not isinstance(doc, dict) or doc.get("format") != LINEAGE_FORMAT:
        refuse(f"{LINEAGE_FILE} is not a {LINEAGE_FORMAT} document")
    items, keys, base, files = doc.get("versions"), doc.get("signers"), doc.get("base"), doc.get("files")
    head = doc.get("head")
    if not isinstance(items, list) or not isinstance(keys, dict) or not isinstance(base, dict) or not isinstance(files, dict):
        refuse(f"{LINEAGE_FILE} lacks versions, signers, base or files")
    for name, digest in files.items():
        if not isinstance(name, str) or name.startswith("/") or ".." in name.split("/") or "\\" in name:
            refuse(f"{LINEAGE_FILE} names an unsafe path {name!r}")
        if name not in (CONFIG_FILE, WEIGHTS_FILE) and not _BLOB_NAME.match(name):
            refuse(f"{LINEAGE_FILE} names an unexpected file {name!r}")
        if not is_digest(digest):
            refuse(f"{LINEAGE_FILE} gives {name!r} a malformed digest")
    for sid, pub in keys.items():
        if not isinstance(pub, str) or not re.fullmatch(r"[0-9a-f]{64}", pub) or signer_id(pub) != sid:
            refuse(f"signer {str(sid)[:12]} does not match its public key")
    manifests: dict[str, dict] = {}
    sigs: dict[str, tuple[str, str]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("manifest"), dict):
            refuse(f"{LINEAGE_FILE} holds an entry that is not a version")
        vid, manifest = item.get("id"), item["manifest"]
        if not isinstance(vid, str) or not _HEX64.match(vid):
            refuse(f"{LINEAGE_FILE} holds a malformed version id {str(vid)[:20]!r}")
        if vid in manifests:
            refuse(f"version {short_id(vid)} appears twice in {LINEAGE_FILE}")
        try:
            actual = version_id(manifest)
        except Exception:  # rfc8785 refuses NaN, huge ints, non-string keys…
            refuse(f"the manifest of {short_id(vid)} cannot be put in canonical form")
        if actual != vid:
            refuse(f"the manifest of version {short_id(vid)} does not hash to its id (it was altered)")
        signature, signer = item.get("signature"), item.get("signer")
        if not isinstance(signature, str) or not isinstance(signer, str) or signer not in keys:
            refuse(f"version {short_id(vid)} is not signed by a key included in {LINEAGE_FILE}")
        if not check_signature(keys[signer], vid, signature):
            refuse(f"the signature of version {short_id(vid)} does not verify")
        try:
            check_manifest(manifest)
        except ManifestInvalid as e:
            refuse(f"the manifest of {short_id(vid)} breaks seal's schema ({e})")
        manifests[vid] = manifest
        sigs[vid] = (signature, signer)
    if not isinstance(head, str) or head not in manifests:
        refuse(f"the head version {str(head)[:12]} is not in {LINEAGE_FILE}")
    if base.get("id") != local_base["id"]:
        raise PullRefused(
            f"pulled lineage is on base {base.get('name')} ({str(base.get('id'))[:12]}); this registry is on "
            f"{local_base['name']} ({local_base['id'][:12]}); pull into a registry on that base "
            f"(`seal init --base ...`)"
        )
    # Walk from the head: each parent is in the document or already here; local ones end the walk.
    closure, stack = set(), [head]
    while stack:
        v = stack.pop()
        if v in closure or v in known:
            continue
        if v not in manifests:
            refuse(f"{LINEAGE_FILE} is incomplete: parent {short_id(v)} is neither in it nor in this registry")
        closure.add(v)
        m = manifests[v]
        if m.get("base") != local_base["id"]:
            raise PullRefused(
                f"pulled lineage is on base {str(m.get('base'))[:12]}; this registry is on "
                f"{local_base['name']} ({local_base['id'][:12]}); nothing was imported"
            )
        for p in m["parents"]:
            if not isinstance(p, str) or not _HEX64.match(p):
                refuse(f"version {short_id(v)} has a malformed parent id")
            stack.append(p)
    head_adapter = manifests[head].get("adapter") or {}
    if not is_digest(head_adapter.get("weights")) or not isinstance(head_adapter.get("config"), dict):
        refuse(f"the head version {short_id(head)} has no adapter")
    if files.get(WEIGHTS_FILE) != head_adapter["weights"]:
        refuse(f"{LINEAGE_FILE} names adapter weights that are not the head version's")
    order = topo_order({v: [p for p in manifests[v]["parents"] if p in closure] for v in closure},
                       {v: str(manifests[v]["created_at"]) for v in closure})
    return CheckedLineage(head, order, manifests, sigs, {s: keys[s] for _, s in sigs.values()})


def _snapshot_files(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel == ".cache" or rel.startswith(".cache/"):
            continue  # huggingface_hub's own bookkeeping
        if p.is_file():
            out[rel] = p
    return out


def pull(repo: Repository, spec: str, *, trust: list[str] | None = None, force: bool = False) -> dict:
    """Fetch ``REPO_ID[@REVISION]``, check everything, then import the versions this registry lacks
    and set ``refs/remotes/hub/<repo_id>``. A failed check imports nothing.

    >>> pull(Repository.find(), "me/my-adapter@3f2a9c1b0d4e")     # doctest: +SKIP
    """
    from huggingface_hub import HfApi

    repo_id, revision = parse_repo_spec(spec)
    with repo.read() as conn:
        local_base = get_base(conn, repo.base_id(conn))
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="pull-", dir=repo.tmp_dir) as tmpname:
        tmp = Path(tmpname)
        with hub_errors(repo_id, revision):
            info = api.model_info(repo_id, revision=revision)
            commit = info.sha
            where = f"{repo_id}@{revision or 'main'} ({commit[:12]})"
            names = [s.rfilename for s in (info.siblings or [])]
            check_remote_names(names, where)
            folder = Path(api.snapshot_download(repo_id, revision=commit, cache_dir=tmp / "cache"))
        files = _snapshot_files(folder)
        check_remote_names(list(files), where)
        lineage_path = files[LINEAGE_FILE]
        if lineage_path.stat().st_size > MAX_LINEAGE_BYTES:
            raise PullRefused(f"{where}: {LINEAGE_FILE} is too large; nothing was imported")
        try:
            doc = json.loads(lineage_path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PullRefused(f"{where}: {LINEAGE_FILE} is not valid JSON ({e}); nothing was imported") from None
        with repo.read() as conn:
            known_ids = _known(conn, doc)
        checked = check_lineage(doc, local_base=local_base, known=known_ids, where=where)
        # The head commit's own files: adapter, config and data blobs, each against its digest.
        head_manifest = checked.manifests[checked.head]
        adapter = head_manifest["adapter"]
        if file_digest(files[WEIGHTS_FILE]) != adapter["weights"]:
            raise PullRefused(
                f"{where}: {WEIGHTS_FILE} does not match the head version's digest (corrupt or tampered); "
                f"nothing was imported"
            )
        safetensors_header(files[WEIGHTS_FILE])
        try:
            shipped_config = json.loads(files[CONFIG_FILE].read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            shipped_config = None
        if shipped_config != adapter["config"]:
            raise PullRefused(f"{where}: {CONFIG_FILE} differs from the head version's adapter config; nothing was imported")
        available: dict[str, Path] = {adapter["weights"]: files[WEIGHTS_FILE]}
        for name, path in files.items():
            if _BLOB_NAME.match(name):
                digest = DIGEST_PREFIX + name[len(BLOB_DIR):]
                if file_digest(path) != digest:
                    raise PullRefused(f"{where}: {name} does not match its digest (corrupt or tampered); nothing was imported")
                available[digest] = path
        # Every other blob comes from the commit tagged with its version's short id.
        needed: list[tuple[str, str]] = []
        for v in checked.to_import:
            for digest in referenced_blobs(checked.manifests[v]):
                if digest not in available and not repo.store.has(digest) and (v, digest) not in needed:
                    needed.append((v, digest))
        with hub_errors(repo_id, revision):
            for v, digest in needed:
                if digest in available:
                    continue
                weights = (checked.manifests[v].get("adapter") or {}).get("weights")
                name = WEIGHTS_FILE if digest == weights else BLOB_DIR + digest[len(DIGEST_PREFIX):]
                path = _fetch_tagged(api, repo_id, v, name, tmp / "cache", where)
                if file_digest(path) != digest:
                    raise PullRefused(
                        f"{where}: {name} of version {short_id(v)} (tag {short_id(v)}) does not match its digest "
                        f"(corrupt or tampered); nothing was imported"
                    )
                available[digest] = path
        return _import(repo, repo_id, commit, checked, available, trust=trust, force=force)


def _known(conn: Connection, doc) -> set[str]:
    ids = []
    if isinstance(doc, dict) and isinstance(doc.get("versions"), list):
        for item in doc["versions"]:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                ids.append(item["id"])
                parents = (item.get("manifest") or {}).get("parents") if isinstance(item.get("manifest"), dict) else None
                if isinstance(parents, list):
                    ids += [p for p in parents if isinstance(p, str)]
    return {v for v in set(ids) if version_exists(conn, v)}


def _fetch_tagged(api, repo_id: str, vid: str, name: str, cache: Path, where: str) -> Path:
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        return Path(api.hf_hub_download(repo_id, name, revision=R.TAGS + short_id(vid), cache_dir=cache))
    except (RevisionNotFoundError, EntryNotFoundError):
        raise PullRefused(
            f"{where}: the blob {name} of ancestor {short_id(vid)} is not on the Hub (no tag {short_id(vid)} holding "
            f"it); push that version with `seal push`; nothing was imported"
        ) from None


def _import(repo: Repository, repo_id: str, commit: str, checked: CheckedLineage, available: dict[str, Path],
            *, trust: list[str] | None = None, force: bool = False) -> dict:
    """Store the checked blobs, then insert versions, signers and the remote-tracking ref in one transaction.

    Blobs are never unlinked here, even when the pull fails or loses a race: another pull may have
    just committed the same blob. `seal gc` removes what no version references.
    """
    from .objects import now_utc
    from .signing import add_trusted

    untrusted = _untrusted(repo, checked, trust or [])
    if untrusted:
        raise UntrustedSigner(
            f"{repo_id}@{commit[:12]} is signed by key(s) not in your trust file: "
            + ", ".join(f"{sid[:16]}" for sid in untrusted)
            + "; check the fingerprint with the publisher, then pull again with --trust KEYID (nothing was imported)",
            untrusted)
    for sid in sorted({s for _, s in checked.signatures.values()}):
        add_trusted(repo.trust_path, checked.signer_keys[sid], f"pulled from hub:{repo_id}")
    added = 0
    for digest, path in available.items():
        if not repo.store.has(digest):
            if repo.store.put_file(path) != digest:
                raise PullRefused(f"{path.name} changed while it was stored; nothing was imported")
            added += 1
    for v in checked.to_import:
        for digest in referenced_blobs(checked.manifests[v]):
            if not repo.store.has(digest):
                raise PullRefused(f"blob {digest} of version {short_id(v)} was not fetched; nothing was imported")
    ref = remote_ref(repo_id)
    entries = []
    with repo.write() as conn:
        for sid in sorted({checked.signatures[v][1] for v in checked.to_import}):
            conn.insert_new("signers", {"id": sid, "public_key": checked.signer_keys[sid],
                                        "name": f"pulled from hub:{repo_id}", "created_at": now_utc()}, "id")
        fresh = repo.insert_signed(((checked.manifests[v], *checked.signatures[v]) for v in checked.to_import), conn)
        old = R.read_ref(conn, ref)
        if old != checked.head:
            if old is not None and not force and old not in ancestors(conn, checked.head):
                raise UserError(
                    f"{R.short_name(ref)} is at {short_id(old)}, which {short_id(checked.head)} does not descend from; "
                    f"pulling it would move the tracking ref backwards or sideways: pass --force to do so"
                )
            repo._register_signer(conn)
            entries.append(R.move_ref(conn, ref, expected=old, new=checked.head, reason=f"pull: {repo_id}@{commit}",
                                      signer=repo.signer))
    repo.journal([checked.manifests[v] for v in fresh], entries)
    return {"repo_id": repo_id, "commit": commit, "head": checked.head, "imported": fresh,
            "ref": R.short_name(ref), "up_to_date": not fresh, "blobs": added,
            "signers": sorted({s for _, s in checked.signatures.values()})}


def _untrusted(repo: Repository, checked: CheckedLineage, trust: list[str]) -> list[str]:
    """Signers of the versions to import that neither the trust file nor --trust names."""
    trusted = set(repo.trusted())
    wanted = {t.lower() for t in trust}
    out = []
    for sid in sorted({checked.signatures[v][1] for v in checked.to_import}):
        if sid in trusted or any(sid.startswith(w) for w in wanted if len(w) >= 8):
            continue
        out.append(sid)
    return out


__all__ = [
    "push", "plan_push", "execute_push", "pull", "check_lineage", "lineage_document", "model_card",
    "parse_repo_spec", "remote_ref", "PushPlan", "PullRefused", "LINEAGE_FILE",
]

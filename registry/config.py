"""Where a registry lives and how it is configured: `.seal/`, `config.toml`, and the environment.

The registry is found by walking up from the current folder to `.seal/`, or named by
``--repo PATH`` or ``SEAL_DIR``. ``config.toml`` is validated when read: a wrong key or type is
an error that names the key, never a traceback later.

>>> cfg = parse_config('[base]\\nid = "' + "a" * 64 + '"\\nname = "tiny"\\n')
>>> cfg.base_name, cfg.database_url
('tiny', None)
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import NotARegistry, UserError
from .store.objects import is_hex64

SEAL_DIRNAME = ".seal"
CONFIG_FILE = "config.toml"
DB_FILE = "lineage.db"

# section -> key -> what it must be (all strings today)
_KNOWN = {
    "base": ("id", "name"),
    "database": ("url",),
    "tracking": ("uri", "model_name"),
    "objects": ("url",),
    "trust": ("allowed_signers",),
    "worktree": ("name",),
}


@dataclass(frozen=True)
class Config:
    base_id: str | None = None
    base_name: str | None = None
    database_url: str | None = None
    tracking_uri: str | None = None
    model_name: str | None = None
    objects_url: str | None = None
    allowed_signers: str | None = None
    worktree: str | None = None  # set by `seal clone`: this folder's HEAD is refs/worktrees/NAME/HEAD


def parse_config(text: str, where: str = CONFIG_FILE) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where} is not valid TOML ({e}); fix it by hand") from None
    values: dict[str, str] = {}
    for section, table in data.items():
        if section not in _KNOWN or not isinstance(table, dict):
            raise UserError(f"{where}: unknown section [{section}]; known: {', '.join(f'[{s}]' for s in _KNOWN)}")
        for key, value in table.items():
            if key not in _KNOWN[section]:
                raise UserError(f"{where}: unknown key {section}.{key}; known in [{section}]: {', '.join(_KNOWN[section])}")
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{where}: {section}.{key} must be a non-empty string, not {value!r}")
            values[f"{section}.{key}"] = value
    _check_urls(values, where)
    return Config(
        base_id=values.get("base.id"), base_name=values.get("base.name"),
        database_url=values.get("database.url"), tracking_uri=values.get("tracking.uri"),
        model_name=values.get("tracking.model_name"),
        objects_url=values.get("objects.url"), allowed_signers=values.get("trust.allowed_signers"),
        worktree=values.get("worktree.name"),
    )


_SCHEMES = {"objects.url": ("s3://", "file://"),
            "database.url": ("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")}


def _check_urls(values: dict[str, str], where: str) -> None:
    """A URL of a kind seal cannot open is refused when the config is read, not when first used."""
    for key, schemes in _SCHEMES.items():
        value = values.get(key)
        if value is not None and not value.startswith(schemes):
            raise UserError(f"{where}: {key} = {value!r} is not one of {', '.join(s + '…' for s in schemes)}; fix it by hand")


def read_config(seal_dir: Path) -> Config:
    from .files import read_small

    path = seal_dir / CONFIG_FILE
    try:
        text = read_small(path, "the configuration").decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; fix it by hand") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    config = parse_config(text, str(path))
    if not is_hex64(config.base_id):
        # Every command needs the base: without it a write would look the base up mid-transaction.
        raise UserError(f"{path} lacks a valid [base] id (the base model's 64-hex fingerprint); restore the "
                        "[base] section `seal init` wrote")
    return config


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, and non-ASCII text stays as it is (TOML has no
    surrogate-pair escapes, so ``ensure_ascii`` would write an emoji TOML cannot read)."""
    return json.dumps(value, ensure_ascii=False)


def config_text(*, base_id: str, base_name: str, db_url: str | None, objects_url: str | None = None,
                allowed_signers: str | None = None, worktree: str | None = None, tracking_uri: str | None = None) -> str:
    lines = [
        "# seal registry configuration",
        "[base]", f"id = {_toml_string(base_id)}", f"name = {_toml_string(base_name)}", "",
        "[database]", "# SEAL_DATABASE_URL overrides this; the default is sqlite:///.seal/lineage.db",
        f"url = {_toml_string(db_url)}" if db_url else '# url = "postgresql://user@host/db"', "",
        "[objects]", "# SEAL_OBJECTS_URL overrides this; the default is .seal/objects",
        f"url = {_toml_string(objects_url)}" if objects_url else '# url = "s3://bucket/prefix"', "",
        "[tracking]", "# MLflow tracking URI; the default keeps runs in .seal/mlflow.db",
        *([f"uri = {_toml_string(tracking_uri)}"] if tracking_uri else []), "",
        "[trust]", "# the trusted signing keys; the default is .seal/allowed_signers",
        *([f"allowed_signers = {_toml_string(allowed_signers)}"] if allowed_signers else []), "",
    ]
    if worktree:
        lines += ["[worktree]", "# attached by `seal clone`: this folder's HEAD is refs/worktrees/NAME/HEAD",
                  f"name = {_toml_string(worktree)}", ""]
    return "\n".join(lines)


def find_seal_dir(start: Path | str | None = None) -> Path:
    """The `.seal/` folder for ``start`` (or ``SEAL_DIR``, or the current folder and its parents)."""
    explicit = start is not None or bool(os.environ.get("SEAL_DIR"))
    here = Path(start if start is not None else os.environ.get("SEAL_DIR") or Path.cwd()).expanduser()
    if explicit:
        for candidate in (here / SEAL_DIRNAME, here):
            if candidate.name == SEAL_DIRNAME and (candidate / CONFIG_FILE).is_file():
                return candidate.resolve()
        raise NotARegistry(f"{here} is not a seal registry (no .seal/ there); run `seal init {here}` first")
    try:
        here = here.resolve()
    except OSError as e:
        raise NotARegistry(f"cannot read the current folder ({e.strerror}); cd somewhere else") from None
    for folder in (here, *here.parents):
        candidate = folder / SEAL_DIRNAME
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise NotARegistry(
        f"not inside a seal registry ({here} or any parent); run `seal init`, or pass --repo PATH or set SEAL_DIR"
    )

"""The Hub's failures as seal errors, and the Hub client's progress bars kept in their place.

:func:`hub_errors` turns huggingface_hub's exceptions into one-line errors that say what to do
(exit 2, or 1 for a lost compare-and-swap); :func:`quiet_unless_terminal` silences the client's
progress bars unless stderr is a terminal (they are named by sha256 and wreck logs);
:func:`bounded_bar` is the progress class a pull hands the client, so that a download stops as
soon as it passes its limit, whatever size the server announced.

>>> with hub_errors("me/a"):                                   # doctest: +SKIP
...     HfApi().model_info("me/a")
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from ..errors import PullRefused, RefConflict, SealError, UserError

CONFLICT_HINT = "the Hub branch moved since you read it; run `seal pull {repo}` and push again"


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line seal errors that say what to do."""
    try:
        yield
    except SealError:
        raise
    except Exception as e:
        # The client wraps a failed LFS upload in a RuntimeError whose cause is the HTTP error.
        cause = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else e
        translated = _translate(cause, repo_id, revision)
        if translated is None:
            raise
        raise translated from None


def _translate(e: BaseException, repo_id: str, revision: str | None) -> SealError | None:
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                        LocalTokenNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    where = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(e, HFValidationError):
        return UserError(f"{repo_id!r} is not a valid Hub repo id ({_first_line(e)}); give ORG/NAME")
    if isinstance(e, OfflineModeIsEnabled):
        return UserError("HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it and try again")
    if isinstance(e, LocalTokenNotFoundError):
        return UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    if isinstance(e, GatedRepoError):
        return UserError(f"{repo_id} is gated on the Hub; accept its terms on the Hub page, then try again")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"repo {repo_id} was not found on the Hub, or your token cannot see it; check the name, "
                         f"and set HF_TOKEN (or run `hf auth login`) for a private repo")
    if isinstance(e, RevisionNotFoundError):
        return UserError(f"revision {revision!r} was not found in {repo_id}; give a branch, tag or commit of that repo")
    if isinstance(e, EntryNotFoundError):
        return UserError(f"{where} lacks a file seal needs ({_first_line(e)}); was it pushed with `seal push`?")
    if isinstance(e, HfHubHTTPError):
        return _http_error(e, repo_id, where)
    if isinstance(e, (httpx2.HTTPError, ConnectionError, TimeoutError)):
        return UserError(f"could not reach the Hub at {constants.ENDPOINT} ({type(e).__name__}); check your network, "
                         f"or HF_ENDPOINT")
    if isinstance(e, OSError):
        # huggingface_hub raises OSError (EnvironmentError) when a download does not match its metadata.
        return UserError(f"the download from {where} failed or was corrupt ({_first_line(e)}); nothing was imported")
    return None


def _http_error(e, repo_id: str, where: str) -> SealError:
    status = e.response.status_code if e.response is not None else None
    detail = f"{status}: {e.server_message or _first_line(e)}"
    if status == 412:
        return RefConflict(f"hub:{repo_id}", expected=None, actual=None, message=CONFLICT_HINT.format(repo=repo_id))
    if status in (401, 403):
        return UserError(f"the Hub refused the request to {repo_id} ({status}); set HF_TOKEN to a token with write "
                         f"access to it (or run `hf auth login`)")
    if status is not None and status >= 500:
        return SealError(f"the Hub failed on {where} ({detail}); try again later")
    return UserError(f"the Hub refused the request on {where} ({detail})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@contextmanager
def quiet_unless_terminal(stream=None) -> Iterator[None]:
    """Silence huggingface_hub's progress bars for the block unless ``stream`` (stderr) is a terminal."""
    if _is_terminal(stream if stream is not None else sys.stderr):
        yield
        return
    from huggingface_hub.utils import disable_progress_bars

    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 outranks us; then it is the user's call
        warnings.simplefilter("ignore")
        quiet = disable_progress_bars()
    with quiet:
        yield


def bounded_bar(limit: int, name: str, where: str):
    """A progress-bar class for ``hf_hub_download`` that aborts the download past ``limit`` bytes.

    The size was checked against the Hub's listing before the download started; this catches a
    server that then sends more than it announced.
    """
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Bounded(hub_tqdm):
        def __init__(self, *args, **kwargs):
            if not _is_terminal(sys.stderr):
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.seen = 0

        def update(self, n=1):
            self.seen += n or 0
            if self.seen > limit:
                raise PullRefused(f"{where}: {name} sent more than its {limit} bytes; stopped the download, "
                                  f"nothing was imported")
            return super().update(n)

    return Bounded

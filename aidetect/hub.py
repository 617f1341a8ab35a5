"""The Hugging Face Hub: downloads into its standard cache, the cache listing, offline mode,
pushing a detector, and the one mapping of library exceptions to `WeightsError`.

Hub files go to huggingface_hub's standard cache (HF_HOME, HF_HUB_CACHE, HF_TOKEN, revision
pinning); HF_HUB_OFFLINE is read when a reference is resolved. Every library exception a user
can meet is mapped to a one-line `WeightsError` in `weights_errors`. Resolving a reference and
building the detector are `aidetect.loading`'s (`load_detector` is re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aidetect.errors import WeightsError, first_line

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# --- the Hub -----------------------------------------------------------------------------------
def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    """The Hub cache folder as HF_HUB_CACHE / HF_HOME say now."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def offline_fix() -> str:
    """The fix for 'no network and nothing cached', naming HF_HUB_OFFLINE when it is set."""
    fix = "run once online, or pass --weights PATH"
    return fix + ("; HF_HUB_OFFLINE is set" if hub_offline() else "")


def fetch_hub_detector(repo_id: str, *, revision: str | None = None,
                       reference: str | None = None,
                       on_download: Callable[[Any], None] | None = None
                       ) -> tuple[Path, str | None]:
    """Download (or find in the cache) a detector repository's config and weights.

    Returns the snapshot folder and its commit. The weights are fetched at the commit the
    config resolved to, so both files come from the same commit even if a branch moves. When
    the Hub's host cannot be reached, a cached copy is used at once (no timeouts) and a missing
    one fails at once; `on_download` hears of the weights' download before it starts.
    """
    from huggingface_hub import hf_hub_download

    from aidetect.config import CONFIG_NAME, WEIGHTS_NAME
    from aidetect.downloads import hub_reachable, is_cached, plan_download

    offline = hub_offline()
    if not offline and not hub_reachable():
        # Plainly no network: what is cached is used as is; what is not raises
        # LocalEntryNotFoundError at once, mapped to a one-line error.
        offline = True
    common = {"cache_dir": hub_cache_dir(), "local_files_only": offline}
    config_file = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, **common))
    snapshot = config_file.parent
    commit = snapshot.name if _COMMIT.match(snapshot.name) else None
    pinned = commit or revision
    if not offline and not is_cached(repo_id, WEIGHTS_NAME, pinned):
        download = plan_download(repo_id, [WEIGHTS_NAME], reference=reference or repo_id,
                                 what="the detector's weights", revision=pinned)
        if download is not None and on_download is not None:
            on_download(download)
    hf_hub_download(repo_id, WEIGHTS_NAME, revision=pinned, **common)
    return snapshot, commit


@dataclass(frozen=True)
class CachedDetector:
    """An aidetect detector found in the Hugging Face cache."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]  # branches/tags pointing at this commit
    backbone: str
    path: str  # the snapshot folder
    size_on_disk: int


def cached_detectors() -> list[CachedDetector]:
    """Every revision in the Hub cache whose config.json is an aidetect detector's."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from aidetect.config import CONFIG_NAME, WEIGHTS_NAME

    try:
        info = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            snapshot = Path(revision.snapshot_path)
            try:
                config = json.loads((snapshot / CONFIG_NAME).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue  # not every cached repository is a detector
            if not (isinstance(config, dict) and "aidetect_version" in config
                    and (snapshot / WEIGHTS_NAME).is_file()):
                continue
            found.append(CachedDetector(
                repo_id=repo.repo_id, commit=revision.commit_hash,
                refs=tuple(sorted(revision.refs)), backbone=str(config.get("backbone")),
                path=str(snapshot), size_on_disk=revision.size_on_disk,
            ))
    return sorted(found, key=lambda c: (c.repo_id, c.commit))


# --- errors ------------------------------------------------------------------------------------
@contextmanager
def weights_errors(reference: str, *, hub: bool = False) -> Iterator[None]:
    """Map the exceptions of huggingface_hub, safetensors, open_clip and a detector's config to
    one-line `WeightsError`s naming `reference` and the fix. The one place that does it."""
    from huggingface_hub import errors as hf
    from safetensors import SafetensorError

    plain = f" (no local folder {reference} either)" if hub and "://" not in reference else ""
    try:
        yield
    except WeightsError:
        raise
    except hf.GatedRepoError:
        raise WeightsError(f"{reference}: a gated repository; accept its terms on "
                           "huggingface.co, then set HF_TOKEN or run `hf auth login`") from None
    except hf.RepositoryNotFoundError:
        raise WeightsError(f"{reference}: no such Hub repository{plain}, or it is private (set "
                           "HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise WeightsError(f"{reference}: no such revision on the Hub") from None
    except hf.LocalEntryNotFoundError:
        raise WeightsError(f"{reference}: not in the Hugging Face cache ({hub_cache_dir()}) and "
                           f"the Hub cannot be reached{plain}: {offline_fix()}") from None
    except hf.OfflineModeIsEnabled:
        raise WeightsError(f"{reference}: needs the Hub: {offline_fix()}") from None
    except hf.EntryNotFoundError as error:
        raise WeightsError(f"{reference}: not a detector repository ({first_line(error)}); it "
                           "needs config.json and model.safetensors") from None
    except hf.HfHubHTTPError as error:
        raise WeightsError(f"{reference}: the Hub refused: {first_line(error)}") from None
    except hf.HFValidationError as error:
        raise WeightsError(f"{reference}: not a Hub repository id ({first_line(error)})") from None
    except SafetensorError as error:
        raise WeightsError(f"{reference}: not a valid safetensors file "
                           f"({first_line(error)})") from None
    except (ValueError, RuntimeError) as error:
        # A config the detector cannot be built from (bad preprocessing, an unknown backbone,
        # tensor shapes that differ from the config): say which and stop. Chained, so that
        # AIDETECT_DEBUG=1 still shows where it came from.
        raise WeightsError(f"{reference}: cannot build the detector ({first_line(error)})") \
            from error


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as handle:
        return stream_sha256(handle)


def stream_sha256(handle: BinaryIO) -> str:
    """Hex sha256 of what is left to read in `handle`, in 1 MiB chunks (hashlib releases the
    GIL on large updates, so files hashed in threads overlap)."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()

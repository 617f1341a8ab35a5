"""Publishing a detector folder on the Hugging Face Hub as it is (`aidetect push`).

The folder is checked first, each failure a one-line error: it is a folder and the repository
id is well formed; every licence file its config or card names is there (`aidetect.licences`);
a token is at hand and the Hub is not switched off (HF_HUB_OFFLINE); it loads as a detector
exactly as `scan` loads it (`aidetect.loading.load_detector`). Then its files go up unchanged in
one commit (`HfApi.create_commit`): the card is the folder's own README.md (written once into
the folder, from the config, when there is none), and the config keeps its `aidetect_version`.
Left out: hidden files and folders, and a training run's resume state (`train/`: a pickle
with the optimiser's state, no part of a detector). A dry run does every check that needs no
Hub (no token, no upload) and says what would go where.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aidetect.errors import UsageError, WeightsError, first_line
from aidetect.hub import REPO_ID

DEFAULT_REVISION = "main"
# A training run's resume state, beside the detector files (aidetect.train.STATE_DIR).
RUN_STATE_DIR = "train"


@dataclass
class PushResult:
    """What a push sent (or, for a dry run, would send) and where."""

    folder: str
    repo_id: str
    revision: str
    files: list[str]  # paths relative to the folder, as they are named in the repository
    left_out: list[str] = field(default_factory=list)
    card_written: bool = False  # README.md was absent: aidetect's card is written (once)
    url: str | None = None  # the commit's URL; None for a dry run


def push_detector(folder: str | Path, repo_id: str, *, revision: str | None = None,
                  private: bool = False, commit_message: str | None = None,
                  token: str | None = None, dry_run: bool = False) -> PushResult:
    """Check `folder` and upload its files to the Hub repository `repo_id` in one commit.

    Args:
        folder: a detector folder (config.json + model.safetensors, and what travels with them).
        repo_id: owner/name (`hf://` allowed); created when absent.
        revision: the branch to commit to (created when absent); default main.
        private: create the repository as private.
        commit_message: default "Upload detector FOLDER with aidetect".
        token: a Hub token; default huggingface_hub's (HF_TOKEN, `hf auth login`).
        dry_run: check everything that needs no Hub, upload nothing, write nothing.

    Raises:
        WeightsError: the folder is not a detector, lacks a licence file it names, or the Hub
            cannot be reached or refuses; UsageError: no token, or a bad repository id.
    """
    from aidetect.config import CONFIG_NAME, WEIGHTS_NAME
    from aidetect.licences import missing_licence_files

    source = Path(folder).expanduser()
    repo_id = repo_id.removeprefix("hf://")
    if not source.is_dir():
        raise WeightsError(f"{folder}: not a folder; push takes a detector folder "
                           f"({CONFIG_NAME} + {WEIGHTS_NAME})")
    if not REPO_ID.match(repo_id):
        raise UsageError(f"{repo_id}: not a Hub repository id; write owner/name")
    revision = revision or DEFAULT_REVISION
    if not (source / CONFIG_NAME).is_file():
        raise WeightsError(f"{folder}: not a detector folder (no {CONFIG_NAME})")
    missing = missing_licence_files(source)
    if missing:
        raise WeightsError(f"{folder}: licence file {missing[0]} is named in its config or "
                           "model card but missing from the folder; put it back before "
                           "publishing")
    if not dry_run:
        token = require_token(token)
    _check_loads(source)
    files, left_out = folder_files(source)
    card_missing = "README.md" not in files
    result = PushResult(folder=str(folder), repo_id=repo_id, revision=revision,
                        files=sorted([*files, "README.md"]) if card_missing else files,
                        left_out=left_out, card_written=card_missing)
    if dry_run:
        return result
    if card_missing:
        write_card(source)
    with hub_errors(repo_id):
        result.url = _upload(source, result, private=private, token=token,
                             message=commit_message or f"Upload detector {source.name} with "
                                                       "aidetect")
    return result


def folder_files(folder: Path) -> tuple[list[str], list[str]]:
    """The folder's files to upload, and what is left out (hidden files and folders, the run's
    resume state, linked folders); paths relative to `folder`, with "/" between parts."""
    files, left_out = [], []
    for root, dirs, names in os.walk(folder):
        here = Path(root).relative_to(folder)
        kept = []
        for name in dirs:
            if name.startswith(".") or here / name == Path(RUN_STATE_DIR) or \
                    (Path(root) / name).is_symlink():
                left_out.append((here / name).as_posix() + "/")
            else:
                kept.append(name)
        dirs[:] = kept  # os.walk descends only into these
        for name in names:
            (left_out if name.startswith(".") else files).append((here / name).as_posix())
    return sorted(files), sorted(left_out)


def require_token(token: str | None) -> str:
    """The token to push with, or a one-line error before anything is tried."""
    from aidetect.hub import hub_offline

    if hub_offline():
        raise WeightsError("HF_HUB_OFFLINE is set: pushing needs the Hugging Face Hub; unset it "
                           "(or use --dry-run to check the folder)")
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise UsageError("no Hugging Face token: set HF_TOKEN to a token with write access, or "
                         "run `hf auth login` (or use --dry-run to check the folder)")
    return found


def _check_loads(folder: Path) -> None:
    """Load the folder as `scan` would, then let it go; a failure is `load_detector`'s error."""
    from aidetect.loading import load_detector, parse_reference

    reference = str(folder)
    if parse_reference(reference).kind != "folder":  # e.g. a folder named like a preset
        reference = os.path.join(os.curdir, reference)
    load_detector(reference, device="cpu")


def write_card(folder: Path) -> None:
    """Write aidetect's card into a folder that has none, from its config."""
    from aidetect.atomic import atomic_write_text
    from aidetect.card import render_detector_card
    from aidetect.detector_files import read_config
    from aidetect.licences import clip_licence, recorded_licences

    config = read_config(folder)
    licences = recorded_licences(config, str(folder / "config.json"))
    if not licences:
        base = clip_licence(str(config.get("backbone")), config.get("base_pretrained"))
        licences = [base] if base else []
    atomic_write_text(folder / "README.md", render_detector_card(config, licences))


def _upload(folder: Path, plan: PushResult, *, private: bool, token: str, message: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(plan.repo_id, private=private, exist_ok=True, token=token)
    if plan.revision != DEFAULT_REVISION:
        api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True, token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
                  for name in plan.files]
    info = api.create_commit(plan.repo_id, operations, commit_message=message,
                             revision=plan.revision, token=token)
    return str(getattr(info, "commit_url", info))


def network_errors() -> tuple[type[BaseException], ...]:
    """The transport errors huggingface_hub lets through, whichever HTTP client it uses."""
    errors: list[type[BaseException]] = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            imported = __import__(module)
        except ImportError:
            continue
        errors += [getattr(imported, name) for name in names if hasattr(imported, name)]
    return tuple(errors)


@contextmanager
def hub_errors(repo_id: str) -> Iterator[None]:
    """Map what the Hub and the network raise during a push to one-line `WeightsError`s."""
    from huggingface_hub import errors as hf

    where = f"hf://{repo_id}"
    # huggingface_hub logs each failed try before it raises; the raised error becomes our line.
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    except hf.OfflineModeIsEnabled:
        raise WeightsError(f"{where}: HF_HUB_OFFLINE is set: pushing needs the Hub") from None
    except hf.RepositoryNotFoundError:
        raise WeightsError(f"{where}: the Hub refused: no such repository, or the token cannot "
                           "write to it (check HF_TOKEN / `hf auth login`)") from None
    except hf.RevisionNotFoundError:
        raise WeightsError(f"{where}: no such revision on the Hub") from None
    except hf.HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        fix = "; check HF_TOKEN / `hf auth login` (a token with write access)" \
            if status in (401, 403) else ""
        raise WeightsError(f"{where}: the Hub refused: {first_line(error)}{fix}") from None
    except network_errors() as error:
        raise WeightsError(f"{where}: cannot reach the Hugging Face Hub ({first_line(error)}); "
                           "check the network and try again") from None
    finally:
        hub_logger.setLevel(level)

"""Resolving a weights reference to a loaded detector, with where it came from.

A reference is, in this order of resolution:
1. `hf://owner/name[@revision]`: a Hugging Face Hub repository;
2. a preset name from the registry (`aidetect.presets`; to load a local folder with the same
   name, write `./name`);
3. an existing local path: a detector folder (`config.json` + `model.safetensors`) or a single
   `.safetensors` file whose metadata holds the config (`save_single_file` writes one);
4. `owner/name[@revision]` that is not a local path: a Hub repository.

A saved config is checked field by field (`check_config`) before a detector is built from it,
so that a wrongly typed value is a one-line `WeightsError` naming the file and the field. Hub
downloads, the cache and the mapping of library errors live in `aidetect.hub`. Only
safetensors are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidetect.downloads import OnDownload
from aidetect.errors import WeightsError, first_line
from aidetect.hub import (
    REPO_ID,
    fetch_hub_detector,
    file_sha256,
    hub_cache_dir,
    hub_offline,
    offline_fix,
    weights_errors,
)

HUB_SCHEME = "hf://"
# The safetensors metadata key of a single-file detector: the JSON of `Detector.config`.
SINGLE_FILE_CONFIG_KEY = "aidetect_config"


@dataclass
class LoadedDetector:
    """A detector and its provenance, for reports."""

    detector: object  # aidetect.Detector (kept untyped so this module imports without torch)
    reference: str  # what the user passed
    source: str  # "preset", "folder", "file" or "hub"
    path: str  # the local folder or file the weights were read from
    sha256: str  # of the weights file (for a preset: of its head file)
    revision: str | None = None  # the resolved Hub commit, for Hub references


@dataclass(frozen=True)
class WeightsRef:
    """A parsed reference: what kind it is and where its files are looked for."""

    kind: str  # "preset", "folder", "file" or "hub"
    target: str  # preset name, local path, or Hub repository id
    revision: str | None = None  # Hub only: a branch, tag or commit
    explicit_hub: bool = False  # written as hf://


# --- resolution --------------------------------------------------------------------------------
def parse_reference(reference: str) -> WeightsRef:
    """Classify `reference` without loading anything (see the module docstring for the order)."""
    from aidetect.presets import load_presets

    if not reference.strip():
        raise WeightsError("empty --weights: pass a preset name, a path or hf://owner/name")
    if reference.startswith(HUB_SCHEME):
        repo_id, revision = _split_revision(reference[len(HUB_SCHEME):])
        if not REPO_ID.match(repo_id):
            raise WeightsError(f"{reference}: not a Hub repository; write hf://owner/name"
                               "[@revision]")
        return WeightsRef("hub", repo_id, revision, explicit_hub=True)
    if reference in load_presets():
        return WeightsRef("preset", reference)
    path = Path(reference).expanduser()
    if path.is_dir():
        return WeightsRef("folder", str(path))
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(
                f"{reference}: only .safetensors weights are loaded; convert a PyTorch "
                f"checkpoint first: aidetect convert {reference} --out DIR"
            )
        return WeightsRef("file", str(path))
    repo_id, revision = _split_revision(reference)
    if REPO_ID.match(repo_id) and not reference.startswith((".", "/", "~")):
        return WeightsRef("hub", repo_id, revision)
    if not any(c in reference for c in "/.\\" + os.sep):  # a bare name: meant as a preset
        from aidetect.presets import get_preset

        get_preset(reference)  # raises, listing the presets
    raise WeightsError(f"{reference}: no such file or folder")


def _split_revision(text: str) -> tuple[str, str | None]:
    repo_id, at, revision = text.partition("@")
    if at and not revision:
        raise WeightsError(f"{text}: empty revision after '@'")
    return repo_id, (revision or None)


def load_detector(reference: str, *, device: str = "cpu",
                  on_download: OnDownload | None = None) -> LoadedDetector:
    """Load the detector named by `reference` onto `device`, or raise `WeightsError`.

    `on_download` is called with each `Download` about to start (an open_clip tag's weights, a
    Hub detector's weights), so that a CLI can say what is fetched and how big.
    """
    ref = parse_reference(reference)
    with weights_errors(reference, hub=ref.kind == "hub"):
        if ref.kind == "preset":
            return _load_preset(reference, device=device, on_download=on_download)
        if ref.kind == "folder":
            folder = Path(ref.target)
            return _hashed_while_loading(folder / _weights_name(), lambda: LoadedDetector(
                load_folder(folder, device=device, on_download=on_download), reference,
                "folder", ref.target, ""))
        if ref.kind == "file":
            return _hashed_while_loading(Path(ref.target), lambda: LoadedDetector(
                load_single_file(ref.target, device=device), reference, "file", ref.target, ""))
        snapshot, commit = fetch_hub_detector(ref.target, revision=ref.revision,
                                              reference=reference, on_download=on_download)
        return _hashed_while_loading(snapshot / _weights_name(), lambda: LoadedDetector(
            load_folder(snapshot, device=device, on_download=on_download), reference, "hub",
            str(snapshot), "", revision=commit))


def _hashed_while_loading(weights: Path, load) -> LoadedDetector:
    """`load()`, with the weights file's sha256 computed meanwhile in a thread (hashlib
    releases the GIL): a ViT-L file is 1.2 GB, seconds of hashing otherwise added to start-up."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(file_sha256, weights)
        loaded = load()
        loaded.sha256 = digest.result()
    return loaded


def _weights_name() -> str:
    from aidetect.config import WEIGHTS_NAME

    return WEIGHTS_NAME


# --- local folders and single files ------------------------------------------------------------
def check_config(config: dict[str, Any], source: str, *, architecture: bool = True) -> None:
    """Refuse configs that are not a detector's, come from a newer aidetect, or hold a wrongly
    typed field (`aidetect.saved_config`), in one line naming `source`.

    `architecture=False` leaves out the embedded open_clip architecture, whose check imports
    open_clip (and torch): the score cache reads configs without loading a model.
    """
    from aidetect import __version__
    from aidetect.config import FORMAT_VERSION
    from aidetect.saved_config import check_saved_config

    if not isinstance(config, dict) or "backbone" not in config:
        raise WeightsError(f"{source}: not an aidetect detector config (no 'backbone')")
    version = config.get("format_version", 1)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise WeightsError(
            f"{source}: saved by a newer aidetect ({config.get('aidetect_version', '?')}, "
            f"format {version}; this aidetect {__version__} reads up to {FORMAT_VERSION}): "
            "upgrade aidetect (pip install -U aidetect)"
        )
    check_saved_config(config, source, architecture=architecture)


def load_folder(folder: Path, *, device: str, on_download: OnDownload | None = None):
    """A detector folder; a head-only one (`pretrained` set in its config) builds its image tower
    from that open_clip tag and reads only the head from model.safetensors."""
    from aidetect.config import CONFIG_NAME, WEIGHTS_NAME
    from aidetect.detector_files import read_config

    config = read_config(folder)
    check_config(config, str(folder / CONFIG_NAME))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise WeightsError(f"{folder}: no {WEIGHTS_NAME} in this detector folder (only "
                           "safetensors weights are loaded)")
    from aidetect.detector_files import load_safetensors

    if config.get("pretrained"):
        state = load_safetensors(weights)
        if set(state) != {"head.weight", "head.bias"}:
            raise WeightsError(f"{weights}: a head-only detector (pretrained "
                               f"{config['pretrained']!r} in {CONFIG_NAME}) holds head.weight "
                               f"and head.bias only, not {len(state)} tensors")
        head = {k.removeprefix("head."): v for k, v in state.items()}
        return build_on_tag(config, head, source=str(weights), reference=str(folder),
                            device=device, on_download=on_download)
    return detector_from_state(config, load_safetensors(weights, device=str(device)),
                               source=str(weights), device=device)


def build_on_tag(config: dict[str, Any], head: dict, *, source: str, reference: str,
                 device: str = "cpu", on_download: OnDownload | None = None):
    """A detector whose image tower comes from an open_clip tag and whose head is `head`.

    The `univfd` preset and head-only folders load this way. Offline, a tag that is not cached
    fails at once instead of attempting a download; `on_download` hears of a download first.
    """
    from aidetect.detector_files import load_state
    from aidetect.model import Detector

    kwargs = _detector_kwargs(config)
    cache_only = _prepare_backbone(kwargs["backbone"], kwargs["pretrained"], reference,
                                   on_download)
    try:
        with _quiet_open_clip(), _cache_only(cache_only):
            detector = Detector(**kwargs)
    except RuntimeError as error:  # open_clip's error for a failed download or a bad tag
        what = f"the {kwargs['backbone']} '{kwargs['pretrained']}' weights"
        if "download" in str(error).lower():
            raise WeightsError(
                f"{reference}: cannot download {what} from the Hugging Face Hub (no network?): "
                f"{offline_fix()}"
            ) from error
        raise WeightsError(f"{reference}: cannot get {what} ({first_line(error)}): "
                           f"{offline_fix()}") from error
    load_state(detector.head, head, source=source)
    return detector.to(device).eval()


def _detector_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a saved config that `Detector(...)` takes (not e.g. aidetect_version)."""
    import inspect

    from aidetect.model import Detector

    accepted = inspect.signature(Detector.__init__).parameters
    return {key: value for key, value in config.items() if key in accepted}


def read_single_file_config(path: str | Path) -> dict[str, Any]:
    """The detector config stored in a single `.safetensors` file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:  # metadata only: no torch
        metadata = handle.metadata() or {}
    if SINGLE_FILE_CONFIG_KEY not in metadata:
        raise WeightsError(
            f"{path}: a .safetensors file without a detector config in its metadata; pass a "
            "detector folder, or write one with `aidetect convert ... --single-file`"
        )
    try:
        config = json.loads(metadata[SINGLE_FILE_CONFIG_KEY])
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: its {SINGLE_FILE_CONFIG_KEY} metadata is not valid JSON "
                           f"({error})") from None
    check_config(config, str(path))
    return config


def load_single_file(path: str | Path, *, device: str = "cpu"):
    """A detector from one `.safetensors` file (config in its metadata), strictly loaded."""
    from aidetect.detector_files import load_safetensors

    config = read_single_file_config(path)
    state = load_safetensors(path, device=str(device))
    return detector_from_state(config, state, source=str(path), device=device)


def detector_from_state(config: dict[str, Any], state: dict, *, source: str, device: str = "cpu"):
    """Build a detector from its saved config (already checked by `check_config`) and full
    state dict, every tensor accounted for."""
    import torch

    from aidetect.detector_files import load_state
    from aidetect.model import Detector

    kwargs = _detector_kwargs(config)
    kwargs["pretrained"] = None  # the state dict holds every weight
    with torch.device("meta"):  # no random init of weights that are about to be replaced
        detector = Detector(**kwargs)
    load_state(detector, state, source=source, strict=True, assign=True)
    return detector.to(device).eval()


def save_single_file(detector: Any, path: str | Path) -> Path:
    """Write `detector` as one `.safetensors` file with its config in the metadata, atomically."""
    from safetensors.torch import save

    from aidetect.atomic import atomic_write_bytes

    target = Path(path)
    if target.suffix != ".safetensors":
        raise WeightsError(f"{target}: a single-file detector must end in .safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in detector.state_dict().items()}
    metadata = {"format": "pt", SINGLE_FILE_CONFIG_KEY: json.dumps(detector.config)}
    atomic_write_bytes(target, save(state, metadata=metadata))
    return target


# --- presets -----------------------------------------------------------------------------------
def _load_preset(reference: str, *, device: str,
                 on_download: OnDownload | None = None) -> LoadedDetector:
    from safetensors.torch import load_file

    from aidetect.presets import get_preset

    preset = get_preset(reference)
    if not preset.head_path.is_file():
        raise WeightsError(f"preset {preset.name}: its head file {preset.head_path} is missing; "
                           "reinstall aidetect")
    digest = file_sha256(preset.head_path)
    if digest != preset.head_sha256:
        raise WeightsError(f"preset {preset.name}: {preset.head_path} does not match the "
                           f"registry (sha256 {digest[:12]}, expected {preset.head_sha256[:12]}); "
                           "reinstall aidetect")
    config = {"backbone": preset.backbone, "pretrained": preset.pretrained,
              "preprocess": preset.preprocess, "threshold": preset.threshold}
    detector = build_on_tag(config, load_file(str(preset.head_path)),
                            source=str(preset.head_path), reference=reference, device=device,
                            on_download=on_download)
    return LoadedDetector(detector, reference, "preset", str(preset.head_path), digest)


def _prepare_backbone(backbone: str, pretrained: str, reference: str,
                      on_download: OnDownload | None) -> bool:
    """Before open_clip fetches a tag's weights: offline (HF_HUB_OFFLINE, or the Hub's host
    unreachable) fail at once when they are not cached; online, tell `on_download` what is
    about to be downloaded. Returns True when the cached copy must be used without asking the
    Hub (its host cannot be reached), so that no request waits for its timeouts."""
    from aidetect.downloads import hub_reachable, is_cached, plan_download, tag_weights_files

    files = tag_weights_files(backbone, pretrained)
    if files is None:
        return False  # not a Hub-hosted tag: open_clip raises its own error, mapped by the caller
    repo_id, names = files
    what = f"the {backbone} '{pretrained}' weights"
    cached = any(is_cached(repo_id, name) for name in names)
    if hub_offline():
        if not cached:
            raise WeightsError(f"{reference}: {what} ({repo_id}) are not in the Hugging Face "
                               f"cache ({hub_cache_dir()}): {offline_fix()}")
        return False
    if cached:
        return not hub_reachable()
    download = plan_download(repo_id, names, reference=reference, what=what)
    if download is not None and on_download is not None:
        on_download(download)
    return False


@contextmanager
def _cache_only(enabled: bool) -> Iterator[None]:
    # huggingface_hub reads HF_HUB_OFFLINE's constant on each download call: set, a cached file
    # is returned without the request that would otherwise wait for its timeouts.
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    # open_clip logs download failures on the root logger before raising; the raised error
    # becomes our one-line message, so the log line would only repeat it.
    import logging

    def drop(record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname

    root = logging.getLogger()
    root.addFilter(drop)
    # huggingface_hub warns about each failed request as well, before open_clip raises.
    hub_logger = logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(drop)
        hub_logger.setLevel(hub_level)

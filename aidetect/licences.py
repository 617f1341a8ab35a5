"""Where a detector's weights come from, under which licence, and the files that travel along.

A detector folder records its provenance in config.json under `licenses`: one entry per thing
it was built from (the image tower's pretrained weights, a published head or checkpoint), with
the licence's name, the licence file that ships in the folder when the licence asks for its
notice to travel with the weights, a link and the citation. The model card renders the same
entries (`aidetect.card`), and `aidetect push` refuses a folder whose config or card names a
licence file that is not there (`missing_licence_files`).

What aidetect knows of each source, and claims nothing beyond it:
- OpenAI CLIP's weights: MIT (github.com/openai/CLIP).
- UnivFD's head: MIT, copyright 2025 Wisconsin AI and Vision Lab; the notice ships with it
  (the preset registry's licence file, dgs-net.md section 7).
- The DGS-Net authors' checkpoint: dgs-net.md states no licence for it, so none is claimed;
  the card sends the reader to the authors' release.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aidetect.errors import WeightsError, first_line

LICENSES_KEY = "licenses"  # in config.json (the Hub's metadata spells it `license` too)
CARD_NAME = "README.md"
OPENAI_CLIP_CITATION = (
    "Alec Radford, Jong Wook Kim, Chris Hallacy, et al. Learning Transferable Visual Models From "
    "Natural Language Supervision. ICML 2021. https://github.com/openai/CLIP"
)
DGS_NET_CITATION = (
    "Yan, Li, Wang, Wang, He, Fu. DGS-Net: Distillation-Guided Gradient Surgery for CLIP "
    "Fine-Tuning in AI-Generated Image Detection. arXiv 2511.13108 (ICML 2026). "
    "https://arxiv.org/abs/2511.13108"
)
# A licence file named in a card: LICENSE, LICENCE-x.txt, COPYING.md, ... as a name of its own
# (not the tail of a URL such as .../blob/main/LICENSE). Upper case only, so that prose ("MIT
# License") is not read as a file name.
_LICENCE_FILE = re.compile(r"(?<![\w/.\-])((?:LICEN[CS]E|COPYING)(?:[-_.][\w.\-]*\w)?)(?![\w/])")


@dataclass(frozen=True)
class Licence:
    """The licence of one thing a detector was built from."""

    subject: str  # what it covers, e.g. "image tower: OpenAI CLIP weights (ViT-L-14, 'openai')"
    name: str  # "MIT", or a sentence saying that it is not known
    file: str | None = None  # a licence file that must ship in the detector folder
    url: str | None = None
    citation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, entry: Any, source: str) -> Licence:
        fields = ("subject", "name", "file", "url", "citation")
        if (not isinstance(entry, dict) or not isinstance(entry.get("subject"), str)
                or not isinstance(entry.get("name"), str)
                or any(entry.get(k) is not None and not isinstance(entry[k], str)
                       for k in fields)):
            raise WeightsError(f"{source}: a '{LICENSES_KEY}' entry is not a licence record "
                               "(subject, name, file, url, citation)")
        file = entry.get("file")
        if file is not None and (Path(file).name != file or file in ("", ".", "..")):
            raise WeightsError(f"{source}: licence file {file!r} is not a file name in the "
                               "detector folder")
        return cls(**{k: entry.get(k) for k in fields})


def clip_licence(backbone: str, pretrained: str | None) -> Licence | None:
    """The licence of an image tower's pretrained weights (None for random weights)."""
    if not pretrained:
        return None
    if pretrained == "openai":
        return Licence(
            subject=f"image tower: OpenAI CLIP weights ({backbone}, open_clip tag 'openai')",
            name="MIT", url="https://github.com/openai/CLIP/blob/main/LICENSE",
            citation=OPENAI_CLIP_CITATION,
        )
    return Licence(
        subject=f"image tower: open_clip's '{pretrained}' weights for {backbone}",
        name="not recorded by aidetect; see where open_clip's pretrained registry takes them from",
    )


def preset_licences(preset: Any) -> list[Licence]:
    """A preset's licences: its backbone's weights and its head (`aidetect.presets.Preset`)."""
    head = Licence(subject=f"head of the {preset.name!r} preset ({preset.description})",
                   name=preset.license, file=preset.license_path.name, citation=preset.citation)
    return [x for x in (clip_licence(preset.backbone, preset.pretrained), head) if x]


DGS_NET_AUTHORS = Licence(
    subject="the DGS-Net authors' published checkpoint (LoRA-tuned image tower and head)",
    name="not stated in the sources aidetect follows; see the authors' release before "
         "redistributing these weights",
    citation=DGS_NET_CITATION,
)


def recorded_licences(config: dict[str, Any], source: str) -> list[Licence]:
    """The licences a saved config records (none for folders saved before they were recorded)."""
    entries = config.get(LICENSES_KEY) or []
    if not isinstance(entries, list):
        raise WeightsError(f"{source}: '{LICENSES_KEY}' is not a list of licence records")
    return [Licence.from_dict(entry, source) for entry in entries]


def licences_of_loaded(loaded: Any) -> tuple[list[Licence], Path | None]:
    """What a loaded detector (`aidetect.loading.LoadedDetector`) was built from, and the folder
    that holds its licence files: what a detector fine-tuned from it inherits."""
    from aidetect.config import CONFIG_NAME

    detector = loaded.detector
    if loaded.source == "preset":
        from aidetect.presets import get_preset

        preset = get_preset(loaded.reference)
        return preset_licences(preset), preset.license_path.parent
    if loaded.source == "file":
        from aidetect.loading import read_single_file_config

        licences, folder = recorded_licences(read_single_file_config(loaded.path),
                                             loaded.path), Path(loaded.path).parent
    else:
        folder = Path(loaded.path)
        try:
            config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise WeightsError(f"{folder / CONFIG_NAME}: {first_line(error)}") from None
        licences = recorded_licences(config, str(folder / CONFIG_NAME))
    if not licences:  # saved before licences were recorded: the base weights at least
        base = clip_licence(detector.backbone, detector.base_pretrained)
        licences = [base] if base else []
    if loaded.source == "hub":
        _fetch_licence_files(loaded, licences)
    return licences, folder


def _fetch_licence_files(loaded: Any, licences: list[Licence]) -> None:
    """Bring a Hub detector's licence files into its snapshot folder (loading fetched only its
    config and weights), from the same commit. One that cannot be had stays missing: the
    detector still trains, and `push` refuses the result until the file is put there."""
    from huggingface_hub import errors, hf_hub_download

    from aidetect.hub import hub_cache_dir, hub_offline
    from aidetect.loading import parse_reference
    from aidetect.publish import network_errors

    repo_id = parse_reference(loaded.reference).target
    for licence in licences:
        if licence.file and not (Path(loaded.path) / licence.file).is_file():
            try:
                hf_hub_download(repo_id, licence.file, revision=loaded.revision,
                                cache_dir=hub_cache_dir(), local_files_only=hub_offline())
            except (errors.HfHubHTTPError, errors.EntryNotFoundError,
                    errors.OfflineModeIsEnabled, OSError, *network_errors()):
                continue


def copy_licence_files(licences: list[Licence], source: Path | None, out: str | Path) -> list[str]:
    """Copy each licence file from `source` into `out`; returns the names not found there."""
    missing = []
    for licence in licences:
        if not licence.file:
            continue
        origin = (source / licence.file) if source is not None else None
        if origin is None or not origin.is_file():
            missing.append(licence.file)
        elif origin.resolve() != (Path(out) / licence.file).resolve():
            from aidetect.atomic import atomic_write_bytes

            atomic_write_bytes(Path(out) / licence.file, origin.read_bytes())
    return missing


# --- what a folder names ---------------------------------------------------------------------
def named_licence_files(folder: str | Path) -> list[str]:
    """Every licence file a detector folder names: in its config's `licenses`, its card's
    front matter (`license_link`, a relative path) or its card's text. Relative to `folder`."""
    from aidetect.config import CONFIG_NAME

    root = Path(folder)
    names: list[str] = []
    config_path = root / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError) as error:
        raise WeightsError(f"{config_path}: not valid JSON ({first_line(error)})") from None
    if isinstance(config, dict):
        names += [x.file for x in recorded_licences(config, str(config_path)) if x.file]
    card = root / CARD_NAME
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        link = _front_matter_licence_link(text)
        if link and "://" not in link:
            names.append(link)
        names += _LICENCE_FILE.findall(text)
    return list(dict.fromkeys(name.removeprefix("./") for name in names))


def missing_licence_files(folder: str | Path) -> list[str]:
    """The licence files a detector folder names but does not hold."""
    root = Path(folder)
    return [name for name in named_licence_files(root) if not (root / name).is_file()]


def _front_matter_licence_link(text: str) -> str | None:
    """`license_link` of a card's YAML front matter (the Hub's field), if any."""
    match = re.match(r"---\r?\n(.*?)\r?\n---\r?\n", text, re.DOTALL)
    if not match:
        return None
    import yaml  # a huggingface_hub dependency

    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None  # not ours to judge; the Hub reports a broken card itself
    link = meta.get("license_link") if isinstance(meta, dict) else None
    return link.strip() if isinstance(link, str) and link.strip() else None


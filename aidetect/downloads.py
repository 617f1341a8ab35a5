"""Before a download from the Hugging Face Hub: is it cached, can the Hub be reached, how big.

A first scan fetches CLIP ViT-L/14 (about 1.7 GB). Without a network, huggingface_hub and
open_clip would try each candidate file with its timeouts and retries (about 50 s) before
failing; `plan_download` instead probes the Hub's host once (a TCP connect, 3 s at most) and
fails at once with a one-line `WeightsError`. Online, it returns a `Download` (what, how big,
where to), which the loader hands to its caller's `on_download` so that the CLI can say what is
being fetched before the progress bars start. Nothing here prints.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aidetect.errors import WeightsError

PROBE_TIMEOUT = 3.0  # seconds for DNS and the TCP connect together
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class Download:
    """A file about to be downloaded into the Hugging Face cache."""

    repo_id: str
    filename: str
    size: int | None  # bytes, None when the Hub did not say
    cache: str  # the cache folder it goes to
    what: str  # in words, e.g. "the ViT-L-14-quickgelu 'openai' weights"

    def describe(self) -> str:
        """One line, e.g. "downloading the ... weights (timm/x/open_clip_model.safetensors,
        1.7 GB) into the Hugging Face cache (~/.cache/huggingface/hub)"."""
        from rich.filesize import decimal  # powers of 1000, as the Hub shows sizes

        size = f", {decimal(self.size)}" if self.size else ""
        return (f"downloading {self.what} ({self.repo_id}/{self.filename}{size}) into the "
                f"Hugging Face cache ({self.cache}); later runs use the cache")


OnDownload = Callable[[Download], None]


def hub_host() -> tuple[str, int]:
    """The Hub's host and port, from HF_ENDPOINT (https://huggingface.co by default)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the Hub's host opens within `timeout` seconds.

    DNS resolution has no timeout of its own, so the probe runs in a daemon thread that is
    abandoned when it takes too long. Behind a proxy the Hub is reached through it, so no
    direct probe is made and the answer is True.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    host, port = hub_host()
    answer: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=connect, name="aidetect-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def remote_size(repo_id: str, filename: str, revision: str | None = None) -> int | None:
    """The file's size in bytes as the Hub reports it; None if it does not say or is not asked
    (a missing file, a refusal: the download that follows reports those)."""
    from huggingface_hub import errors as hf
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        metadata = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision),
                                        timeout=PROBE_TIMEOUT * 2)
    except (hf.HfHubHTTPError, OSError, ValueError):
        return None
    return metadata.size


def is_cached(repo_id: str, filename: str, revision: str | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    from aidetect.hub import hub_cache_dir

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(),
                                   revision=revision)
    return isinstance(found, str)


def plan_download(repo_id: str, filenames: Sequence[str], *, reference: str, what: str,
                  revision: str | None = None) -> Download | None:
    """None when one of `filenames` (tried in order) is cached or HF_HUB_OFFLINE is set (the
    offline checks report that); otherwise the `Download` about to happen. Raises a
    `WeightsError` at once when the Hub's host cannot be reached."""
    from aidetect.hub import hub_cache_dir, hub_offline, offline_fix

    if hub_offline() or any(is_cached(repo_id, name, revision) for name in filenames):
        return None
    if not hub_reachable():
        host, _ = hub_host()
        raise WeightsError(
            f"{reference}: {what} ({repo_id}) must be downloaded from the Hugging Face Hub, "
            f"and {host} cannot be reached (no network?): {offline_fix()}"
        )
    for name in filenames:
        size = remote_size(repo_id, name, revision)
        if size is not None:
            return Download(repo_id, name, size, hub_cache_dir(), what)
    return Download(repo_id, filenames[-1], None, hub_cache_dir(), what)


def tag_weights_files(backbone: str, pretrained: str) -> tuple[str, list[str]] | None:
    """The Hub repository and the file names open_clip tries for a pretrained tag, in its order
    (a safetensors file first); None for a tag not hosted on the Hub."""
    import open_clip
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    tag_cfg = open_clip.get_pretrained_cfg(backbone, pretrained) or {}
    repo_id, filename = os.path.split(tag_cfg.get("hf_hub", ""))  # open_clip's own parsing
    if not repo_id:
        return None
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:  # open_clip looks for a safetensors twin first
        return repo_id, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]

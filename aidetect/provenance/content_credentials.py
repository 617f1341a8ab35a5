"""C2PA Content Credentials through c2pa-python (the Content Authenticity Initiative's SDK).

Offline by construction: the reader's settings refuse remote manifests and OCSP, so a scan
never touches the network. What is checked: the claim signature, the hashes binding the
manifest to the pixels, the certificate's profile and validity at signing time, and, when a
trust list is given, the signer's chain against it. Not checked: revocation (OCSP) and
manifests stored at a URL. No signer is trusted unless a trust list is given.
"""

from __future__ import annotations

import json
import os
from typing import Any

from aidetect.errors import first_line
from aidetect.provenance.evidence import DECLARED_AI, DECLARED_CAPTURE, excerpt
from aidetect.provenance.xmp import AI_SOURCE_TYPES, CAPTURE_SOURCE_TYPES, source_type_name

# Pillow's format name -> the MIME type c2pa-python reads; other formats carry no manifest.
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
              "TIFF": "image/tiff", "GIF": "image/gif"}
NOT_CHECKED_OFFLINE = ["certificate revocation (OCSP)", "remote manifests"]

_contexts: dict[tuple[int, str | None], Any] = {}  # per process (fork) and trust list


class ContentCredentialsError(ValueError):
    """A manifest store that cannot be read (corrupt, truncated, remote); one line."""


def read_content_credentials(path: str, fmt: str, *, trust_anchors: str | None = None,
                             full: bool = False) -> tuple[dict[str, Any] | None, Any]:
    """The C2PA evidence of the active manifest, or None when the file has no manifest store.

    Args:
        path: the file.
        fmt: its format as Pillow names it ("JPEG", "PNG", ...).
        trust_anchors: PEM root certificates whose signers are trusted; None trusts nobody.
        full: also return the whole manifest store (a dict), for `aidetect inspect`.

    Returns:
        (evidence or None, the manifest store when `full`, else None).

    Raises:
        ContentCredentialsError: a manifest store that is present but cannot be read.
    """
    from c2pa import C2paError, Reader

    mime = MIME_TYPES.get(fmt)
    if mime is None:
        return None, None
    try:
        with open(path, "rb") as stream:
            reader = Reader.try_create(mime, stream, context=_context(trust_anchors))
            if reader is None:
                return None, None
            with reader:
                store = json.loads(reader.json())
    except C2paError.RemoteManifest:
        raise ContentCredentialsError("C2PA manifest is stored at a URL; not fetched (offline)")\
            from None
    except (C2paError, ValueError, OSError) as error:
        raise ContentCredentialsError(f"unreadable C2PA manifest store ({first_line(error)})")\
            from None
    return evidence_from_store(store, trusted_list=trust_anchors is not None), (
        store if full else None)


def evidence_from_store(store: dict[str, Any], *, trusted_list: bool) -> dict[str, Any]:
    """The evidence of a manifest store as c2pa-python's `Reader.json()` gives it."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest")) or {}
    failures = _failure_codes(store)
    state = str(store.get("validation_state") or ("Invalid" if failures else "Valid")).lower()
    if state not in ("trusted", "valid", "invalid"):
        state = "invalid"
    source_types = _source_types(active)
    declares = None
    if state != "invalid" and AI_SOURCE_TYPES.intersection(source_types):
        declares = DECLARED_AI
    elif state == "trusted" and CAPTURE_SOURCE_TYPES.intersection(source_types):
        declares = DECLARED_CAPTURE
    checked = ["claim signature", "content hashes", "certificate profile and validity"]
    not_checked = list(NOT_CHECKED_OFFLINE)
    (checked if trusted_list else not_checked).append(
        "signer against the trust list" if trusted_list else "signer trust (no trust list given)")
    return {
        "source": "c2pa",
        "state": state,
        "codes": failures,
        "claim_generator": _claim_generator(active),
        "signer": _signer(active),
        "actions": _actions(active),
        "digital_source_types": source_types,
        "declares": declares,
        "checked": checked,
        "not_checked": not_checked,
    }


def check_trust_anchors(trust_anchors: str) -> str | None:
    """Why c2pa refuses this PEM trust list (one line), or None when it takes it."""
    from c2pa import C2paError

    try:
        _context(trust_anchors)
    except C2paError as error:
        return f"refused by c2pa ({first_line(error)})"
    return None


def _context(trust_anchors: str | None) -> Any:
    from c2pa import Context

    key = (os.getpid(), trust_anchors)
    if key not in _contexts:
        settings: dict[str, Any] = {"verify": {
            "verify_after_reading": True, "verify_trust": True,
            "remote_manifest_fetch": False, "ocsp_fetch": False,
        }}
        if trust_anchors is not None:
            settings["trust"] = {"trust_anchors": trust_anchors}  # replaces any built-in list
        _contexts[key] = Context.from_dict(settings)
    return _contexts[key]


def _failure_codes(store: dict[str, Any]) -> list[str]:
    results = store.get("validation_results")
    if isinstance(results, dict):
        entries = (results.get("activeManifest") or {}).get("failure") or []
    else:  # older readers: one flat list of failures
        entries = store.get("validation_status") or []
    return [str(e.get("code")) for e in entries if isinstance(e, dict)]


def _assertions(active: dict[str, Any], prefix: str) -> list[Any]:
    return [a.get("data") for a in active.get("assertions") or []
            if isinstance(a, dict) and str(a.get("label", "")).startswith(prefix)]


def _actions(active: dict[str, Any]) -> list[dict[str, str]]:
    actions = []
    for data in _assertions(active, "c2pa.actions"):
        for action in (data or {}).get("actions") or []:
            if isinstance(action, dict):
                entry = {"action": str(action.get("action"))}
                if action.get("digitalSourceType"):
                    entry["digitalSourceType"] = source_type_name(str(action["digitalSourceType"]))
                actions.append(entry)
    return actions


def _source_types(active: dict[str, Any]) -> list[str]:
    names = [a["digitalSourceType"] for a in _actions(active) if "digitalSourceType" in a]
    return list(dict.fromkeys(names))


def _claim_generator(active: dict[str, Any]) -> str | None:
    info = active.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        name = " ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k))
        return excerpt(name, 120) or None
    generator = active.get("claim_generator")
    return excerpt(str(generator), 120) if generator else None


def _signer(active: dict[str, Any]) -> str | None:
    info = active.get("signature_info") or {}
    names = [str(info[k]) for k in ("common_name", "issuer") if info.get(k)]
    if not names:
        return None
    return excerpt(names[0] + (f" (issued by {names[1]})" if len(names) > 1 else ""), 160)

"""Provenance: what a file declares about its origin, beside what the pixels suggest.

`read_provenance(path)` reads, in one pass over the file's metadata: C2PA Content Credentials
(`content_credentials`), IPTC DigitalSourceType in XMP (`xmp`), generator parameters in PNG
text chunks, EXIF UserComment and JPEG comments (`generators`), and EXIF Software, Make and
Model as facts. It never prints and never raises for a bad file: what cannot be read becomes
`Provenance.error`, and the rest is still reported. The verdict rule is in `evidence`.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidetect.errors import first_line
from aidetect.provenance.content_credentials import (
    ContentCredentialsError,
    read_content_credentials,
)
from aidetect.provenance.evidence import (
    DECLARED_AI,
    DECLARED_CAPTURE,
    Provenance,
    describe,
    excerpt,
)
from aidetect.provenance.generators import read_parameters_text, read_png_text
from aidetect.provenance.xmp import XmpError, read_xmp

__all__ = ["DECLARED_AI", "DECLARED_CAPTURE", "Provenance", "ProvenanceSettings", "describe",
           "load_trust_anchors", "read_provenance"]

MAX_TEXT_BYTES = 1 << 20  # per text chunk or comment: a workflow is tens of KiB, a bomb is not
EXIF_FACTS = {0x0131: "Software", 0x010F: "Make", 0x0110: "Model"}  # IFD0 tags
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286

# What Pillow raises on damaged headers, chunks and EXIF (see aidetect.data.open_image).
_CONTAINER_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError,
                     TypeError, MemoryError, RecursionError, struct.error, zlib.error)


@dataclass(frozen=True)
class ProvenanceSettings:
    """How to read provenance; picklable, so decoding workers get it.

    Attributes:
        trust_anchors: PEM root certificates whose C2PA signers are trusted (the text, not a
            path); None trusts no signer, so no file can declare itself a capture.
    """

    trust_anchors: str | None = None


def load_trust_anchors(path: str | Path) -> str:
    """The PEM text of a trust list file, checked once (so that a bad list is one usage error,
    not an error on every file).

    Raises:
        UsageError: the file cannot be read, holds no certificate, or c2pa refuses it.
    """
    from aidetect.errors import UsageError
    from aidetect.provenance.content_credentials import check_trust_anchors

    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or first_line(error)
        raise UsageError(f"--trust-anchors {str(path)!r}: cannot read it ({reason})") from None
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text,
                        re.DOTALL)
    if not blocks:
        raise UsageError(f"--trust-anchors {str(path)!r}: no PEM certificate in it")
    for number, block in enumerate(blocks, 1):
        # c2pa takes a damaged block silently and then trusts nobody: refuse it here instead.
        try:
            der = base64.b64decode("".join(block.split()), validate=True)
        except binascii.Error:
            der = b""
        if not _is_der_sequence(der):
            raise UsageError(f"--trust-anchors {str(path)!r}: certificate {number} is not a "
                             "valid PEM certificate")
    problem = check_trust_anchors(text)
    if problem is not None:
        raise UsageError(f"--trust-anchors {str(path)!r}: {problem}")
    return text


def _is_der_sequence(der: bytes) -> bool:
    """Whether `der` is one whole DER SEQUENCE (what an X.509 certificate is) of its stated
    length: catches truncated, padded and mangled PEM blocks."""
    if len(der) < 64 or der[0] != 0x30 or not 0x81 <= der[1] <= 0x83:
        return False
    octets = der[1] - 0x80
    return 2 + octets + int.from_bytes(der[2 : 2 + octets], "big") == len(der)


def read_provenance(path: str | Path, settings: ProvenanceSettings | None = None, *,
                    full: bool = False) -> Provenance:
    """Every provenance statement in `path`'s metadata. Never raises for a bad file.

    Args:
        path: the image file.
        settings: the trust list (default: none).
        full: keep the whole C2PA manifest store in `Provenance.manifest_store`.
    """
    from PIL import Image

    from aidetect.data import ALLOWED_FORMATS

    settings = settings or ProvenanceSettings()
    provenance = Provenance()
    errors: list[str] = []
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # headers only: the pixel limit is the decoder's business
    try:
        # Pillow warns, rather than raises, on damaged EXIF and TIFF tags: recorded (the
        # engine never prints) and reported as the file's provenance error.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Image.open(path, formats=ALLOWED_FORMATS) as image:  # the scan's decoders
                fmt = str(image.format)
                info = dict(image.info)
                provenance.evidence += _exif(image, errors)
        errors += [f"damaged metadata ({' '.join(str(w.message).split())})" for w in caught
                   if not issubclass(w.category, DeprecationWarning)][:1]
    except _CONTAINER_ERRORS as error:
        provenance.error = f"metadata unreadable ({first_line(error)})"
        return provenance
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit

    try:
        found, store = read_content_credentials(str(path), fmt,
                                                trust_anchors=settings.trust_anchors, full=full)
        if found is not None:
            provenance.evidence.insert(0, found)
        provenance.manifest_store = store
    except ContentCredentialsError as error:
        errors.append(str(error))
    if info.get("xmp"):
        try:
            provenance.evidence += read_xmp(info["xmp"])
        except XmpError as error:
            errors.append(str(error))
    if fmt == "PNG":
        chunks = {k: v for k, v in info.items()
                  if isinstance(k, str) and isinstance(v, str) and k != "XML:com.adobe.xmp"}
        provenance.evidence += read_png_text(_bounded(chunks, "PNG text chunk", errors))
    comment = info.get("comment")
    if isinstance(comment, bytes) and comment:
        text = _bounded({"comment": _decode(comment)}, "JPEG comment", errors).get("comment")
        if text:
            provenance.evidence += read_parameters_text(text, source="comment", key="COM")
    provenance.error = errors[0] if errors else None
    return provenance


def _exif(image: Any, errors: list[str]) -> list[dict[str, Any]]:
    """EXIF Software, Make and Model as facts; A1111-style parameters in UserComment."""
    if image.format == "PNG" and "exif" not in image.info:
        return []  # Pillow would decode every pixel to look for an eXIf chunk after them
    try:
        exif = image.getexif()
        facts = [(name, exif.get(tag)) for tag, name in EXIF_FACTS.items()]
        comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT) if _EXIF_IFD in exif else None
    except _CONTAINER_ERRORS as error:
        errors.append(f"EXIF unreadable ({first_line(error)})")
        return []
    found = [{"source": "exif", "key": name, "value": excerpt(_decode(value), 120),
              "declares": None}
             for name, value in facts if isinstance(value, (str, bytes)) and _decode(value)]
    if isinstance(comment, (bytes, str)):
        text = _bounded({"UserComment": _user_comment(comment)}, "EXIF UserComment", errors)
        if text.get("UserComment"):
            found += read_parameters_text(text["UserComment"], source="exif", key="UserComment")
    return found


def _bounded(texts: dict[str, str], what: str, errors: list[str]) -> dict[str, str]:
    """`texts` without those over MAX_TEXT_BYTES, each of which is reported as an error."""
    kept = {}
    for key, text in texts.items():
        if len(text) > MAX_TEXT_BYTES:
            errors.append(f"{what} {excerpt(key, 40)!r} of {len(text)} characters is over the "
                          f"{MAX_TEXT_BYTES >> 20} MiB limit; not parsed")
        else:
            kept[key] = text
    return kept


def _decode(value: str | bytes) -> str:
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return text.strip("\x00").strip()


def _user_comment(value: str | bytes) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text (EXIF 2.32, 4.6.5)."""
    if isinstance(value, str):
        return value
    prefix, body = value[:8], value[8:]
    if prefix.startswith(b"UNICODE"):
        # piexif (what AUTOMATIC1111 uses) writes UTF-16 big-endian, others little-endian:
        # the right one reads as mostly ASCII, the wrong one as CJK.
        texts = [body.decode(codec, "replace") for codec in ("utf-16-be", "utf-16-le")]
        return _decode(max(texts, key=_ascii_share))
    return _decode(body if prefix[:5] in (b"ASCII", b"\x00" * 5, b"JIS\x00\x00") else value)


def _ascii_share(text: str) -> float:
    return sum(c.isascii() for c in text) / max(1, len(text))

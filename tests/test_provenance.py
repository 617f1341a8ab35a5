"""aidetect.provenance: each source read as documented, the asymmetric verdict, offline C2PA
validation with and without a trust list, and metadata bombs that become errors, never
exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest
from provenance_files import (
    FRONT_ENDS,
    billion_laughs,
    corrupt_c2pa,
    deeply_nested_xmp,
    image_bytes,
    jpeg_with_corrupt_exif,
    jpeg_with_exif,
    make_chain,
    png_with_text,
    sign,
    user_comment,
    with_xmp,
    write,
    xmp_packet,
)

from aidetect.errors import UsageError
from aidetect.provenance import ProvenanceSettings, load_trust_anchors, read_provenance
from aidetect.provenance.xmp import AI_SOURCE_TYPES, CAPTURE_SOURCE_TYPES


@pytest.fixture(scope="module")
def trusted():
    return make_chain("trusted")


@pytest.fixture(scope="module")
def stranger():
    return make_chain("stranger")


def trust(chain) -> ProvenanceSettings:
    return ProvenanceSettings(trust_anchors=chain.root_pem.decode())


def read(tmp_path: Path, name: str, data: bytes, settings=None):
    return read_provenance(write(tmp_path, name, data), settings)


# --- nothing found is never evidence -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_a_file_without_metadata_declares_nothing_and_has_no_error(tmp_path, fmt) -> None:
    provenance = read(tmp_path, f"plain.{fmt.lower()}", image_bytes(fmt))
    assert provenance.to_dict() == {"declared": None, "evidence": [], "error": None}


# --- C2PA --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_c2pa_ai_declaration_is_believed_trusted_or_not(tmp_path, trusted, fmt) -> None:
    signed = sign(image_bytes(fmt), fmt, trusted, "trainedAlgorithmicMedia")
    for settings, state in ((None, "valid"), (trust(trusted), "trusted")):
        provenance = read(tmp_path, f"ai.{fmt.lower()}", signed, settings)
        assert provenance.declared == "ai-generated" and provenance.error is None
        (c2pa,) = provenance.evidence
        assert c2pa["source"] == "c2pa" and c2pa["state"] == state
        assert c2pa["digital_source_types"] == ["trainedAlgorithmicMedia"]
        assert c2pa["actions"] == [{"action": "c2pa.created",
                                    "digitalSourceType": "trainedAlgorithmicMedia"}]
        assert c2pa["claim_generator"] == "aidetect-tests 1.0"
        assert c2pa["signer"].startswith("trusted signer")
        assert "certificate revocation (OCSP)" in c2pa["not_checked"]
        assert "remote manifests" in c2pa["not_checked"]
        if state == "valid":
            assert c2pa["codes"] == ["signingCredential.untrusted"]
            assert "signer trust (no trust list given)" in c2pa["not_checked"]
        else:
            assert c2pa["codes"] == [] and "signer against the trust list" in c2pa["checked"]


def test_a_capture_counts_only_from_a_trusted_signer(tmp_path, trusted, stranger) -> None:
    own = sign(image_bytes("JPEG"), "JPEG", trusted, "digitalCapture")
    other = sign(image_bytes("JPEG"), "JPEG", stranger, "digitalCapture")
    assert read(tmp_path, "own.jpg", own, trust(trusted)).declared == "capture"
    # No trust list: nobody is trusted, so nothing can claim to be a capture.
    untrusted = read(tmp_path, "own.jpg", own)
    assert untrusted.declared is None and untrusted.evidence[0]["state"] == "valid"
    assert untrusted.evidence[0]["declares"] is None
    # Signed by a chain outside the trust list.
    provenance = read(tmp_path, "other.jpg", other, trust(trusted))
    assert provenance.declared is None
    assert provenance.evidence[0]["state"] == "valid"
    assert "signingCredential.untrusted" in provenance.evidence[0]["codes"]


def test_a_manifest_tampered_after_signing_is_invalid_and_declares_nothing(
        tmp_path, trusted) -> None:
    original = image_bytes("JPEG", comment=b"original pixels here")
    for source_type in ("trainedAlgorithmicMedia", "digitalCapture"):
        signed = sign(original, "JPEG", trusted, source_type)
        tampered = signed.replace(b"original pixels here", b"tampered pixels here")
        assert tampered != signed
        provenance = read(tmp_path, "tampered.jpg", tampered, trust(trusted))
        (c2pa,) = provenance.evidence
        assert c2pa["state"] == "invalid" and c2pa["declares"] is None
        assert "assertion.dataHash.mismatch" in c2pa["codes"]
        assert provenance.declared is None and provenance.error is None


def test_a_corrupt_manifest_store_is_an_error_and_other_sources_still_count(
        tmp_path, trusted) -> None:
    signed = sign(with_xmp("JPEG", xmp_packet("trainedAlgorithmicMedia")), "JPEG", trusted,
                  "trainedAlgorithmicMedia")
    provenance = read(tmp_path, "corrupt.jpg", corrupt_c2pa(signed))
    assert provenance.error.startswith("unreadable C2PA manifest store")
    assert [e["source"] for e in provenance.evidence] == ["xmp"]
    assert provenance.declared == "ai-generated"


def test_trust_anchors_are_checked_once(tmp_path, trusted) -> None:
    good = write(tmp_path, "roots.pem", trusted.root_pem)
    assert load_trust_anchors(good) == trusted.root_pem.decode()
    with pytest.raises(UsageError, match="no PEM certificate"):
        load_trust_anchors(write(tmp_path, "empty.pem", b"nothing here"))
    with pytest.raises(UsageError, match="cannot read it"):
        load_trust_anchors(tmp_path / "missing.pem")
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(UsageError, match="certificate 2 is not a valid PEM certificate"):
        load_trust_anchors(write(tmp_path, "broken.pem", trusted.root_pem + broken))
    # A block cut short (c2pa would take it silently, then trust nobody).
    lines = trusted.root_pem.splitlines()
    cut = b"\n".join(lines[:3] + lines[-1:]) + b"\n"
    with pytest.raises(UsageError, match="certificate 1 is not a valid PEM certificate"):
        load_trust_anchors(write(tmp_path, "cut.pem", cut))


# --- XMP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source_type", sorted(AI_SOURCE_TYPES | CAPTURE_SOURCE_TYPES
                                               | {"compositeSynthetic", "digitalArt"}))
def test_each_iptc_source_type_is_reported_by_name(tmp_path, source_type) -> None:
    provenance = read(tmp_path, "x.jpg", with_xmp("JPEG", xmp_packet(source_type)))
    (item,) = provenance.evidence
    assert item["source"] == "xmp" and item["value"] == source_type
    assert item["uri"].endswith("/digitalsourcetype/" + source_type)
    # AI from XMP is believed; a capture in XMP is a fact only (anyone can write it).
    expected = "ai-generated" if source_type in AI_SOURCE_TYPES else None
    assert item["declares"] == expected and provenance.declared == expected


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("as_element", [False, True])
def test_xmp_is_found_in_every_container(tmp_path, fmt, as_element) -> None:
    packet = xmp_packet("trainedAlgorithmicMedia", creator_tool="Firefly", as_element=as_element)
    provenance = read(tmp_path, f"x.{fmt.lower()}", with_xmp(fmt, packet))
    assert provenance.declared == "ai-generated" and provenance.error is None
    found = {(e["key"], e["value"]) for e in provenance.evidence}
    assert found == {("Iptc4xmpExt:DigitalSourceType", "trainedAlgorithmicMedia"),
                     ("xmp:CreatorTool", "Firefly")}


@pytest.mark.parametrize("packet, message", [
    (billion_laughs(), "XMP refused"),
    (b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://example.com/x.dtd"><x/>', "XMP refused"),
    (b"<x:xmpmeta><unclosed>", "malformed XMP"),
    (b"<x>" + b"a" * (2 << 20) + b"</x>", "over the 1 MiB limit"),
    (deeply_nested_xmp(), None),  # parsed within the size bound: no crash, nothing found
])
def test_malicious_xmp_is_an_error_never_an_exception(tmp_path, packet, message) -> None:
    provenance = read(tmp_path, "bomb.png", with_xmp("PNG", packet))
    assert provenance.declared is None and provenance.evidence == []
    if message is None:
        assert provenance.error is None
    else:
        assert message in provenance.error and "\n" not in provenance.error


# --- generator parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_each_front_end_is_named_with_a_bounded_excerpt(tmp_path, front_end) -> None:
    chunks, tool = FRONT_ENDS[front_end]
    provenance = read(tmp_path, "gen.png", png_with_text(chunks))
    generated = [e for e in provenance.evidence if e.get("tool")]
    assert [e["tool"] for e in generated] == [tool]
    assert generated[0]["source"] == "png-text" and generated[0]["declares"] == "ai-generated"
    assert 0 < len(generated[0]["excerpt"]) <= 200
    assert provenance.declared == "ai-generated" and provenance.error is None


def test_comfyui_gets_a_summary_not_the_workflow(tmp_path) -> None:
    provenance = read(tmp_path, "c.png", png_with_text(FRONT_ENDS["comfyui"][0]))
    assert provenance.evidence[0]["excerpt"] == (
        "3 nodes; checkpoint sd_xl_base_1.0.safetensors; prompt: a red fox in the snow")


def test_text_that_only_looks_like_parameters_declares_nothing(tmp_path) -> None:
    chunks = {"parameters": "just a caption", "prompt": "not json", "Description": "a photo",
              "Comment": "{}"}
    assert read(tmp_path, "p.png", png_with_text(chunks)).to_dict() == {
        "declared": None, "evidence": [], "error": None}


def test_a1111_parameters_in_exif_user_comment_and_jpeg_comment(tmp_path) -> None:
    text = FRONT_ENDS["a1111"][0]["parameters"]
    exif = read(tmp_path, "e.jpg", jpeg_with_exif(user_comment=user_comment(text)))
    assert [(e["source"], e["key"], e["tool"]) for e in exif.evidence] == [
        ("exif", "UserComment", "AUTOMATIC1111")]
    assert exif.evidence[0]["excerpt"].startswith("a lighthouse at dusk")
    comment = read(tmp_path, "c.jpg", image_bytes("JPEG", comment=text.encode()))
    assert [(e["source"], e["tool"]) for e in comment.evidence] == [("comment", "AUTOMATIC1111")]
    assert exif.declared == comment.declared == "ai-generated"


def test_exif_software_make_and_model_are_facts_not_declarations(tmp_path) -> None:
    data = jpeg_with_exif(Software="GIMP 2.10.36", Make="Canon", Model="Canon EOS R5")
    provenance = read(tmp_path, "e.jpg", data)
    assert {(e["source"], e["key"], e["value"], e["declares"]) for e in provenance.evidence} == {
        ("exif", "Software", "GIMP 2.10.36", None), ("exif", "Make", "Canon", None),
        ("exif", "Model", "Canon EOS R5", None)}
    assert provenance.declared is None


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_software_in_other_containers(tmp_path, fmt) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0131] = "Photoshop 25.0"
    data = image_bytes(fmt, exif=exif.tobytes() if fmt != "TIFF" else exif)
    provenance = read(tmp_path, f"e.{fmt.lower()}", data)
    assert [(e["source"], e["key"], e["value"]) for e in provenance.evidence] == [
        ("exif", "Software", "Photoshop 25.0")]


def test_corrupt_exif_is_an_error(tmp_path) -> None:
    provenance = read(tmp_path, "bad.jpg", jpeg_with_corrupt_exif())
    assert provenance.error.startswith("damaged metadata (Corrupt EXIF data.")
    assert provenance.declared is None and "\n" not in provenance.error


def test_a_huge_text_chunk_is_an_error_and_the_rest_is_read(tmp_path) -> None:
    chunks = {"parameters": FRONT_ENDS["a1111"][0]["parameters"] + "x" * (2 << 20),
              "Software": "Paint"}
    provenance = read(tmp_path, "huge.png", png_with_text(chunks))
    assert "'parameters'" in provenance.error and "over the 1 MiB limit" in provenance.error
    assert [(e["key"], e["value"]) for e in provenance.evidence] == [("Software", "Paint")]


def test_deeply_nested_json_in_a_chunk_is_not_a_crash(tmp_path) -> None:
    provenance = read(tmp_path, "deep.png", png_with_text({"prompt": "[" * 200_000}))
    assert provenance.to_dict() == {"declared": None, "evidence": [], "error": None}


def test_unreadable_files_give_an_error_not_an_exception(tmp_path) -> None:
    assert "metadata unreadable" in read_provenance(tmp_path / "missing.png").error
    assert "metadata unreadable" in read(tmp_path, "text.jpg", b"not an image").error
    jpeg = image_bytes("JPEG")
    truncated = read(tmp_path, "half.jpg", jpeg[: len(jpeg) // 3])
    assert truncated.declared is None  # the header is enough: no metadata, no error

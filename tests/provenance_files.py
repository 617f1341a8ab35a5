"""Builders of image files that carry provenance, for the provenance tests: C2PA manifests
signed with a throwaway certificate chain (made here with `cryptography`), XMP with an IPTC
DigitalSourceType, generator parameters as each front-end writes them, EXIF, and metadata
bombs. Nothing is downloaded."""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass
from pathlib import Path

from conftest import random_image
from PIL import Image, PngImagePlugin

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


# --- a throwaway certificate chain -------------------------------------------------------------


@dataclass
class Chain:
    root_pem: bytes  # the trust anchor
    signer_pem: bytes  # end-entity certificate, then the root: what c2pa embeds
    key_pem: bytes


def make_chain(name: str) -> Chain:
    """A root CA and an end-entity signing certificate with the profile C2PA requires
    (EC P-256, digitalSignature, an extended key usage, not a CA, issued by the root)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def subject(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name} org")])

    def certificate(key, subject_name, issuer_key, issuer_name, *, ca: bool):
        usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                               "data_encipherment", "key_agreement", "key_cert_sign",
                               "crl_sign", "encipher_only", "decipher_only"), False)
        usage.update(key_cert_sign=ca, crl_sign=ca, digital_signature=not ca)
        builder = (
            x509.CertificateBuilder().subject_name(subject_name).issuer_name(issuer_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**usage), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), critical=False)
        )
        if not ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    root = certificate(root_key, subject(f"{name} root"), root_key, subject(f"{name} root"),
                       ca=True)
    signer = certificate(signer_key, subject(f"{name} signer"), root_key,
                         subject(f"{name} root"), ca=False)
    pem = serialization.Encoding.PEM
    return Chain(
        root_pem=root.public_bytes(pem),
        signer_pem=signer.public_bytes(pem) + root.public_bytes(pem),
        key_pem=signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
    )


def sign(image_bytes: bytes, fmt: str, chain: Chain, source_type: str) -> bytes:
    """`image_bytes` with a C2PA manifest: one c2pa.created action of `source_type`."""
    import c2pa

    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(
        c2pa.C2paSigningAlg.ES256, chain.signer_pem, chain.key_pem, None))
    manifest = {
        "claim_generator_info": [{"name": "aidetect-tests", "version": "1.0"}],
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]}}],
    }
    context = c2pa.Context.from_dict({"verify": {"verify_after_sign": False},
                                      "builder": {"thumbnail": {"enabled": False}}})
    out = io.BytesIO()
    with c2pa.Builder(manifest, context=context) as builder:
        builder.sign(signer, MIME[fmt], io.BytesIO(image_bytes), out)
    return out.getvalue()


# --- plain images with metadata ------------------------------------------------------------------


def image_bytes(fmt: str, *, seed: int = 0, **save) -> bytes:
    buffer = io.BytesIO()
    random_image(64, 48, seed=seed).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def xmp_packet(source_type: str | None = None, *, creator_tool: str | None = None,
               as_element: bool = False) -> bytes:
    """An XMP packet as Adobe writes it; the source type as an attribute or an element."""
    attrs, children = "", ""
    if source_type is not None:
        if as_element:
            children += (f"<Iptc4xmpExt:DigitalSourceType>{IPTC}{source_type}"
                         "</Iptc4xmpExt:DigitalSourceType>")
        else:
            attrs += f' Iptc4xmpExt:DigitalSourceType="{IPTC}{source_type}"'
    if creator_tool is not None:
        attrs += f' xmp:CreatorTool="{creator_tool}"'
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:xmp="http://ns.adobe.com/xap/1.0/"{attrs}>{children}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def with_xmp(fmt: str, packet: bytes, *, seed: int = 0) -> bytes:
    """An image of `fmt` (JPEG, PNG, WEBP or TIFF) carrying `packet` where that format keeps
    XMP: APP1, an iTXt chunk, the XMP chunk, tag 700."""
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8"))
        return image_bytes("PNG", seed=seed, pnginfo=info)
    if fmt == "TIFF":
        return image_bytes("TIFF", seed=seed, tiffinfo={700: packet})
    return image_bytes(fmt, seed=seed, xmp=packet)


def png_with_text(chunks: dict[str, str], *, seed: int = 0, compress: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text, zip=compress)
    return image_bytes("PNG", seed=seed, pnginfo=info)


def jpeg_with_exif(*, seed: int = 0, user_comment: bytes | None = None, **ifd0: str) -> bytes:
    """A JPEG with EXIF IFD0 tags by name (Software, Make, Model) and a UserComment."""
    tags = {"Software": 0x0131, "Make": 0x010F, "Model": 0x0110}
    exif = Image.Exif()
    for name, value in ifd0.items():
        exif[tags[name]] = value
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = user_comment
    return image_bytes("JPEG", seed=seed, exif=exif.tobytes())


def jpeg_with_corrupt_exif(*, seed: int = 0) -> bytes:
    """A JPEG whose EXIF IFD claims 65535 entries and holds a few bytes."""
    raw = image_bytes("JPEG", seed=seed)
    segment = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\xff\xff" + b"\x01" * 40
    return raw[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + raw[2:]


def user_comment(text: str) -> bytes:
    """EXIF UserComment as piexif writes it for AUTOMATIC1111: UNICODE, then UTF-16 BE."""
    return b"UNICODE\x00" + text.encode("utf-16-be")


# --- generator parameters as each front-end writes them ------------------------------------------

A1111_PARAMETERS = (
    "a lighthouse at dusk, oil painting\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
    "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)
FRONT_ENDS: dict[str, tuple[dict[str, str], str]] = {  # name: (PNG text chunks, tool reported)
    "a1111": ({"parameters": A1111_PARAMETERS}, "AUTOMATIC1111"),
    "forge": ({"parameters": A1111_PARAMETERS.replace("v1.10.1", "f2.0.1v1.10.1-previous-1")},
              "Forge"),
    "comfyui": ({
        "prompt": '{"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}}, '
                  '"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": '
                  '"sd_xl_base_1.0.safetensors"}}, "6": {"class_type": "CLIPTextEncode", '
                  '"inputs": {"text": "a red fox in the snow", "clip": ["4", 1]}}}',
        "workflow": '{"last_node_id": 9, "nodes": [{"id": 6, "type": "CLIPTextEncode", '
                    '"widgets_values": ["a red fox in the snow"]}]}',
    }, "ComfyUI"),
    "comfyui-workflow-only": ({
        "workflow": '{"last_node_id": 9, "nodes": [{"id": 6, "type": "CLIPTextEncode", '
                    '"widgets_values": ["a red fox in the snow"]}]}',
    }, "ComfyUI"),
    "invokeai": ({"invokeai_metadata": '{"generation_mode": "txt2img", "positive_prompt": '
                  '"a cabin in the woods", "model": {"name": "stable-diffusion-xl-base"}}'},
                 "InvokeAI"),
    "invokeai-2": ({"sd-metadata": '{"model": "stable diffusion", "image": {"prompt": '
                    '"a cabin in the woods", "steps": 50}}'}, "InvokeAI"),
    "novelai": ({"Software": "NovelAI", "Source": "NovelAI Diffusion V4 4F49EC75",
                 "Description": "1girl, a cabin in the woods", "Title": "NovelAI generated image",
                 "Comment": '{"prompt": "1girl, a cabin in the woods", "steps": 28}'},
                "NovelAI"),
    "fooocus": ({"parameters": '{"Prompt": "a cabin in the woods", "Styles": "[]", '
                 '"Version": "Fooocus v2.5.5"}', "fooocus_scheme": "fooocus"}, "Fooocus"),
    "midjourney": ({"Description": "a cabin in the woods --ar 3:2 --v 6.1 Job ID: "
                    "1b7d7a2e-53c1-4f64-9e8b-0123456789ab", "Author": "someone"}, "Midjourney"),
}


# --- metadata bombs ------------------------------------------------------------------------------


def billion_laughs() -> bytes:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    return (f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY l0 "lol">{entities}]>'
            "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">&l9;</x:xmpmeta>").encode()


def deeply_nested_xmp(depth: int = 50_000) -> bytes:
    return b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b"<a>" * depth + b"</a>" * depth + (
        b"</x:xmpmeta>")


def corrupt_c2pa(signed: bytes) -> bytes:
    """`signed` with the inside of its JUMBF manifest store zeroed."""
    start = signed.find(b"jumb")
    assert start > 0, "no JUMBF box to corrupt"
    data = bytearray(signed)
    data[start + 20 : start + 300] = bytes(280)
    return bytes(data)


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path

"""`aidetect inspect`: the full provenance of a few files, as text and as JSON."""

from __future__ import annotations

import json

import pytest
from provenance_files import (
    FRONT_ENDS,
    billion_laughs,
    image_bytes,
    make_chain,
    png_with_text,
    sign,
    with_xmp,
    write,
)

from aidetect.cli.app import main


def inspect(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def files(tmp_path):
    chain = make_chain("inspect")
    signed = write(tmp_path, "signed.jpg", sign(image_bytes("JPEG"), "JPEG", chain,
                                                "digitalCapture"))
    generated = write(tmp_path, "gen.png", png_with_text(FRONT_ENDS["comfyui"][0]))
    roots = write(tmp_path, "roots.pem", chain.root_pem)
    return signed, generated, roots


def test_text_names_each_source_and_what_c2pa_checked(capsys, files) -> None:
    signed, generated, roots = files
    code, out, err = inspect(capsys, str(signed), str(generated), "--trust-anchors", str(roots))
    assert code == 0 and err == ""
    first, second = out.split("\n\n")
    assert first.splitlines()[:2] == [str(signed), "  declares capture (C2PA trusted)"]
    assert "      action c2pa.created (digitalCapture)" in first
    assert "not checked: certificate revocation (OCSP), remote manifests" in first
    assert "C2PA manifest store: 1 manifest(s)" in first and "c2pa.actions" in first
    assert second.splitlines()[:3] == [
        str(generated), "  declares ai-generated (PNG text: ComfyUI)",
        "  - png-text prompt: ComfyUI: 3 nodes; checkpoint sd_xl_base_1.0.safetensors; "
        "prompt: a red fox in the snow"]


def test_json_has_the_whole_manifest_store(capsys, files) -> None:
    signed, generated, _ = files
    code, out, _ = inspect(capsys, str(signed), str(generated), "--json")
    records = json.loads(out)
    assert [r["path"] for r in records] == [str(signed), str(generated)]
    store = records[0]["c2pa_manifest_store"]
    active = store["manifests"][store["active_manifest"]]
    assert active["signature_info"]["common_name"] == "inspect signer"
    assert records[0]["declared"] is None  # no trust list: the capture claim counts for nothing
    assert records[0]["evidence"][0]["state"] == "valid"
    assert records[1]["c2pa_manifest_store"] is None and records[1]["declared"] == "ai-generated"
    assert code == 0


def test_unreadable_metadata_exits_3_with_the_error(capsys, tmp_path) -> None:
    bomb = write(tmp_path, "bomb.png", with_xmp("PNG", billion_laughs()))
    code, out, _ = inspect(capsys, str(bomb))
    assert code == 3
    assert "  error: XMP refused: DTDForbidden" in out
    missing = tmp_path / "missing.png"  # as scan: a path that is not there is a usage error
    code, out, err = inspect(capsys, str(bomb), str(missing))
    assert code == 2 and out == "" and err == f"aidetect: error: {missing}: no such file\n"
    code, _, err = inspect(capsys, str(tmp_path))
    assert code == 2 and err.endswith("is a folder: inspect takes files\n")
    code, _, err = inspect(capsys, str(bomb), "--trust-anchors", str(tmp_path / "none.pem"))
    assert code == 2 and err.startswith("aidetect: error: --trust-anchors")

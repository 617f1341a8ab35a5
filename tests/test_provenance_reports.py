"""Provenance through `aidetect scan`: every report format shows what each file declares and
where, metadata bombs become provenance errors with the pixel score intact, and
--fail-on-declared-ai, --trust-anchors and --no-provenance do what they say."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import cli_helpers
import jsonschema
import pytest
from provenance_files import (
    FRONT_ENDS,
    billion_laughs,
    corrupt_c2pa,
    image_bytes,
    jpeg_with_corrupt_exif,
    jpeg_with_exif,
    make_chain,
    png_with_text,
    sign,
    with_xmp,
    write,
    xmp_packet,
)

from aidetect.cli.app import main
from aidetect.report import report_schema

# name: (declared without a trust list, declared with it, the sources declaring it)
DECLARING = {
    "c2pa-ai.jpg": ("ai-generated", "ai-generated", ["c2pa"]),
    "c2pa-capture.jpg": (None, "capture", ["c2pa"]),
    "c2pa-stranger.jpg": (None, None, []),
    "c2pa-tampered.jpg": (None, None, []),
    "xmp-ai.webp": ("ai-generated", "ai-generated", ["xmp"]),
    "a1111.png": ("ai-generated", "ai-generated", ["png-text"]),
    "gimp.jpg": (None, None, []),
    "plain.png": (None, None, []),
}
BOMBS = {  # name: what its provenance error says
    "c2pa-corrupt.jpg": "unreadable C2PA manifest store",
    "huge-text.png": "over the 1 MiB limit",
    "laughs.png": "XMP refused",
    "bad-exif.jpg": "Corrupt EXIF data",
}


@pytest.fixture(scope="module")
def chains():
    return make_chain("trusted"), make_chain("stranger")


@pytest.fixture
def folder(tmp_path: Path, chains, monkeypatch) -> Path:
    trusted, stranger = chains
    monkeypatch.chdir(tmp_path)  # short relative paths: the table never folds them
    files = Path("files")
    jpeg = image_bytes("JPEG", seed=1, comment=b"as signed")
    write(files, "c2pa-ai.jpg", sign(jpeg, "JPEG", trusted, "trainedAlgorithmicMedia"))
    write(files, "c2pa-capture.jpg", sign(jpeg, "JPEG", trusted, "digitalCapture"))
    write(files, "c2pa-stranger.jpg", sign(jpeg, "JPEG", stranger, "digitalCapture"))
    write(files, "c2pa-tampered.jpg", sign(jpeg, "JPEG", trusted, "digitalCapture").replace(
        b"as signed", b"as edited"))
    write(files, "xmp-ai.webp", with_xmp("WEBP", xmp_packet("trainedAlgorithmicMedia")))
    write(files, "a1111.png", png_with_text(FRONT_ENDS["a1111"][0]))
    write(files, "gimp.jpg", jpeg_with_exif(Software="GIMP 2.10.36"))
    write(files, "plain.png", image_bytes("PNG", seed=2))
    write(files, "c2pa-corrupt.jpg", corrupt_c2pa(
        sign(jpeg, "JPEG", trusted, "trainedAlgorithmicMedia")))
    write(files, "huge-text.png", png_with_text({"parameters": "x" * (2 << 20)}))
    write(files, "laughs.png", with_xmp("PNG", billion_laughs()))
    write(files, "bad-exif.jpg", jpeg_with_corrupt_exif())
    write(tmp_path, "roots.pem", trusted.root_pem)
    return files


def scan(capsys, *args: str) -> tuple[int, str, str]:
    """`aidetect scan` in process, every pixel score below the threshold (verdicts apart)."""
    return cli_helpers.scan(capsys, *args, "--threshold", "1")


@pytest.mark.parametrize("trust", [False, True])
def test_json_and_jsonl_carry_the_declaration_and_its_evidence(capsys, folder, detector_dir,
                                                               trust) -> None:
    anchors = ["--trust-anchors", "roots.pem"] if trust else []
    code, out, err = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json", *anchors)
    report = json.loads(out)
    jsonschema.validate(report, report_schema())
    results = {Path(r["path"]).name: r for r in report["results"]}
    assert set(results) == set(DECLARING) | set(BOMBS)
    for name, result in results.items():
        assert result["error"] is None and result["score"] is not None  # pixels intact
        provenance = result["provenance"]
        if name in BOMBS:
            assert BOMBS[name] in provenance["error"] and "\n" not in provenance["error"]
            continue
        declared, declared_trusted, sources = DECLARING[name]
        assert provenance["error"] is None
        assert provenance["declared"] == (declared_trusted if trust else declared)
        assert [e["source"] for e in provenance["evidence"] if e["declares"]] == (
            sources if provenance["declared"] else [])
    c2pa = {name: results[name]["provenance"]["evidence"][0] for name in DECLARING
            if name.startswith("c2pa")}
    assert c2pa["c2pa-ai.jpg"]["state"] == ("trusted" if trust else "valid")
    assert c2pa["c2pa-stranger.jpg"]["state"] == "valid"
    assert c2pa["c2pa-tampered.jpg"]["state"] == "invalid"
    assert "assertion.dataHash.mismatch" in c2pa["c2pa-tampered.jpg"]["codes"]
    assert results["gimp.jpg"]["provenance"]["evidence"] == [
        {"source": "exif", "key": "Software", "value": "GIMP 2.10.36", "declares": None}]
    assert report["counts"]["declared_ai"] == 3 and code == 0
    assert "3 declared AI-generated" in err

    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "jsonl", *anchors)
    lines = [json.loads(line) for line in out.splitlines()]
    assert {Path(r["path"]).name: r["provenance"] for r in lines[:-1]} == {
        name: r["provenance"] for name, r in results.items()}


def test_csv_has_the_provenance_columns(capsys, folder, detector_dir) -> None:
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "csv",
                        "--trust-anchors", "roots.pem")
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["c2pa-ai.jpg"]["declared"] == "ai-generated"
    assert rows["c2pa-ai.jpg"]["declared_by"] == "c2pa"
    assert rows["c2pa-ai.jpg"]["provenance"].startswith("C2PA trusted (trusted signer")
    assert rows["c2pa-capture.jpg"]["declared"] == "capture"
    assert rows["a1111.png"]["declared_by"] == "png-text"
    assert "png-text parameters: AUTOMATIC1111: a lighthouse" in rows["a1111.png"]["provenance"]
    assert rows["c2pa-tampered.jpg"]["declared"] == ""
    assert "C2PA invalid" in rows["c2pa-tampered.jpg"]["provenance"]
    assert rows["gimp.jpg"]["provenance"] == "exif Software: GIMP 2.10.36"
    for name, message in BOMBS.items():
        assert message in rows[name]["provenance_error"] and rows[name]["score"] != ""
    assert rows["plain.png"]["provenance"] == rows["plain.png"]["provenance_error"] == ""


def test_the_table_marks_declarations(capsys, folder, detector_dir, tmp_path) -> None:
    code, _, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-o", "table.txt",
                      "--trust-anchors", "roots.pem")
    lines = (tmp_path / "table.txt").read_text().splitlines()
    assert [c.strip() for c in lines[0].split("┃")] == [
        "verdict", "score", "declared", "path", "size"]
    marks = {cells[3].strip(): cells[2].strip() for cells in (line.split("│") for line in lines)
             if len(cells) == 5}
    assert marks == {
        "files/c2pa-ai.jpg": "AI: c2pa", "files/c2pa-capture.jpg": "capture: c2pa",
        "files/xmp-ai.webp": "AI: xmp", "files/a1111.png": "AI: png-text",
        "files/c2pa-tampered.jpg": "C2PA invalid", "files/c2pa-stranger.jpg": "",
        "files/gimp.jpg": "", "files/plain.png": "",
        **{f"files/{name}": "?" for name in BOMBS},  # a provenance error, nothing declared
    }
    scan(capsys, str(folder), "-w", str(detector_dir), "-o", "bare.txt", "--no-provenance")
    assert "declared" not in (tmp_path / "bare.txt").read_text()


def test_the_html_card_shows_the_declaration_and_its_source(capsys, folder, detector_dir,
                                                            tmp_path) -> None:
    scan(capsys, str(folder), "-w", str(detector_dir), "-o", "r.html")

    class Cards(HTMLParser):
        """Per card: its data-declared attribute and the text of its provenance spans."""

        def __init__(self):
            super().__init__()
            self.cards, self.span = {}, None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "figure":
                self.path = Path(attrs["data-path"]).name
                self.cards[self.path] = {"data-declared": attrs.get("data-declared")}
            self.span = attrs.get("class") if tag == "span" else None

        def handle_endtag(self, tag):
            self.span = None

        def handle_data(self, data):
            if self.span in ("declared", "provenance-error"):
                self.cards[self.path][self.span] = data

    parser = Cards()
    parser.feed((tmp_path / "r.html").read_text())
    cards = parser.cards
    ai = "ai-generated"
    assert cards["c2pa-ai.jpg"] == {"data-declared": ai,
                                    "declared": "declares ai-generated (C2PA valid)"}
    assert cards["xmp-ai.webp"] == {"data-declared": ai, "declared": "declares ai-generated (XMP)"}
    assert cards["a1111.png"] == {"data-declared": ai,
                                  "declared": "declares ai-generated (PNG text: AUTOMATIC1111)"}
    # No trust list: no signer is trusted, so the capture claim declares nothing.
    assert cards["c2pa-capture.jpg"] == cards["plain.png"] == {"data-declared": None}
    for name, message in BOMBS.items():
        assert message in cards[name]["provenance-error"]


def test_fail_on_declared_ai_and_no_provenance(capsys, folder, detector_dir) -> None:
    weights = ["-w", str(detector_dir), "-f", "json"]
    assert scan(capsys, str(folder), *weights)[0] == 0  # threshold 1: no pixel says AI
    assert scan(capsys, str(folder), *weights, "--fail-on-ai")[0] == 0
    assert scan(capsys, str(folder), *weights, "--fail-on-declared-ai")[0] == 1
    assert scan(capsys, str(folder / "plain.png"), *weights, "--fail-on-declared-ai")[0] == 0
    code, out, _ = scan(capsys, str(folder), *weights, "--no-provenance")
    report = json.loads(out)
    jsonschema.validate(report, report_schema())
    assert code == 0 and {r["provenance"] for r in report["results"]} == {None}
    assert report["counts"]["declared_ai"] == 0
    code, _, err = scan(capsys, str(folder), *weights, "--no-provenance",
                        "--fail-on-declared-ai")
    assert code == 2 and "--fail-on-declared-ai needs provenance" in err
    code, _, err = scan(capsys, str(folder), *weights, "--trust-anchors", "nope.pem")
    assert code == 2 and "--trust-anchors 'nope.pem': cannot read it" in err


def test_decoding_worker_processes_read_provenance_too(capsys, folder, detector_dir) -> None:
    with pytest.raises(SystemExit):
        main(["scan", str(folder), "-w", str(detector_dir), "-f", "json", "--workers", "2",
              "--batch-size", "3", "--trust-anchors", "roots.pem"])
    results = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["results"]}
    for name, (_, declared, _) in DECLARING.items():
        assert results[name]["provenance"]["declared"] == declared

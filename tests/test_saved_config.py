"""A saved config with a wrongly typed field: one line naming the file and the field, exit 4."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import random_image

from aidetect.cli.app import main
from aidetect.errors import EXIT_WEIGHTS, WeightsError

BAD_FIELDS = [
    ("threshold", None),
    ("threshold", "0.5"),
    ("threshold", 1.5),
    ("lora_rank", "6"),
    ("lora_rank", 2.5),
    ("lora_rank", True),
    ("lora_alpha", None),
    ("lora_dropout", [0.1]),
    ("quick_gelu", "yes"),
    ("backbone", 7),
    ("pretrained", 3),
    ("preprocess", "patches"),
    ("preprocess.size", "224"),
    ("preprocess.mean", [0.5, 0.5]),
    ("preprocess.method", "resize"),
    ("model_cfg", []),
    ("model_cfg.embed_dim", "16"),
    ("model_cfg.vision_cfg.width", None),
    ("model_cfg.vision_cfg.layers", -1),
    ("model_cfg.vision_cfg.head_width", 3),
    ("model_cfg.vision_cfg.bogus", 1),
]


def _set(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config[key]
    config[last] = value


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_scan_with_a_wrongly_typed_field_exits_4_with_one_line(
        field, value, detector_dir: Path, tmp_path: Path, capsys) -> None:
    config_file = detector_dir / "config.json"
    config = json.loads(config_file.read_text())
    _set(config, field, value)
    config_file.write_text(json.dumps(config))
    before = _digests(detector_dir)
    image = tmp_path / "a.png"
    random_image(64, 64).save(image)
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", str(image), "-w", str(detector_dir), "--workers", "0", "-f", "json"])
    captured = capsys.readouterr()
    assert exit_info.value.code == EXIT_WEIGHTS
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("aidetect: error: ")
    parent, _, key = field.rpartition(".")
    assert (f"{config_file}: field '{field}' must" in captured.err
            or f"{config_file}: field '{parent}' has unknown keys: {key}" in captured.err)
    assert "Traceback" not in captured.err
    assert _digests(detector_dir) == before  # nothing rewritten


def test_single_file_metadata_is_checked_as_well(make_detector, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save

    from aidetect.loading import SINGLE_FILE_CONFIG_KEY, load_detector, save_single_file

    path = save_single_file(make_detector(), tmp_path / "det.safetensors")
    config = make_detector().config
    config["lora_rank"] = "6"
    path.write_bytes(save(load_file(str(path)),
                          metadata={"format": "pt", SINGLE_FILE_CONFIG_KEY: json.dumps(config)}))
    with pytest.raises(WeightsError, match=r"det\.safetensors: field 'lora_rank' must be an "
                                           r"integer >= 0, not \"6\""):
        load_detector(str(path))


def test_from_pretrained_checks_the_config(detector_dir: Path) -> None:
    from aidetect import Detector

    config = json.loads((detector_dir / "config.json").read_text())
    config["threshold"] = None
    (detector_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="field 'threshold' must be a number in"):
        Detector.from_pretrained(str(detector_dir))


def test_a_valid_config_passes(make_detector) -> None:
    from aidetect.saved_config import check_saved_config

    check_saved_config(make_detector().config, "x")
    check_saved_config({"backbone": "b", "preprocess": None, "model_cfg": None}, "x")

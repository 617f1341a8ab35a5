"""The preset registry (weights/presets.json), and its files as package data of a wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from aidetect.errors import WeightsError

ROOT = Path(__file__).resolve().parents[1]


def test_univfd_preset_matches_the_method_page() -> None:
    from aidetect.config import DEFAULT_THRESHOLD, UNIVFD_PREPROCESS
    from aidetect.hub import file_sha256
    from aidetect.presets import get_preset, preset_names

    assert "univfd" in preset_names()
    preset = get_preset("univfd")
    # dgs-net.md §2 and §7: OpenAI CLIP ViT-L/14 with QuickGELU, centre crop, CLIP stats.
    assert (preset.backbone, preset.pretrained) == ("ViT-L-14-quickgelu", "openai")
    assert preset.preprocess == UNIVFD_PREPROCESS.to_dict()
    assert preset.threshold == DEFAULT_THRESHOLD
    assert file_sha256(preset.head_path) == preset.head_sha256
    assert preset.license == "MIT"
    assert "Wisconsin AI and Vision Lab" in preset.license_path.read_text()
    assert "Ojha" in preset.citation


def test_univfd_head_fits_the_backbone() -> None:
    import open_clip
    from safetensors.torch import load_file

    from aidetect.presets import get_preset

    preset = get_preset("univfd")
    head = load_file(str(preset.head_path))
    embed_dim = open_clip.get_model_config(preset.backbone)["embed_dim"]
    assert head["weight"].shape == (1, embed_dim) and head["bias"].shape == (1,)


def test_unknown_preset_names_the_known_ones() -> None:
    from aidetect.presets import get_preset

    with pytest.raises(WeightsError, match="unknown preset 'nope': choose one of univfd") as info:
        get_preset("nope")
    assert info.value.exit_code == 4


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "aidetect").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert config["package-dir"]["aidetect.weights"] == "weights"


def test_presets_load_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build a wheel from a copy of the sources, install it alone, read the registry from it."""
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True).returncode:
        pytest.skip("pip is not available")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("aidetect", "weights"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    quiet = {"capture_output": True, "text": True}
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], **quiet)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("aidetect-*.whl"))
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q",
                                "--target", str(tmp_path / "site"), str(wheel)], **quiet)
    assert installed.returncode == 0, installed.stderr
    # -S: no site-packages, so neither the editable install nor the checkout can answer.
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "import aidetect, aidetect.presets as p; from aidetect.hub import file_sha256;"
        "u = p.get_preset('univfd');"
        "print(json.dumps({'module': aidetect.__file__, 'head': str(u.head_path),"
        " 'ok': file_sha256(u.head_path) == u.head_sha256,"
        " 'licence': u.license_path.read_text()}))"
    )
    run = subprocess.run([sys.executable, "-S", "-c", probe, str(tmp_path / "site")],
                         cwd=tmp_path, **quiet)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    site = str(tmp_path / "site")
    assert result["module"].startswith(site) and result["head"].startswith(site)
    assert result["ok"] and "MIT License" in result["licence"]


def test_source_checkout_without_install_runs(tmp_path: Path) -> None:
    """`python -m aidetect` inside a clone that was never installed finds weights/ beside it."""
    checkout = tmp_path / "clone"
    shutil.copytree(ROOT / "aidetect", checkout / "aidetect")
    shutil.copytree(ROOT / "weights", checkout / "weights")
    # -S: no site-packages, so neither the editable install's finder nor an installed aidetect
    # is seen; only the clone (cwd). `models --json` needs the preset registry, not torch.
    site = subprocess.run([sys.executable, "-c", "import typer, rich, os; "
                           "print(os.path.dirname(os.path.dirname(typer.__file__)))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    run = subprocess.run(
        [sys.executable, "-S", "-c",
         f"import sys; sys.path.append({site!r}); from aidetect.cli import main; "
         "main(['models', '--json'])"],
        cwd=checkout, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin",
                                                          "HF_HUB_OFFLINE": "1",
                                                          "HF_HOME": str(tmp_path / "hf")},
    )
    assert run.returncode == 0, run.stderr
    assert "univfd" in run.stdout
    assert "aidetect.weights" not in run.stderr


def test_missing_registry_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidetect import presets

    def no_package(name: str):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(presets.resources, "files", no_package)
    monkeypatch.setattr(presets, "__file__", "/nonexistent/aidetect/presets.py")
    with pytest.raises(WeightsError, match="pip install -e ."):
        presets.weights_dir()

"""`aidetect convert`: the authors' DGS-Net checkpoint layout (dgs-net.md §6) and UnivFD heads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aidetect.errors import WeightsError

# A tiny OpenAI-layout CLIP: width 128 -> 2 heads of 64 (OpenAI's rule), 7 x 7 patches of 32 px.
TINY_OPENAI = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
RANK = 3


class Payload:
    """An arbitrary object: torch.load(weights_only=True) must refuse to build it."""
SCALING = 6.0 / math.sqrt(RANK)  # alpha / sqrt(r), alpha = 6 as in the authors' model


def authors_checkpoint(*, merged: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in exactly the layout of the authors' model_epoch_step2.pth."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    clip = CLIP(**TINY_OPENAI)
    original = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    for value in original.values():  # LayerNorms start at 1/0: make every tensor informative
        value.add_(0.02 * torch.randn_like(value))
    width = TINY_OPENAI["vision_cfg"]["width"]
    state: dict[str, torch.Tensor] = {}
    for key, value in original.items():
        state[f"clip_model_frozen.clip_model_frozen.{key}"] = value.clone()
        if ".attn.in_proj_" in key and key.startswith("visual."):
            block = key.rsplit(".attn.", 1)[0]
            kind = "weight" if key.endswith("in_proj_weight") else "bias"
            for n, name in enumerate("qkv"):
                part = value[n * width:(n + 1) * width].clone()
                proj = f"clip_model.{block}.attn.{name}_proj"
                if kind == "weight":
                    a = torch.randn(RANK, width) * 0.1  # (r, D)
                    b = torch.randn(width, RANK) * 0.1  # (D, r): non-zero, as after training
                    state[f"{proj}.w_lora_A"], state[f"{proj}.w_lora_B"] = a, b
                    if merged:
                        part = part + SCALING * b @ a
                state[f"{proj}.{kind}"] = part
        elif ".attn.out_proj." in key and key.startswith("visual."):
            state["clip_model." + key.replace(".attn.out_proj.", ".attn.proj.")] = value.clone()
        else:
            state[f"clip_model.{key}"] = value.clone()
    embed = TINY_OPENAI["embed_dim"]
    for head in ("img_fc", "text_fc", "clip_model_frozen.img_frozen_fc"):
        state[f"{head}.weight"] = torch.randn(1, embed) * 0.3
        state[f"{head}.bias"] = torch.randn(1) * 0.1
    return state


def direct_logits(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The authors' eval-mode model written out with plain torch ops from the stored tensors."""
    p = {k[len("clip_model.visual."):]: v for k, v in state.items()
         if k.startswith("clip_model.visual.")}
    width, heads = p["conv1.weight"].shape[0], p["conv1.weight"].shape[0] // 64
    x = F.conv2d(images, p["conv1.weight"], stride=p["conv1.weight"].shape[-1])  # (B, W, 7, 7)
    x = x.flatten(2).transpose(1, 2)  # (B, 49, W)
    cls = p["class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + p["positional_embedding"]  # (B, 50, W)
    x = F.layer_norm(x, (width,), p["ln_pre.weight"], p["ln_pre.bias"])
    blocks = sorted({int(k.split(".")[2]) for k in p if k.startswith("transformer.resblocks.")})
    for i in blocks:
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), p[b + "ln_1.weight"], p[b + "ln_1.bias"])
        qkv = []
        for name in "qkv":
            proj = b + f"attn.{name}_proj."
            w_eff = p[proj + "weight"] + SCALING * p[proj + "w_lora_B"] @ p[proj + "w_lora_A"]
            y = h @ w_eff.T + p[proj + "bias"]  # (B, N, W)
            qkv.append(y.view(*y.shape[:2], heads, 64).transpose(1, 2))  # (B, H, N, 64)
        q, k, v = qkv
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), dim=-1)  # (B, H, N, N)
        attn = (weights @ v).transpose(1, 2).reshape(x.shape)  # (B, N, W)
        x = x + attn @ p[b + "attn.proj.weight"].T + p[b + "attn.proj.bias"]
        h = F.layer_norm(x, (width,), p[b + "ln_2.weight"], p[b + "ln_2.bias"])
        h = h @ p[b + "mlp.c_fc.weight"].T + p[b + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU, as OpenAI CLIP
        x = x + h @ p[b + "mlp.c_proj.weight"].T + p[b + "mlp.c_proj.bias"]
    features = F.layer_norm(x[:, 0], (width,), p["ln_post.weight"], p["ln_post.bias"]) @ p["proj"]
    return (features @ state["img_fc.weight"].T + state["img_fc.bias"]).squeeze(-1)  # (B,)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model_epoch_step2.pth"
    torch.save(authors_checkpoint(merged=False), path)
    return path


@pytest.mark.parametrize("merged", [False, True])
def test_dgs_net_conversion_matches_direct_computation(tmp_path: Path, merged: bool) -> None:
    from aidetect.config import DGS_PREPROCESS
    from aidetect.convert import convert_checkpoint
    from aidetect.loading import load_detector

    state = authors_checkpoint(merged=merged, seed=int(merged))
    source = tmp_path / "model_epoch_step2.pth"
    torch.save(state, source)
    report = convert_checkpoint(source, tmp_path / "out")
    assert report.format == "dgs-net" and report.lora_rank == RANK
    assert report.vision["heads"] == 2 and report.vision["layers"] == 2
    assert report.vision["image_size"] == 224 and report.embed_dim == 32
    assert report.delta_in_stored == ("yes" if merged else "no")
    assert report.max_abs_delta > 0
    if merged:
        assert report.stored_vs_frozen_plus_delta < 1e-5 < report.stored_vs_frozen
    else:
        assert report.stored_vs_frozen == 0.0 < report.stored_vs_frozen_plus_delta

    loaded = load_detector(str(tmp_path / "out"))
    detector = loaded.detector
    assert detector.preprocess_config == DGS_PREPROCESS and detector.quick_gelu
    assert not detector.has_lora and detector.threshold == 0.5
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        ours = detector(images)
    torch.testing.assert_close(ours, direct_logits(state, images), rtol=1e-4, atol=1e-4)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "arXiv 2511.13108" in card and "LoRA rank 3" in card


def test_converted_folder_loads_without_open_clip_registry(checkpoint_file: Path,
                                                          tmp_path: Path) -> None:
    from aidetect.convert import convert_checkpoint
    from aidetect.loading import load_detector

    convert_checkpoint(checkpoint_file, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    # No open_clip name knows this architecture: the embedded model_cfg is what rebuilds it.
    assert config["backbone"].startswith("dgs-net-vit-w128-l2-p32")
    assert config["model_cfg"]["vision_cfg"]["width"] == 128
    assert config["model_cfg"]["quick_gelu"] is True and config["pretrained"] is None
    assert load_detector(str(tmp_path / "out")).detector.embed_dim == 32


def test_single_file_output_scores_like_the_folder(checkpoint_file: Path, tmp_path: Path) -> None:
    from aidetect.convert import convert_checkpoint
    from aidetect.loading import load_detector

    convert_checkpoint(checkpoint_file, tmp_path / "folder")
    convert_checkpoint(checkpoint_file, tmp_path / "one.safetensors", single_file=True)
    folder = load_detector(str(tmp_path / "folder"))
    single = load_detector(str(tmp_path / "one.safetensors"))
    assert single.source == "file" and folder.source == "folder"
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(single.detector(images), folder.detector(images))


def test_vit_l14_shapes_name_the_openai_backbone() -> None:
    from aidetect.convert import builtin_name, read_architecture

    visual = {
        "conv1.weight": torch.empty(1024, 3, 14, 14, device="meta"),
        "positional_embedding": torch.empty(257, 1024, device="meta"),
        "proj": torch.empty(1024, 768, device="meta"),
        "transformer.resblocks.0.mlp.c_fc.weight": torch.empty(4096, 1024, device="meta"),
        **{f"transformer.resblocks.{i}.ln_1.weight": torch.empty(1024, device="meta")
           for i in range(24)},
    }
    cfg = read_architecture(visual, "x")
    assert cfg["vision_cfg"] == {"image_size": 224, "layers": 24, "width": 1024,
                                 "patch_size": 14, "head_width": 64, "mlp_ratio": 4.0}
    assert cfg["embed_dim"] == 768 and cfg["quick_gelu"] is True
    assert builtin_name(cfg) == "ViT-L-14-quickgelu"


def test_univfd_head_becomes_a_head_only_folder(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from aidetect.config import UNIVFD_PREPROCESS
    from aidetect.convert import convert_checkpoint

    weight, bias = torch.randn(1, 768), torch.randn(1)
    torch.save({"fc.weight": weight, "fc.bias": bias}, tmp_path / "fc_weights.pth")
    report = convert_checkpoint(tmp_path / "fc_weights.pth", tmp_path / "univfd-head",
                                format="univfd")
    assert report.format == "univfd" and report.backbone == "ViT-L-14-quickgelu"
    out = tmp_path / "univfd-head"
    head = load_file(str(out / "model.safetensors"))
    assert set(head) == {"head.weight", "head.bias"}
    assert torch.equal(head["head.weight"], weight) and torch.equal(head["head.bias"], bias)
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "ViT-L-14-quickgelu" and config["pretrained"] == "openai"
    assert config["preprocess"] == UNIVFD_PREPROCESS.to_dict()
    assert "Wisconsin AI and Vision Lab" in (out / "LICENSE-univfd.txt").read_text()
    # auto-detection reads the same layout without --format
    torch.save({"weight": weight, "bias": bias}, tmp_path / "plain.pth")
    assert convert_checkpoint(tmp_path / "plain.pth", tmp_path / "again").format == "univfd"


def test_head_only_folder_builds_its_tower_from_the_pretrained_weights(
    tiny_backbone: str, tmp_path: Path
) -> None:
    """The head-only load path, end to end, with a tiny CLIP file standing in for openai's."""
    import open_clip
    from safetensors.torch import save_file

    from aidetect.loading import load_detector

    torch.manual_seed(0)
    clip = open_clip.create_model(tiny_backbone, pretrained=None)
    save_file(clip.state_dict(), tmp_path / "tiny-clip.safetensors")
    folder = tmp_path / "head-only"
    folder.mkdir()
    head = {"head.weight": torch.randn(1, 16), "head.bias": torch.randn(1)}
    save_file(head, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "aidetect_version": "0.1.0", "format_version": 1, "backbone": tiny_backbone,
        "pretrained": str(tmp_path / "tiny-clip.safetensors"), "threshold": 0.4,
    }))
    detector = load_detector(str(folder)).detector
    torch.testing.assert_close(detector.head.weight, head["head.weight"])
    torch.testing.assert_close(detector.visual.conv1.weight, clip.visual.conv1.weight)
    assert detector.threshold == 0.4


def test_pickles_with_objects_are_refused(tmp_path: Path) -> None:
    from aidetect.convert import load_checkpoint

    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(WeightsError, match="not a weights-only checkpoint; it may run code when "
                                           "loaded, so aidetect will not open it"):
        load_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint|weights_only"):
        load_checkpoint(tmp_path / "junk.pth")


def test_layout_errors_are_one_line(tmp_path: Path) -> None:
    from aidetect.convert import convert_checkpoint

    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="neither the DGS-Net checkpoint layout"):
        convert_checkpoint(tmp_path / "other.pth", tmp_path / "out")
    torch.save({"weight": torch.zeros(1, 10), "bias": torch.zeros(1)}, tmp_path / "small.pth")
    with pytest.raises(WeightsError, match=r"do not fit ViT-L-14-quickgelu \(expected \(1, 768\)"):
        convert_checkpoint(tmp_path / "small.pth", tmp_path / "out", format="univfd")
    state = authors_checkpoint(merged=False)
    del state["img_fc.weight"]
    torch.save(state, tmp_path / "nohead.pth")
    with pytest.raises(WeightsError, match="no image head"):
        convert_checkpoint(tmp_path / "nohead.pth", tmp_path / "out")


# --- hostile and broken checkpoints through the CLI: one line, exit 4, nothing written --------
class Shell:
    """A `__reduce__` payload: unpickling it would run a shell command."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def run_convert(capsys, *args: str) -> tuple[int, str, str]:
    from aidetect.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["convert", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _broken_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import pickle

    cases = {}
    text = tmp_path / "garbage.pth"
    text.write_text("hello world, this is not a checkpoint\n")
    cases["text"] = (text, "not a PyTorch checkpoint")
    raw = tmp_path / "evil.pth"
    raw.write_bytes(pickle.dumps(Shell()))
    cases["raw pickle payload"] = (raw, "not a weights-only checkpoint; it may run code when "
                                        "loaded, so aidetect will not open it")
    zipped = tmp_path / "evil-zip.pth"
    torch.save({"weight": torch.zeros(1), "x": Shell()}, zipped)
    cases["torch.save payload"] = (zipped, "not a weights-only checkpoint; it may run code")
    integer = tmp_path / "intkey.pth"
    torch.save({1: torch.zeros(2), "weight": torch.zeros(1, 768)}, integer)
    cases["integer key"] = (integer, "tensor key 1 is not a name")
    state = authors_checkpoint(merged=False)
    flat = dict(state, **{"clip_model.visual.conv1.weight": torch.zeros(128, 3, 32)})
    torch.save(flat, tmp_path / "conv3d.pth")
    cases["3-D conv1"] = (tmp_path / "conv3d.pth", "conv1.weight has shape (128, 3, 32)")
    empty = dict(state, **{"clip_model.visual.conv1.weight": torch.zeros(0, 3, 32, 32)})
    torch.save(empty, tmp_path / "width0.pth")
    cases["width 0"] = (tmp_path / "width0.pth", "conv1.weight has shape (0, 3, 32, 32)")
    lora = dict(state)
    lora["clip_model.visual.transformer.resblocks.0.attn.q_proj.w_lora_A"] = torch.zeros(3, 5)
    torch.save(lora, tmp_path / "lora.pth")
    cases["LoRA factor shape"] = (tmp_path / "lora.pth", "tensor shapes that do not fit")
    return cases


def test_broken_and_hostile_checkpoints_are_one_line_exit_4(tmp_path: Path, capsys) -> None:
    for name, (path, expected) in _broken_checkpoints(tmp_path).items():
        out = tmp_path / f"out-{path.stem}"
        code, stdout, stderr = run_convert(capsys, str(path), "--out", str(out))
        assert code == 4, (name, stderr)
        assert stdout == "" and stderr.count("\n") == 1, (name, stderr)
        assert stderr.startswith(f"aidetect: error: {path}: ") and expected in stderr, name
        assert "Traceback" not in stderr and not out.exists(), name


def test_convert_refuses_an_out_folder_holding_files(tmp_path: Path, capsys) -> None:
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, tmp_path / "fc.pth")
    out = tmp_path / "proj"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    code, stdout, stderr = run_convert(capsys, str(tmp_path / "fc.pth"), "--out", str(out))
    assert (code, stdout) == (2, "") and stderr.count("\n") == 1
    assert stderr.startswith(f"aidetect: error: --out {out}: a folder that is not empty")
    assert [p.name for p in out.iterdir()] == ["README.md"]
    assert (out / "README.md").read_text() == "my notes"
    single = tmp_path / "det.safetensors"
    single.write_bytes(b"mine")
    code, _, stderr = run_convert(capsys, str(tmp_path / "fc.pth"), "--out", str(single),
                                  "--single-file")
    assert code == 2 and "already exists" in stderr and single.read_bytes() == b"mine"


def test_convert_writes_into_an_empty_folder(tmp_path: Path, capsys) -> None:
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, tmp_path / "fc.pth")
    out = tmp_path / "empty"
    out.mkdir()
    code, stdout, _ = run_convert(capsys, str(tmp_path / "fc.pth"), "--out", str(out), "-q")
    assert (code, stdout.strip()) == (0, str(out))
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("zipped", [True, False])
def test_damaged_checkpoints_are_one_line_weights_errors(tmp_path: Path, zipped: bool) -> None:
    """Bytes flipped or cut anywhere in a checkpoint (both torch layouts): a checkpoint or a
    one-line WeightsError, never another exception."""
    import random

    from aidetect.safe_pickle import load_checkpoint

    base = tmp_path / "base.pth"
    torch.save({"a": torch.zeros(3), "b": torch.ones(2, 2)}, base,
               _use_new_zipfile_serialization=zipped)
    data = base.read_bytes()
    rng = random.Random(0)
    for i in range(150):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.3:
            damaged = damaged[:rng.randrange(len(damaged))]
        path = tmp_path / f"damaged-{i}.pth"
        path.write_bytes(bytes(damaged))
        try:
            load_checkpoint(path)
        except WeightsError as error:
            assert "\n" not in str(error) and str(error).startswith(str(path))

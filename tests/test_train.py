"""Training: it learns, writes a detector folder, finetunes, checkpoints, and resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_labelled_folder
from safetensors.torch import load_file

from aidetect import Detector
from aidetect.config import LoraConfig, TrainConfig
from aidetect.errors import UsageError
from aidetect.train import EpochStart, Note, StepEnd, TrainJob, run_training

# Small but enough to learn the tiny task: lr raised for a handful of steps, no LoRA dropout.
FAST = TrainConfig(probe_epochs=2, epochs=3, batch_size=4, lr=1e-2, lora=LoraConfig(dropout=0.0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_local_dir):
    """One training run shared by the tests that only read its results."""
    root = tmp_path_factory.mktemp("trained")
    data = write_labelled_folder(root / "data", n=16)
    val = write_labelled_folder(root / "val", n=8, seed=7)
    events = []
    job = TrainJob(data=data, out=root / "run", config=FAST, backbone=tiny_local_dir,
                   pretrained=None, val=val, device="cpu", workers=0, save_every=5)
    result = run_training(job, on_event=events.append)
    return root, result, events


def test_train_learns(trained):
    _, result, _ = trained
    final = result.validation[-1]
    assert (final["stage"], final["epoch"]) == (2, FAST.epochs - 1)
    assert final["ap"] >= 0.9 and final["acc"] >= 0.75  # chance is 0.5
    # The untrained probe was far from that: the stages did the learning.
    assert len(result.validation) == FAST.probe_epochs + FAST.epochs


def test_output_is_a_detector_folder_with_merged_lora(trained, tiny_local_dir):
    root, result, _ = trained
    out = root / "run"
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["lora_rank"] == 0 and config["backbone"] == tiny_local_dir
    assert config["threshold"] == 0.5
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in k or "text_head" in k or "probe" in k for k in weights)
    detector = Detector.from_pretrained(out)
    assert not detector.has_lora
    card = (out / "README.md").read_text()
    assert "DGS-Net" in card and "16 real and 16 AI-generated images" in card
    assert "| stage 2 (DGS) epochs | 3 |" in card and "| 2 | 3 |" in card  # metrics row
    assert "aidetect 0." in card and "not calibrated" in card and "library_name: aidetect" in card


def test_checkpoint_and_metrics_log(trained):
    root, result, events = trained
    checkpoint = torch.load(root / "run" / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["finished"] and checkpoint["stage"] == 2
    assert checkpoint["global_step"] == result.global_step == (2 + 3) * 8
    assert {"torch", "numpy", "python"} <= set(checkpoint["rng"][0])
    assert set(checkpoint["state"]) == {"head", "probe_head", "text_head", "lora"}
    assert checkpoint["optimizer"]["state"]  # Adam moments
    lines = [json.loads(x) for x in (root / "run" / "train" / "metrics.jsonl").open()]
    steps = [x for x in lines if "loss" in x]
    assert len(steps) == result.global_step
    assert [x["record"] for x in lines] == list(range(1, len(lines) + 1))
    assert sum("val" in x for x in lines) == 5
    assert all(x["loss_text"] > 0 for x in steps if x["stage"] == 2)
    assert any(isinstance(e, EpochStart) for e in events)
    assert sum(isinstance(e, StepEnd) for e in events) == result.global_step
    assert any(isinstance(e, Note) and "captions" in e.message for e in events)


def test_finetune_with_zero_lr_keeps_the_old_detector(trained, tmp_path):
    # The student starts as the old encoder with zero-update LoRA and the old head: with a
    # learning rate of 0 the result is the old detector, tensor for tensor.
    root, _, _ = trained
    job = TrainJob(data=root / "data", out=tmp_path / "ft", weights=str(root / "run"),
                   config=TrainConfig(epochs=1, batch_size=8, lr=0.0), device="cpu", workers=0)
    run_training(job)
    old, new = load_file(root / "run" / "model.safetensors"), load_file(
        tmp_path / "ft" / "model.safetensors")
    assert old.keys() == new.keys()
    assert all(torch.equal(old[k], new[k]) for k in old)
    assert "fine-tuning" in (tmp_path / "ft" / "README.md").read_text()


def test_finetune_learns_from_a_detector(detector_dir, tmp_path):
    data = write_labelled_folder(tmp_path / "data", n=4)
    job = TrainJob(data=data, out=tmp_path / "ft", weights=str(detector_dir),
                   config=TrainConfig(epochs=1, batch_size=4, lr=1e-2), device="cpu", workers=0)
    run_training(job)
    old, new = load_file(detector_dir / "model.safetensors"), load_file(
        tmp_path / "ft" / "model.safetensors")
    assert not torch.equal(old["head.weight"], new["head.weight"])
    changed = [k for k in old if "in_proj_weight" in k and not torch.equal(old[k], new[k])]
    assert changed  # LoRA was merged into q, k, v
    assert all(torch.equal(old[k], new[k]) for k in old if "conv1" in k)  # frozen elsewhere


def test_unreadable_training_images_are_skipped(tmp_path, tiny_local_dir):
    data = write_labelled_folder(tmp_path / "data", n=3)
    (data / "1_fake" / "broken.png").write_bytes(b"not a png")
    events = []
    job = TrainJob(data=data, out=tmp_path / "run", backbone=tiny_local_dir, pretrained=None,
                   config=TrainConfig(probe_epochs=1, epochs=1, batch_size=4), device="cpu",
                   workers=0)
    result = run_training(job, on_event=events.append)
    assert list(result.skipped) == [str(data / "1_fake" / "broken.png")]
    warnings = [e.message for e in events if isinstance(e, Note) and e.warning]
    assert any("broken.png" in w for w in warnings)
    assert any("1 unreadable training images were skipped" in w for w in warnings)
    assert "Unreadable training images skipped: 1" in (tmp_path / "run" / "README.md").read_text()


def test_existing_run_needs_resume_and_resume_needs_same_settings(trained, tmp_path,
                                                                  tiny_local_dir):
    root, _, _ = trained
    job = TrainJob(data=root / "data", out=root / "run", config=FAST, pretrained=None,
                   backbone="unused", device="cpu", workers=0)
    with pytest.raises(UsageError, match="already holds a training run: pass --resume"):
        run_training(job)
    # An unfinished run (the final checkpoint, marked unfinished) with another learning rate.
    checkpoint = torch.load(root / "run" / "train" / "checkpoint.pt", weights_only=True)
    checkpoint["finished"] = False
    (tmp_path / "run" / "train").mkdir(parents=True)
    torch.save(checkpoint, tmp_path / "run" / "train" / "checkpoint.pt")
    changed = TrainJob(data=root / "data", out=tmp_path / "run", pretrained=None,
                       backbone=tiny_local_dir, val=root / "val",
                       config=TrainConfig(probe_epochs=2, epochs=3, batch_size=4, lr=1e-3,
                                          lora=LoraConfig(dropout=0.0)),
                       device="cpu", workers=0, resume=True)
    with pytest.raises(UsageError, match=r"cannot resume with different settings: lr 0\.001"):
        run_training(changed)


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, tiny_local_dir, monkeypatch):
    from aidetect import trainer

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(trainer.Trainer, "_stage1_step", out_of_memory)
    data = write_labelled_folder(tmp_path / "data", n=2)
    job = TrainJob(data=data, out=tmp_path / "run", backbone=tiny_local_dir, pretrained=None,
                   config=TrainConfig(batch_size=4), device="cpu", workers=0)
    with pytest.raises(UsageError, match="out of memory with --batch-size 4.*--batch-size 2"):
        run_training(job)


# --- kill -9 and resume ----------------------------------------------------------------------
def _train_cli(out: Path, data: Path, backbone: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "aidetect", "train", "--data", str(data), "--out", str(out),
        "--backbone", backbone, "--pretrained", "none", "--probe-epochs", "2", "--epochs", "2",
        "--batch-size", "4", "--lr", "1e-2", "--save-every", "1", "--device", "cpu",
        "--workers", "0", "--quiet", *extra,
    ]


def _steps_logged(out: Path) -> int:
    try:
        return (out / "train" / "metrics.jsonl").read_text().count('"loss"')
    except FileNotFoundError:
        return 0


def _kill_after(command: list[str], out: Path, steps: int) -> None:
    """Run `command` and SIGKILL it once `steps` steps are logged (the run has 24)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _steps_logged(out) < steps and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"


def test_resume_after_sigkill_ends_with_identical_weights(tmp_path, tiny_local_dir):
    data = write_labelled_folder(tmp_path / "data", n=12)  # 6 steps an epoch, 24 in all
    reference = tmp_path / "reference"
    subprocess.run(_train_cli(reference, data, tiny_local_dir), check=True,
                   capture_output=True, timeout=300)
    expected = load_file(reference / "model.safetensors")

    interrupted = tmp_path / "interrupted"
    command = _train_cli(interrupted, data, tiny_local_dir)
    _kill_after(command, interrupted, steps=4)  # in stage 1 (steps 1-12 of 24)
    assert not (interrupted / "model.safetensors").exists()
    _kill_after([*command, "--resume"], interrupted, steps=16)  # in stage 2, workers or not
    finished = subprocess.run([*command, "--resume", "--workers", "2"], capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    weights = load_file(interrupted / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    # The log holds each step once, as in the uninterrupted run.
    reference_log = [json.loads(x) for x in (reference / "train" / "metrics.jsonl").open()]
    resumed_log = [json.loads(x) for x in (interrupted / "train" / "metrics.jsonl").open()]
    assert [x.get("loss") for x in resumed_log] == [x.get("loss") for x in reference_log]


def test_resuming_a_finished_run_does_nothing(trained, tiny_local_dir):
    root, result, _ = trained
    before = (root / "run" / "model.safetensors").stat().st_mtime_ns
    job = TrainJob(data=root / "data", out=root / "run", config=FAST, backbone=tiny_local_dir,
                   pretrained=None, val=root / "val", device="cpu", workers=0, resume=True)
    again = run_training(job)
    assert again.already_finished and again.global_step == result.global_step
    assert (root / "run" / "model.safetensors").stat().st_mtime_ns == before


def test_zero_dgs_epochs_keeps_the_trained_probe(tmp_path, tiny_local_dir):
    import dataclasses

    data = write_labelled_folder(tmp_path / "data", n=4)
    config = dataclasses.replace(FAST, probe_epochs=1, epochs=0)
    job = TrainJob(data=data, out=tmp_path / "run", config=config, backbone=tiny_local_dir,
                   pretrained=None, device="cpu", workers=0)
    run_training(job)
    checkpoint = torch.load(tmp_path / "run" / "train" / "checkpoint.pt", weights_only=True)
    saved = load_file(tmp_path / "run" / "model.safetensors")
    probe = checkpoint["state"]["head"]  # the stage-1 head as trained
    assert torch.equal(saved["head.weight"], probe["weight"])
    assert "text_head" not in checkpoint["state"]  # stage 2 never set up


# --- mixed precision (bf16 autocast on CPU runs the code path CUDA takes) --------------------
class _Stop(Exception):
    pass


def _stop_after(steps: int):
    """An event handler that interrupts the run after `steps` steps (as Ctrl-C would)."""
    seen = []

    def on_event(event) -> None:
        if isinstance(event, StepEnd):
            seen.append(event)
            if len(seen) == steps:
                raise _Stop

    return on_event


@pytest.fixture(scope="module")
def trained_bf16(tmp_path_factory, tiny_local_dir):
    root = tmp_path_factory.mktemp("bf16")
    data = write_labelled_folder(root / "data", n=16)
    val = write_labelled_folder(root / "val", n=8, seed=7)
    job = TrainJob(data=data, out=root / "run", config=FAST, backbone=tiny_local_dir,
                   pretrained=None, val=val, device="cpu", workers=0, save_every=5,
                   precision="bf16")
    return root, job, run_training(job)


def test_bf16_autocast_learns_the_planted_artifact(trained_bf16):
    _, _, result = trained_bf16
    final = result.validation[-1]
    assert (final["stage"], final["epoch"]) == (2, FAST.epochs - 1)
    assert final["ap"] >= 0.9 and final["acc"] >= 0.75


def test_bf16_run_keeps_trainable_parameters_and_optimiser_state_in_fp32(trained_bf16):
    root, _, _ = trained_bf16
    checkpoint = torch.load(root / "run" / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["recipe"]["precision"] == "bf16"
    assert checkpoint["scaler"] is None  # bf16 needs no loss scaling
    state = checkpoint["state"]
    tensors = [*state["lora"].values(), *(t for k in ("head", "text_head", "probe_head")
                                          for t in state[k].values())]
    assert len(state["lora"]) > 0 and all(t.dtype == torch.float32 for t in tensors)
    moments = [t for s in checkpoint["optimizer"]["state"].values() for k, t in s.items()
               if k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    saved = load_file(root / "run" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())
    # The card and every step of the log say which precision trained it.
    assert "| precision | bf16 autocast (LoRA, heads" in (root / "run" / "README.md").read_text()
    lines = [json.loads(x) for x in (root / "run" / "train" / "metrics.jsonl").open()]
    assert {x["precision"] for x in lines if "loss" in x} == {"bf16"}


def test_a_bf16_checkpoint_resumes_to_the_uninterrupted_weights(trained_bf16, tmp_path):
    root, job, _ = trained_bf16
    import dataclasses

    interrupted = dataclasses.replace(job, out=tmp_path / "run")
    with pytest.raises(_Stop):
        run_training(interrupted, on_event=_stop_after(23))  # in stage 2 (steps 17-40)
    checkpoint = torch.load(tmp_path / "run" / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["global_step"] == 20 and not checkpoint["finished"]
    # Resuming in another precision would not continue the same run: refused.
    with pytest.raises(UsageError, match="precision 'fp32' \\(checkpoint: 'bf16'\\)"):
        run_training(dataclasses.replace(interrupted, resume=True, precision="fp32"))
    resumed = run_training(dataclasses.replace(interrupted, resume=True))
    assert resumed.global_step == (2 + 3) * 8
    expected = load_file(root / "run" / "model.safetensors")
    weights = load_file(tmp_path / "run" / "model.safetensors")
    # On CPU, bf16 autocast is as deterministic as fp32: the same weights, bit for bit.
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_fp16_scales_the_loss_and_checkpoints_the_scaler(tmp_path, tiny_local_dir):
    data = write_labelled_folder(tmp_path / "data", n=4)
    config = TrainConfig(probe_epochs=1, epochs=1, batch_size=4, lr=1e-2)
    job = TrainJob(data=data, out=tmp_path / "run", config=config, backbone=tiny_local_dir,
                   pretrained=None, device="cpu", workers=0, precision="fp16")
    run_training(job)
    checkpoint = torch.load(tmp_path / "run" / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["recipe"]["precision"] == "fp16"
    assert checkpoint["scaler"]["scale"] > 0  # the GradScaler's state, for an exact resume
    assert "fp16 autocast, loss scaling" in (tmp_path / "run" / "README.md").read_text()


def test_activation_checkpointing_gives_the_same_weights(tmp_path, tiny_local_dir,
                                                        monkeypatch):
    # Recomputing the blocks in backward (with the same dropout masks) changes nothing else.
    import open_clip.transformer

    calls = []
    checkpoint = open_clip.transformer.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(open_clip.transformer, "checkpoint", counted)
    data = write_labelled_folder(tmp_path / "data", n=4)
    config = TrainConfig(probe_epochs=1, epochs=1, batch_size=4, lr=1e-2)
    outs = []
    for checkpointing in (False, True):
        out = tmp_path / f"run{int(checkpointing)}"
        run_training(TrainJob(data=data, out=out, config=config, backbone=tiny_local_dir,
                              pretrained=None, device="cpu", workers=0,
                              checkpointing=checkpointing))
        outs.append(load_file(out / "model.safetensors"))
        assert bool(calls) == checkpointing  # the blocks went through torch's checkpoint
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_unknown_precision_is_a_usage_error(tmp_path, tiny_local_dir):
    data = write_labelled_folder(tmp_path / "data", n=2)
    job = TrainJob(data=data, out=tmp_path / "run", backbone=tiny_local_dir, pretrained=None,
                   device="cpu", workers=0, precision="fp8")
    with pytest.raises(UsageError, match="--precision fp8"):
        run_training(job)
    assert not (tmp_path / "run").exists()


def test_decoding_workers_scale_with_the_cores_on_a_gpu(monkeypatch):
    from aidetect import devices

    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert devices.train_workers(torch.device("cuda")) == 15  # all cores but the trainer's
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four ranks share the cores
    assert devices.train_workers(torch.device("cuda")) == 3
    # On the CPU the model and decoding share the cores: the scan's CPU default.
    cpu = torch.device("cpu")
    assert devices.train_workers(cpu) == devices.default_workers(cpu)


def test_auto_trains_in_bf16_where_the_cpu_multiplies_it() -> None:
    """`auto` on the CPU follows the scan's choice: bf16 with bf16 units, fp32 without."""
    from aidetect.cpu import CpuFeatures
    from aidetect.steps import choose_precision

    cpu = torch.device("cpu")
    amx = choose_precision(cpu, "auto", cpu=CpuFeatures(amx_bf16=True))
    assert (amx.name, amx.dtype, amx.scales_loss) == ("bf16", torch.bfloat16, False)
    assert choose_precision(cpu, "auto", cpu=CpuFeatures(avx512_vnni=True)).name == "fp32"
    assert choose_precision(cpu, "fp32", cpu=CpuFeatures(amx_bf16=True)).dtype is None
    assert choose_precision(torch.device("mps"), "auto", cpu=CpuFeatures(arm_bf16=True)).name \
        == "fp32"

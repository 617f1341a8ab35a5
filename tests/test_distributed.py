"""torchrun data parallelism on CPU (gloo, 2 processes) matches one process on the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from conftest import write_labelled_folder
from safetensors.torch import load_file


def _args(data, out, backbone):
    # Global batch 5 over 2 ranks: unequal halves (3 + 2, and 2 + 2 at the end), so the
    # per-rank weighting matters. No LoRA dropout: its masks are drawn per process. fp32: bf16
    # (auto on a CPU with bf16 units) rounds differently for 3 images than for 5.
    return [
        "-m", "aidetect", "train", "--data", str(data), "--out", str(out),
        "--backbone", backbone, "--pretrained", "none", "--probe-epochs", "1", "--epochs", "1",
        "--batch-size", "5", "--lr", "1e-2", "--lora-dropout", "0", "--save-every", "2",
        "--device", "cpu", "--workers", "0", "--precision", "fp32", "--quiet",
    ]


def test_two_processes_match_one_on_the_same_global_batch(tmp_path, tiny_local_dir):
    data = write_labelled_folder(tmp_path / "data", n=12)  # 24 images: 5 steps an epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun sets; same arithmetic
    single = subprocess.run([sys.executable, *_args(data, tmp_path / "one", tiny_local_dir)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    double = subprocess.run([*launcher, *_args(data, tmp_path / "two", tiny_local_dir)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert double.returncode == 0, double.stderr

    def steps(out):
        lines = [json.loads(x) for x in (out / "train" / "metrics.jsonl").open()]
        return [x for x in lines if "loss" in x]

    one, two = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert len(two) == len(one) == 10  # rank 0 alone writes the log
    assert [x["images"] for x in two] == [5, 5, 5, 5, 4] * 2
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "loss_image", "loss_text", "loss_align"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a, b)
    # Weights agree too, up to float summation order, which Adam's normalisation amplifies
    # where gradients are near zero: far below how much training moved them.
    ref, got = load_file(tmp_path / "one" / "model.safetensors"), load_file(
        tmp_path / "two" / "model.safetensors")
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-3)
    checkpoint = torch.load(tmp_path / "two" / "train" / "checkpoint.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # every rank's RNG state

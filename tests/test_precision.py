"""The precision choice (aidetect/precision.py): per device, with CPU features faked."""

from __future__ import annotations

import pytest
import torch

from aidetect.errors import UsageError
from aidetect.precision import CpuFeatures, choose_precision, prepare_for_inference

CPU = torch.device("cpu")
AMX = CpuFeatures(amx_bf16=True, amx_int8=True)
PLAIN = CpuFeatures()


@pytest.mark.parametrize(("device", "cpu", "capability", "expected"), [
    ("cpu", AMX, None, "bf16"),
    ("cpu", CpuFeatures(avx512_bf16=True), None, "bf16"),
    ("cpu", CpuFeatures(arm_bf16=True), None, "bf16"),
    ("cpu", PLAIN, None, "fp32"),
    ("cpu", CpuFeatures(amx_int8=True, avx512_vnni=True), None, "fp32"),  # int8 never by auto
    ("cuda", PLAIN, (9, 0), "bf16"),
    ("cuda", PLAIN, (8, 0), "bf16"),
    ("cuda", PLAIN, (7, 5), "fp16"),
    ("mps", PLAIN, None, "fp16"),
])
def test_auto_picks_per_device(device, cpu, capability, expected) -> None:
    chosen = choose_precision(torch.device(device), "auto", cpu=cpu, cuda_capability=capability)
    assert chosen == expected


def test_forced_precisions_and_refusals() -> None:
    assert choose_precision(CPU, "fp32", cpu=AMX) == "fp32"
    assert choose_precision(CPU, "bf16", cpu=PLAIN) == "bf16"  # asked for: slow but allowed
    assert choose_precision(CPU, "int8", cpu=PLAIN) == "int8"
    with pytest.raises(UsageError, match="fp16 is for GPUs"):
        choose_precision(CPU, "fp16", cpu=AMX)
    with pytest.raises(UsageError, match="int8 runs on the CPU only"):
        choose_precision(torch.device("cuda"), "int8", cuda_capability=(9, 0))
    with pytest.raises(UsageError, match="use one of"):
        choose_precision(CPU, "fp8")


def test_describe_names_the_units() -> None:
    assert AMX.describe() == "AMX-BF16"
    assert PLAIN.describe() == "no bf16 units"


@pytest.mark.parametrize(("precision", "bound"), [("bf16", 1e-2), ("int8", 3e-2)])
def test_scores_stay_near_fp32(make_detector, precision, bound) -> None:
    torch.manual_seed(0)
    images = torch.randn(6, 3, 224, 224)
    reference = make_detector(seed=3).eval()
    with torch.inference_mode():
        expected = torch.sigmoid(reference(images).double())
    converted = prepare_for_inference(make_detector(seed=3).eval(), precision)
    with torch.inference_mode():
        logits = converted(images)
    assert logits.dtype == torch.float32  # the head runs in fp32 whatever the tower's type
    assert converted.head.weight.dtype == torch.float32
    gap = (torch.sigmoid(logits.double()) - expected).abs().max().item()
    assert gap <= bound
    if precision == "bf16":
        assert converted.tower_dtype == torch.bfloat16

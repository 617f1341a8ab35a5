"""The precision choice (aidetect/precision.py): per device, with CPU features faked."""

from __future__ import annotations

import pytest
import torch

from aidetect.cpu import CpuFeatures
from aidetect.errors import UsageError
from aidetect.precision import choose_precision, prepare_for_inference

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


@pytest.mark.parametrize(("device", "requested"), [("mps", "int8"), ("cpu", "fp16")])
def test_a_precision_the_device_lacks_is_refused(device, requested) -> None:
    with pytest.raises(UsageError, match=f"--precision {requested}"):
        choose_precision(torch.device(device), requested, cpu=AMX)


@pytest.mark.parametrize("cpu", [AMX, PLAIN, CpuFeatures(avx512_bf16=True),
                                 CpuFeatures(amx_int8=True, avx512_vnni=True)])
def test_auto_never_picks_what_the_cpu_lacks(cpu) -> None:
    chosen = choose_precision(CPU, "auto", cpu=cpu)
    assert chosen in ("fp32", "bf16")  # never int8, never a GPU type
    assert chosen == "fp32" or cpu.bf16


def test_fp16_the_apple_gpu_precision_stays_near_fp32(make_detector) -> None:
    """MPS scores in fp16 (no Apple GPU here): the same conversion, run on the CPU."""
    torch.manual_seed(0)
    images = torch.randn(4, 3, 224, 224)
    with torch.inference_mode():
        expected = torch.sigmoid(make_detector(seed=3)(images).double())
        converted = prepare_for_inference(make_detector(seed=3), "fp16")
        scores = torch.sigmoid(converted(images).double())
    assert converted.tower_dtype == torch.float16
    assert converted.head.weight.dtype == torch.float32
    assert (scores - expected).abs().max().item() <= 1e-2


def test_int8_warns_nothing(make_detector, recwarn) -> None:
    """torch.ao's deprecation warnings are silenced around the one call that raises them."""
    converted = prepare_for_inference(make_detector(), "int8")
    with torch.inference_mode():
        converted(torch.randn(2, 3, 224, 224))
    assert [str(w.message) for w in recwarn] == []
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized")
               for m in converted.visual.modules())


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_scores_repeat_across_runs_and_workers(make_detector, image_folder, precision) -> None:
    from aidetect.data import find_images
    from aidetect.scan import Scanner

    candidates = find_images([image_folder])
    scores = []
    for workers in (0, 2, 0):
        scanner = Scanner(make_detector(seed=4), device=CPU, threshold=0.5,
                          precision=precision)
        scores.append([r.score for r in scanner.scan(candidates, batch_size=2,
                                                     workers=workers)])
    assert None not in scores[0]
    for run in scores[1:]:
        assert run == pytest.approx(scores[0], abs=1e-5)


@pytest.mark.parametrize(("precision", "bound"), [("bf16", 1e-5), ("int8", 3e-2)])
def test_scores_across_batch_sizes(make_detector, image_folder, precision, bound) -> None:
    """On the tiny model's shapes bf16 scores do not depend on the batch (at ViT-B's, oneDNN
    picks its bf16 kernels by shape: `benchmarks/scan_precision.py` prints the drift);
    int8's do, within its bound: torch.ao quantizes a batch's activations with one scale."""
    from aidetect.data import find_images
    from aidetect.scan import Scanner

    candidates = find_images([image_folder])
    scanner = Scanner(make_detector(seed=4), device=CPU, threshold=0.5, precision=precision)
    runs = [[r.score for r in scanner.scan(candidates, batch_size=b, workers=0)]
            for b in (1, 2, 3)]
    for run in runs[1:]:
        assert run == pytest.approx(runs[0], abs=bound)


def test_cpu_group_size_per_precision_and_width(make_detector) -> None:
    """Groups of 8 only where they pay: a bf16 tower up to ViT-B's width."""
    from types import SimpleNamespace

    from aidetect.precision import (
        BF16_NARROW_WIDTH,
        CPU_GROUP,
        CPU_GROUP_BF16_NARROW,
        cpu_group_size,
    )

    assert (CPU_GROUP, CPU_GROUP_BF16_NARROW) == (4, 8)
    assert cpu_group_size(make_detector()) == CPU_GROUP  # fp32
    assert cpu_group_size(prepare_for_inference(make_detector(), "bf16")) == CPU_GROUP_BF16_NARROW
    assert cpu_group_size(prepare_for_inference(make_detector(), "int8")) == CPU_GROUP

    def tower(width: int):
        return SimpleNamespace(visual=SimpleNamespace(transformer=SimpleNamespace(width=width)),
                               tower_dtype=torch.bfloat16)

    assert cpu_group_size(tower(BF16_NARROW_WIDTH)) == CPU_GROUP_BF16_NARROW  # ViT-B-16
    assert cpu_group_size(tower(1024)) == CPU_GROUP  # ViT-L-14


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_the_converted_model_stays_on_its_device(make_detector, precision) -> None:
    """The scan's model on the meta device (no data): a tensor made on the host inside the
    forward pass would fail here as it fails on a GPU."""
    detector = prepare_for_inference(make_detector().to("meta").requires_grad_(False),
                                     precision)
    with torch.inference_mode():
        logits = detector(torch.empty(3, 3, 224, 224, device="meta")).float()
    assert logits.device.type == "meta" and logits.shape == (3,)

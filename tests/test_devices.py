"""Device choice (aidetect/devices.py): `auto` never picks an absent device, an absent one
asked for is a usage error, and the CPU's cores are shared between the model and decoding."""

from __future__ import annotations

import pytest
import torch

import aidetect.cpu
from aidetect.devices import default_threads, default_workers, resolve_device
from aidetect.errors import UsageError

CPU = torch.device("cpu")


@pytest.fixture
def machine(monkeypatch):
    """Fake which GPUs torch sees: machine(cuda=..., mps=...)."""

    def fake(*, cuda: bool = False, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return fake


@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (False, False, "cpu"), (False, True, "mps"), (True, False, "cuda"), (True, True, "cuda"),
])
def test_auto_picks_the_best_present_device(machine, cuda, mps, expected) -> None:
    machine(cuda=cuda, mps=mps)
    chosen = resolve_device("auto")
    assert chosen.type == expected
    assert {"cpu": True, "cuda": cuda, "mps": mps}[chosen.type]  # never an absent one


def test_mps_when_present(machine) -> None:
    machine(mps=True)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device(" MPS:0 ") == torch.device("mps")
    with pytest.raises(UsageError, match="one Apple GPU"):
        resolve_device("mps:1")


@pytest.mark.parametrize("name", ["mps", "mps:0"])
def test_absent_mps_is_a_usage_error_not_a_fallback(machine, name) -> None:
    machine(cuda=True, mps=False)
    with pytest.raises(UsageError, match=f"--device {name}: no Apple GPU") as error:
        resolve_device(name)
    assert "\n" not in error.value.message


def test_unknown_devices_name_the_choices(machine) -> None:
    machine()
    for name in ("tpu", "vulkan"):
        with pytest.raises(UsageError, match="cuda:N or mps"):
            resolve_device(name)


@pytest.fixture
def cores(monkeypatch, tmp_path):
    """Fake a CPU topology: cores(logical_to_core) with e.g. {0: 0, 1: 0, 2: 1, 3: 1}."""

    def fake(layout: dict[int, int]) -> None:
        for cpu, core in layout.items():
            siblings = ",".join(str(c) for c, k in layout.items() if k == core)
            folder = tmp_path / f"cpu{cpu}" / "topology"
            folder.mkdir(parents=True)
            (folder / "thread_siblings_list").write_text(siblings + "\n")
        monkeypatch.setattr(aidetect.cpu, "SYSFS_CPU", tmp_path)
        monkeypatch.setattr(aidetect.cpu, "allowed_cpus", lambda: sorted(layout))
        aidetect.cpu.physical_cores.cache_clear()

    yield fake
    aidetect.cpu.physical_cores.cache_clear()


def test_physical_cores_count_hyperthreads_once(cores) -> None:
    cores({0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 3})
    assert aidetect.cpu.physical_cores() == 4


@pytest.mark.parametrize(("layout", "workers", "threads"), [
    ({0: 0}, 0, 1),  # one core: decoding in the main process
    ({0: 0, 1: 1}, 1, 2),  # 2 cores: the decoder overlaps the model, which takes both
    ({0: 0, 1: 0, 2: 1, 3: 1}, 1, 2),  # 2 cores with hyper-threads: the same
    ({i: i for i in range(4)}, 1, 3),
    ({i: i for i in range(8)}, 2, 6),  # an 8-core laptop
    ({i: i // 2 for i in range(16)}, 2, 6),  # 8 cores, 16 threads
    ({i: i for i in range(32)}, 8, 24),
])
def test_cpu_split_oversubscribes_no_more_than_two_cores(cores, layout, workers,
                                                         threads) -> None:
    cores(layout)
    assert default_workers(CPU) == workers
    assert default_threads() == threads
    physical = aidetect.cpu.physical_cores()
    assert threads <= physical
    assert workers + threads == physical or physical <= 2


def test_gpu_decoders_keep_their_rule(cores) -> None:
    cores({i: i for i in range(16)})
    assert default_workers(torch.device("cuda")) == 4
    assert default_workers() == 4

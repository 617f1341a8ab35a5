"""This CPU's facts (aidetect/cpu.py), read without torch: its matrix units from the flags.
(Its physical cores: tests/test_devices.py, with the split they decide.)"""

from __future__ import annotations

from aidetect.cpu import CpuFeatures


def test_cpu_features_read_from_the_flags(monkeypatch, tmp_path) -> None:
    from aidetect import cpu

    flags = "fpu sse avx512f avx512_bf16 amx_tile amx_bf16 amx_int8 avx512_vnni"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    real_open = open
    monkeypatch.setattr(cpu, "open", lambda path, *a, **k: real_open(
        cpuinfo if path == "/proc/cpuinfo" else path, *a, **k), raising=False)
    monkeypatch.setattr(cpu.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    cpu.cpu_features.cache_clear()
    try:
        found = cpu.cpu_features()
    finally:
        cpu.cpu_features.cache_clear()
    assert found == CpuFeatures(amx_bf16=True, avx512_bf16=True, amx_int8=True,
                                avx512_vnni=True)
    assert found.describe() == "AMX-BF16, AVX512-BF16"

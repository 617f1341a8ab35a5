"""Before a download: fail at once without a network, say what is fetched and how big.

No test reaches the network: the probe is patched, or points at a socket on this machine.
"""

from __future__ import annotations

import socket

import pytest
from conftest import random_image, write_hub_cache

from aidetect.cli.app import main
from aidetect.errors import WeightsError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE off (the session sets it), so that the network checks run."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_network(online, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The probe answers "unreachable"; any real connection attempt fails the test."""
    import aidetect.downloads

    probes: list[str] = []
    monkeypatch.setattr(aidetect.downloads, "hub_reachable", lambda: probes.append("probe"))

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to connect: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return probes


def test_a_preset_without_network_fails_at_once_with_one_line(no_network, tmp_path, capsys):
    image = tmp_path / "a.png"
    random_image(64, 64).save(image)
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", str(image), "--workers", "0", "-f", "json"])  # the univfd preset
    captured = capsys.readouterr()
    assert exit_info.value.code == 4 and captured.out == "" and no_network == ["probe"]
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("aidetect: error: univfd: the ViT-L-14-quickgelu 'openai' "
                                   "weights (timm/vit_large_patch14_clip_224.openai) must be "
                                   "downloaded from the Hugging Face Hub, and huggingface.co "
                                   "cannot be reached (no network?)")


def test_a_cached_hub_detector_loads_without_network(no_network, hub_cache, detector_dir,
                                                     monkeypatch, tmp_path):
    from huggingface_hub import constants

    from aidetect.loading import load_detector

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    write_hub_cache(hub_cache, "owner/name", detector_dir, commit=COMMIT)
    loaded = load_detector("hf://owner/name")  # from the cache, no timeout waited
    assert loaded.revision == COMMIT and no_network == ["probe"]
    with pytest.raises(WeightsError, match="not in the Hugging Face cache .* and the Hub "
                                           "cannot be reached"):
        load_detector("hf://owner/other")


def test_a_download_is_announced_with_its_size(online, monkeypatch, hub_cache, capsys,
                                               tmp_path):
    import aidetect.downloads
    import aidetect.loading
    from aidetect.downloads import plan_download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # hub_cache sets it
    monkeypatch.setattr(aidetect.downloads, "hub_reachable", lambda: True)
    monkeypatch.setattr(aidetect.downloads, "remote_size",
                        lambda repo, name, revision=None: 1_710_000_000
                        if name.endswith(".safetensors") else None)
    download = plan_download("timm/x", ["open_clip_model.safetensors", "open_clip.bin"],
                             reference="univfd", what="the ViT-L-14 'openai' weights")
    assert download is not None and download.size == 1_710_000_000
    assert download.describe() == (
        f"downloading the ViT-L-14 'openai' weights (timm/x/open_clip_model.safetensors, "
        f"1.7 GB) into the Hugging Face cache ({hub_cache}); later runs use the cache")

    def loads_after_a_download(reference, *, device="cpu", on_download=None):
        on_download(download)
        raise WeightsError("stopped here")

    monkeypatch.setattr(aidetect.loading, "load_detector", loads_after_a_download)
    image = tmp_path / "a.png"
    random_image(64, 64).save(image)
    with pytest.raises(SystemExit):
        main(["scan", str(image), "--workers", "0", "-f", "json"])
    lines = capsys.readouterr().err.splitlines()
    assert lines == [download.describe(), "aidetect: error: stopped here"]
    with pytest.raises(SystemExit):
        main(["scan", str(image), "--workers", "0", "-f", "json", "--quiet"])
    assert capsys.readouterr().err == "aidetect: error: stopped here\n"


def test_nothing_is_planned_when_the_file_is_cached(online, hub_cache, detector_dir,
                                                    monkeypatch):
    import aidetect.downloads
    from aidetect.downloads import plan_download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # hub_cache sets it
    monkeypatch.setattr(aidetect.downloads, "hub_reachable", lambda: False)  # not asked
    write_hub_cache(hub_cache, "owner/name", detector_dir, commit=COMMIT)
    assert plan_download("owner/name", ["model.safetensors"], reference="r", what="w") is None


def test_the_probe_connects_to_the_endpoint_host(online, monkeypatch):
    from aidetect.downloads import hub_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2.0) is True
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # closed now
    assert hub_reachable(timeout=2.0) is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # through a proxy: no probe
    assert hub_reachable(timeout=2.0) is True


def test_download_sizes_read_as_the_hub_shows_them() -> None:
    from aidetect.downloads import Download

    lines = [Download("o/r", "w.safetensors", size, "/c", "the weights").describe()
             for size in (512, 1_500, 2_000_000, 1_710_000_000, None)]
    assert [line.split("w.safetensors")[1].split(")")[0] for line in lines] == [
        ", 512 bytes", ", 1.5 kB", ", 2.0 MB", ", 1.7 GB", ""]


def test_tag_weights_files_follow_open_clip() -> None:
    from aidetect.downloads import tag_weights_files

    repo, names = tag_weights_files("ViT-L-14-quickgelu", "openai")
    assert repo == "timm/vit_large_patch14_clip_224.openai"
    assert names == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]



def test_cached_tag_weights_are_used_without_asking_an_unreachable_hub(online, monkeypatch):
    from huggingface_hub import constants

    import aidetect.downloads
    from aidetect import loading

    monkeypatch.setattr(aidetect.downloads, "is_cached", lambda repo, name, revision=None: True)
    monkeypatch.setattr(aidetect.downloads, "hub_reachable", lambda: False)
    heard = []
    assert loading._prepare_backbone("ViT-L-14-quickgelu", "openai", "univfd", heard.append)
    assert heard == []  # nothing to download
    with loading._cache_only(True):
        assert constants.HF_HUB_OFFLINE is True  # each request fails at once: the cache answers
    assert constants.HF_HUB_OFFLINE is False
    monkeypatch.setattr(aidetect.downloads, "hub_reachable", lambda: True)
    assert not loading._prepare_backbone("ViT-L-14-quickgelu", "openai", "univfd", heard.append)

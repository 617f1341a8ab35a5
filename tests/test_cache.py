"""The score cache (aidetect/cache.py) and its key (aidetect/score_key.py): hashing with the
stat fast path, each key part, damaged/foreign/newer/read-only databases, the size cap."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

import aidetect.cache as cache_module
from aidetect.cache import DATABASE_NAME, CachedScore, FileDigest, ScoreCache, cache_folder
from aidetect.score_key import ModelFacts, compute_kind, read_model_facts, score_key

SCORE = CachedScore(score=0.25, logit=-1.0986, format="PNG", mode="RGB", width=64, height=48)


@pytest.fixture
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths `hash_files` actually reads (the fast path reads none)."""
    reads: list[str] = []
    real = cache_module.hash_file

    def counting(path: str) -> FileDigest:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(cache_module, "hash_file", counting)
    return reads


def open_cache(folder: Path, **kwargs) -> ScoreCache:
    kwargs.setdefault("racy_seconds", 0.0)  # files made a moment ago count as settled
    return ScoreCache.open(folder, **kwargs)


def sha(cache: ScoreCache, path: Path) -> str:
    digest = cache.hash_files([str(path)])[0]
    assert isinstance(digest, FileDigest)
    return digest.sha256


def test_cache_folder_from_option_environment_and_xdg(monkeypatch, tmp_path) -> None:
    assert cache_folder(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("AIDETECT_CACHE", str(tmp_path / "env"))
    assert cache_folder() == tmp_path / "env"
    monkeypatch.delenv("AIDETECT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "aidetect"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder() == tmp_path / "home" / ".cache" / "aidetect"


def test_scores_hit_under_their_key_only(tmp_path) -> None:
    with open_cache(tmp_path / "c") as cache:
        cache.store([("ab" * 32, SCORE)], "key-1", "{}")
        assert cache.lookup(["ab" * 32, "cd" * 32], "key-1") == {"ab" * 32: SCORE}
        assert cache.lookup(["ab" * 32], "key-2") == {}
    with open_cache(tmp_path / "c") as cache:  # kept across sessions
        assert cache.lookup(["ab" * 32], "key-1") == {"ab" * 32: SCORE}
        assert cache.warnings == []


def test_fast_path_reads_an_unchanged_file_once(tmp_path, counted_reads) -> None:
    image = tmp_path / "a.bin"
    image.write_bytes(b"content" * 100)
    with open_cache(tmp_path / "c") as cache:
        first = sha(cache, image)
    with open_cache(tmp_path / "c") as cache:
        assert sha(cache, image) == first
    assert counted_reads == [str(image)]  # the second session trusted the stat stamp


def test_edit_in_place_with_size_and_mtime_restored_is_caught_by_ctime(tmp_path,
                                                                        counted_reads) -> None:
    image = tmp_path / "a.bin"
    image.write_bytes(b"A" * 1000)
    with open_cache(tmp_path / "c") as cache:
        before = sha(cache, image)
        stat = image.stat()
        with open(image, "r+b") as handle:  # same inode, same size
            handle.write(b"B")
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime set back
        after = image.stat()
        assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        assert after.st_ctime_ns != stat.st_ctime_ns
        assert sha(cache, image) != before  # read again, and the content hash tells
    assert len(counted_reads) == 2


def test_a_ctime_change_alone_bypasses_the_fast_path(tmp_path, counted_reads) -> None:
    image = tmp_path / "a.bin"
    image.write_bytes(b"same")
    with open_cache(tmp_path / "c") as cache:
        first = sha(cache, image)
        os.chmod(image, 0o600)  # metadata only: ctime moves, content does not
        assert sha(cache, image) == first
    assert len(counted_reads) == 2


def test_touch_reads_again_and_the_content_still_matches(tmp_path, counted_reads) -> None:
    image = tmp_path / "a.bin"
    image.write_bytes(b"same")
    with open_cache(tmp_path / "c") as cache:
        first = sha(cache, image)
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns - 5_000_000_000))
        assert sha(cache, image) == first
        assert sha(cache, image) == first  # recorded again: the third call reads nothing
    assert len(counted_reads) == 2


def test_a_file_changed_just_now_is_not_trusted_by_stat(tmp_path, counted_reads) -> None:
    image = tmp_path / "a.bin"
    image.write_bytes(b"fresh")
    with ScoreCache.open(tmp_path / "c", racy_seconds=3600) as cache:
        sha(cache, image)
        sha(cache, image)
    assert len(counted_reads) == 2  # changed within the racy window: read each time


def test_unreadable_and_missing_files_are_errors_not_digests(tmp_path) -> None:
    with open_cache(tmp_path / "c") as cache:
        [missing] = cache.hash_files([str(tmp_path / "absent.png")])
    assert isinstance(missing, FileNotFoundError)


def test_no_cache_still_hashes(tmp_path) -> None:
    image = tmp_path / "a.bin"
    image.write_bytes(b"x")
    cache = ScoreCache.disabled()
    assert sha(cache, image) == sha(cache, image)
    cache.store([(sha(cache, image), SCORE)], "k", "{}")
    assert cache.lookup([sha(cache, image)], "k") == {} and not cache.usable


def test_a_damaged_database_is_set_aside_and_rebuilt(tmp_path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / DATABASE_NAME).write_bytes(b"this is not SQLite " * 200)
    with open_cache(folder) as cache:
        assert len(cache.warnings) == 1 and "damaged" in cache.warnings[0]
        assert "set aside" in cache.warnings[0] and cache.usable and cache.writable
        cache.store([("ab" * 32, SCORE)], "k", "{}")
    aside = [p for p in folder.iterdir() if ".bad-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not SQLite")
    with open_cache(folder) as cache:
        assert cache.lookup(["ab" * 32], "k") == {"ab" * 32: SCORE} and cache.warnings == []


def test_another_programs_database_is_set_aside(tmp_path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    with sqlite3.connect(folder / DATABASE_NAME) as other:
        other.execute("CREATE TABLE photos (name TEXT)")
    with open_cache(folder) as cache:
        assert "belongs to another program" in cache.warnings[0] and cache.usable
    assert any(".bad-" in p.name for p in folder.iterdir())


def test_a_newer_schema_is_left_alone(tmp_path) -> None:
    folder = tmp_path / "c"
    with open_cache(folder) as cache:
        cache.store([("ab" * 32, SCORE)], "k", "{}")
    with sqlite3.connect(folder / DATABASE_NAME) as db:
        db.execute("PRAGMA user_version = 99")
    with open_cache(folder) as cache:
        assert not cache.usable and "newer aidetect (schema 99" in cache.warnings[0]
        assert cache.lookup(["ab" * 32], "k") == {}
        cache.store([("cd" * 32, SCORE)], "k", "{}")  # a no-op, not an error
    with sqlite3.connect(folder / DATABASE_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99
        assert db.execute("SELECT count(*) FROM scores").fetchone()[0] == 1


def test_a_read_only_folder_is_read_with_a_warning(tmp_path, make_read_only) -> None:
    folder = tmp_path / "c"
    with open_cache(folder) as cache:
        cache.store([("ab" * 32, SCORE)], "k", "{}")
    make_read_only(folder)
    with open_cache(folder) as cache:
        assert len(cache.warnings) == 1 and not cache.writable
        found = cache.lookup(["ab" * 32], "k")
        assert found in ({"ab" * 32: SCORE}, {})  # read where SQLite can, never wrong
        cache.store([("cd" * 32, SCORE)], "k", "{}")  # not kept, and no error
    empty = tmp_path / "empty"
    empty.mkdir()
    make_read_only(empty)
    with open_cache(empty) as cache:
        assert not cache.usable and "cannot be written" in cache.warnings[0]


def test_least_recently_used_scores_go_past_the_cap(tmp_path, monkeypatch) -> None:
    clock = [1_000_000]
    monkeypatch.setattr(cache_module, "_now", lambda: clock[0])
    old = [f"{i:064x}" for i in range(10)]
    new = [f"{i + 100:064x}" for i in range(5)]
    with open_cache(tmp_path / "c", max_entries=10) as cache:
        cache.store([(s, SCORE) for s in old], "k", "{}")
        clock[0] += 10_000
        assert len(cache.lookup(old[:3], "k")) == 3  # used again: refreshed
        cache.store([(s, SCORE) for s in new], "k", "{}")
    with open_cache(tmp_path / "c", max_entries=10) as cache:
        kept = cache.lookup(old + new, "k")
        assert cache.info().scores == 9  # 15 down to 90% of the cap
    assert set(old[:3]) | set(new) <= set(kept)


def test_info_and_clear(tmp_path) -> None:
    image = tmp_path / "a.bin"
    image.write_bytes(b"x")
    with open_cache(tmp_path / "c") as cache:
        cache.store([(sha(cache, image), SCORE)], "k", "{}")
        info = cache.info()
        assert (info.scores, info.files, info.keys) == (1, 1, 1) and info.bytes_on_disk > 0
        assert cache.clear() == 1
        assert (cache.info().scores, cache.info().files) == (0, 0)


def test_a_kill_mid_write_leaves_a_consistent_database(tmp_path) -> None:
    folder = tmp_path / "c"
    writer = (
        "import sys\n"
        "from aidetect.cache import CachedScore, ScoreCache\n"
        "cache = ScoreCache.open(sys.argv[1])\n"
        "score = CachedScore(0.5, 0.0, 'PNG', 'RGB', 1, 1)\n"
        "for i in range(10**6):\n"
        "    cache.store([(f'{i * 64 + j:064x}', score) for j in range(64)], 'k', '{}')\n"
        "    if i == 3:\n"
        "        print('ready', flush=True)\n"
    )
    process = subprocess.Popen([os.sys.executable, "-c", writer, str(folder)],
                               stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent.parent)
    assert process.stdout.readline() == "ready\n"
    process.kill()  # SIGKILL, in the middle of some transaction
    assert process.wait() == -9
    with open_cache(folder) as cache:
        assert cache.warnings == [] and cache.info().scores >= 4 * 64
        assert cache.info().scores % 64 == 0  # whole transactions only
        with sqlite3.connect(folder / DATABASE_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- the key -------------------------------------------------------------------------------
def facts(**config) -> ModelFacts:
    return ModelFacts("ref", "folder", "/w", "0" * 64,
                      {"backbone": "b", "threshold": 0.5, "preprocess": None, **config})


def test_every_key_part_changes_the_key_but_the_threshold() -> None:
    base = score_key(facts(), "cpu/bf16").key
    assert score_key(facts(threshold=0.9), "cpu/bf16").key == base
    assert score_key(facts(), "cpu/fp32").key != base  # precision
    assert score_key(facts(), "cuda/bf16").key != base  # device kind
    assert score_key(facts(preprocess={"method": "center_crop"}), "cpu/bf16").key != base
    assert score_key(facts(backbone="other"), "cpu/bf16").key != base  # the config
    other = ModelFacts("ref", "folder", "/w", "1" * 64, facts().config)
    assert score_key(other, "cpu/bf16").key != base  # the weights
    assert score_key(facts(), "cpu/bf16", extra={"jpeg_quality": 75}).key != base


def test_a_new_scoring_revision_changes_the_key(monkeypatch) -> None:
    import aidetect.score_key as score_key_module

    base = score_key(facts(), "cpu/bf16").key
    monkeypatch.setattr(score_key_module, "SCORING_REVISION", score_key_module.SCORING_REVISION + 1)
    assert score_key(facts(), "cpu/bf16").key != base


def test_compute_kind_without_torch_on_cpu(monkeypatch) -> None:
    import aidetect.score_key as score_key_module

    monkeypatch.setattr(score_key_module, "cuda_possible", lambda: False)
    kind, device = compute_kind("auto", "fp32")
    assert (kind, device) == ("cpu/fp32", None)
    assert compute_kind("cpu", "int8") == ("cpu/int8", None)


def test_model_facts_match_what_loading_reports(detector_dir, hub_cache, tmp_path) -> None:
    from conftest import write_hub_cache

    from aidetect.hub import file_sha256
    from aidetect.loading import load_detector, save_single_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    write_hub_cache(hub_cache, "owner/name", detector_dir, commit=commit)
    single = save_single_file(load_detector(str(detector_dir)).detector, tmp_path / "d.safetensors")
    for reference in (str(detector_dir), "hf://owner/name", str(single)):
        found = read_model_facts(reference, sha256_of=file_sha256)
        loaded = load_detector(reference)
        assert (found.source, found.sha256, found.revision) == (
            loaded.source, loaded.sha256, loaded.revision)
        assert found.preprocess == loaded.detector.preprocess_config
        assert found.threshold == loaded.detector.threshold
        assert found.model_info().backbone == loaded.detector.backbone
    from aidetect.presets import get_preset

    preset = read_model_facts("univfd", sha256_of=file_sha256)  # no model, no download
    registry = get_preset("univfd")
    assert (preset.source, preset.sha256) == ("preset", registry.head_sha256)
    assert preset.config["pretrained"] == registry.pretrained  # the tag's weights: in the key
    assert read_model_facts(str(detector_dir), sha256_of=lambda path: None) is None


def _open_at_once(path: str, barrier, out) -> None:
    from aidetect.cache_file import connect

    barrier.wait()
    warnings: list[str] = []
    connect(Path(path), warnings)
    out.put(warnings)


def test_scans_starting_together_on_a_new_cache_all_use_it(tmp_path) -> None:
    """Six processes open a cache that does not exist yet, at the same instant: none may take
    the half-made database for another program's (and set it aside), or run without it."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(8):
        path = str(tmp_path / f"trial{trial}" / "scores.sqlite3")
        Path(path).parent.mkdir()
        barrier, out = context.Barrier(6), context.Queue()
        processes = [context.Process(target=_open_at_once, args=(path, barrier, out))
                     for _ in range(6)]
        for process in processes:
            process.start()
        warnings = [w for _ in processes for w in out.get(timeout=60)]
        for process in processes:
            process.join(timeout=60)
        assert warnings == [], warnings
        assert sorted(os.listdir(Path(path).parent))[0] == "scores.sqlite3"  # none set aside

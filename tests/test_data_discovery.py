"""Finding images under paths (aidetect.data.find_images): folders walked, symlinks,
exclusion, order, each file once, and unreadable or missing paths.

Files are written here, small; none is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import touch

from aidetect.data import (
    IMAGE_EXTENSIONS,
    Candidate,
    find_images,
)
from aidetect.errors import UsageError


def _found(candidates: list[Candidate], root: Path) -> list[str]:
    return [Path(c.path).relative_to(root).as_posix() for c in candidates]


# --- discovery --------------------------------------------------------------------------------
def test_image_extensions_cover_the_usual_ones():
    usual = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    assert usual <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() for ext in IMAGE_EXTENSIONS)


def test_folders_are_walked_recursively_for_image_extensions_any_case(tmp_path: Path):
    images = ["a.jpg", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.gif", "g.tif", "h.tiff",
              "UPPER.JPG", "Mixed.PnG", "sub/i.png", "sub/deeper/j.TIFF"]
    others = ["notes.txt", "icon.ico", "README", "photo.jpg.bak", "jpg", "sub/deeper/k.pdf"]
    for name in images + others:
        touch(tmp_path / name)
    candidates = find_images([tmp_path])
    assert all(c.error is None for c in candidates)
    assert _found(candidates, tmp_path) == sorted(images)


def test_a_file_named_explicitly_is_taken_whatever_its_name(tmp_path: Path):
    notes = touch(tmp_path / "notes.txt")
    bare = touch(tmp_path / "no_extension")
    assert find_images([notes, bare]) == [Candidate(str(bare)), Candidate(str(notes))]
    assert find_images([tmp_path]) == []  # but a folder walk skips them


def test_a_folder_named_like_an_image_is_walked_and_special_files_skipped(tmp_path: Path):
    touch(tmp_path / "album.jpg" / "inside.png")
    os.mkfifo(tmp_path / "pipe.jpg")  # not a regular file: reading it could block forever
    assert _found(find_images([tmp_path]), tmp_path) == ["album.jpg/inside.png"]


def test_order_is_sorted_by_path_whatever_the_creation_or_argument_order(tmp_path: Path):
    for name in ["z.png", "a/y.png", "m.png", "a/b.png", "B.png", "a-c.png"]:
        touch(tmp_path / name)
    first = find_images([tmp_path])
    assert [c.path for c in first] == sorted(c.path for c in first)
    assert len(first) == 6
    named = [tmp_path / "z.png", tmp_path / "a", tmp_path / "m.png"]
    assert find_images(named) == find_images(list(reversed(named)))
    assert find_images([tmp_path]) == first


def test_files_behind_symlinks_are_scanned(tmp_path: Path):
    real = touch(tmp_path / "elsewhere" / "real.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(real)
    assert find_images([root]) == [Candidate(str(root / "link.jpg"))]


def test_symlinked_folders_are_entered_only_with_follow_symlinks(tmp_path: Path):
    touch(tmp_path / "elsewhere" / "far.png")
    root = tmp_path / "root"
    touch(root / "near.png")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert _found(find_images([root]), root) == ["near.png"]
    followed = find_images([root], follow_symlinks=True)
    assert _found(followed, root) == ["linked/far.png", "near.png"]
    assert all(c.error is None for c in followed)


def test_a_symlinked_folder_named_explicitly_is_entered(tmp_path: Path):
    touch(tmp_path / "elsewhere" / "far.png")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert find_images([tmp_path / "link"]) == [Candidate(str(tmp_path / "link" / "far.png"))]


@pytest.mark.parametrize("target", ["..", ".", "absolute root"])
def test_a_symlink_to_a_parent_folder_never_loops(tmp_path: Path, target: str):
    # One link per case: without loop protection each case recurses, but only until the
    # system's limit on links in a path, so the test fails instead of hanging.
    root = tmp_path / "root"
    touch(root / "top.png")
    touch(root / "sub" / "low.png")
    link_target = root if target == "absolute root" else Path(target)
    (root / "sub" / "loop").symlink_to(link_target, target_is_directory=True)
    candidates = find_images([root], follow_symlinks=True)
    assert _found(candidates, root) == ["sub/low.png", "top.png"]
    assert all(c.error is None for c in candidates)


def test_a_self_referencing_symlink_is_a_candidate_with_an_error(tmp_path: Path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to("loop.jpg")
    touch(tmp_path / "ok.png")
    in_folder = find_images([tmp_path])
    assert [c.path for c in in_folder] == [str(loop), str(tmp_path / "ok.png")]
    assert "symbolic link loop" in in_folder[0].error
    assert in_folder[1].error is None
    named = find_images([loop])
    assert len(named) == 1 and "symbolic link loop" in named[0].error


def test_a_dangling_symlink_is_a_candidate_with_an_error(tmp_path: Path):
    dangling = tmp_path / "gone.jpg"
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "nowhere.txt")  # not an image name: skipped
    in_folder = find_images([tmp_path])
    assert [c.path for c in in_folder] == [str(dangling)]
    assert "broken symbolic link" in in_folder[0].error
    named = find_images([dangling])  # exists as a link, so no UsageError
    assert len(named) == 1 and "broken symbolic link" in named[0].error


def test_each_real_file_is_kept_once(tmp_path: Path):
    real = touch(tmp_path / "b_real.png")
    os.link(real, tmp_path / "a_hard.png")
    (tmp_path / "c_sym.png").symlink_to(real)
    touch(tmp_path / "d_other.png")
    expected = [Candidate(str(tmp_path / "a_hard.png")), Candidate(str(tmp_path / "d_other.png"))]
    assert find_images([tmp_path]) == expected  # under the first path in sorted order
    assert find_images([tmp_path, real, real, tmp_path / "c_sym.png"]) == expected
    assert find_images([real, real]) == [Candidate(str(real))]


def test_a_folder_reached_twice_is_listed_once_whatever_the_argument_order(tmp_path: Path):
    touch(tmp_path / "a_real" / "f.png")
    (tmp_path / "z_link").symlink_to(tmp_path / "a_real", target_is_directory=True)
    expected = [Candidate(str(tmp_path / "a_real" / "f.png"))]
    assert find_images([tmp_path / "a_real", tmp_path / "z_link"]) == expected
    assert find_images([tmp_path / "z_link", tmp_path / "a_real"]) == expected
    assert find_images([tmp_path / "a_real", tmp_path / "a_real"]) == expected


def test_exclude_matches_names(tmp_path: Path):
    for name in ["a.png", "b.jpg", "c.gif", "sub/d.png", "sub/e.jpg"]:
        touch(tmp_path / name)
    assert _found(find_images([tmp_path], exclude=["*.png"]), tmp_path) == [
        "b.jpg", "c.gif", "sub/e.jpg"]
    assert _found(find_images([tmp_path], exclude=["*.png", "*.gif"]), tmp_path) == [
        "b.jpg", "sub/e.jpg"]  # repeatable
    assert _found(find_images([tmp_path], exclude=("b.jpg",)), tmp_path) == [
        "a.png", "c.gif", "sub/d.png", "sub/e.jpg"]


def test_exclude_matches_paths(tmp_path: Path):
    for name in ["keep/a.png", "drop/b.png", "drop/c.png"]:
        touch(tmp_path / name)
    assert _found(find_images([tmp_path], exclude=["*/drop/*"]), tmp_path) == ["keep/a.png"]
    exact = (tmp_path / "drop" / "b.png").as_posix()
    assert _found(find_images([tmp_path], exclude=[exact]), tmp_path) == [
        "drop/c.png", "keep/a.png"]


def test_an_excluded_folder_is_not_entered(tmp_path: Path):
    # Neither "inside.png" nor its path matches "skipme": it is missing only because its folder
    # was not entered. The loop inside would be reported if it were.
    touch(tmp_path / "skipme" / "inside.png")
    (tmp_path / "skipme" / "loop.jpg").symlink_to("loop.jpg")
    touch(tmp_path / "kept" / "other.png")
    assert _found(find_images([tmp_path], exclude=["skipme"]), tmp_path) == ["kept/other.png"]
    assert find_images([tmp_path / "skipme"], exclude=["skipme"]) == []


def test_exclude_applies_to_files_named_explicitly(tmp_path: Path):
    png = touch(tmp_path / "a.png")
    jpg = touch(tmp_path / "b.jpg")
    assert find_images([png, jpg], exclude=["*.png"]) == [Candidate(str(jpg))]


def test_a_missing_path_is_a_usage_error_naming_it(tmp_path: Path):
    touch(tmp_path / "ok.png")
    missing = tmp_path / "no-such-thing.png"
    with pytest.raises(UsageError, match="no-such-thing.png") as info:
        find_images([tmp_path, missing])
    assert "\n" not in info.value.message
    many = [tmp_path / f"gone{i}" for i in range(5)]
    with pytest.raises(UsageError, match="gone0.*and 2 more"):
        find_images(many)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads folders whatever their permissions")
def test_an_unreadable_folder_is_a_candidate_with_an_error(tmp_path: Path):
    touch(tmp_path / "ok.png")
    locked = tmp_path / "locked"
    touch(locked / "hidden.png")
    locked.chmod(0)
    try:
        candidates = find_images([tmp_path])
    finally:
        locked.chmod(0o755)
    assert [c.path for c in candidates] == [str(locked), str(tmp_path / "ok.png")]
    assert "cannot read folder" in candidates[0].error
    assert "permission denied" in candidates[0].error.lower()
    assert candidates[1].error is None


def test_a_folder_that_cannot_be_listed_is_a_candidate_with_an_error(tmp_path: Path, monkeypatch):
    # The same case as above, also when the tests run as root.
    touch(tmp_path / "ok.png")
    locked = tmp_path / "locked"
    touch(locked / "hidden.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    candidates = find_images([tmp_path])
    assert candidates == [Candidate(str(locked), "cannot read folder: permission denied"),
                          Candidate(str(tmp_path / "ok.png"))]

"""lab/atomic.py: a file or directory replaced whole, or not at all."""

import pytest

from tasks import atomic


def test_text_replaces_the_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "sub" / "state.json"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failed_build_keeps_the_old_file_and_removes_the_partial(tmp_path):
    target = tmp_path / "disk.raw"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as partial:
        partial.write_text("half")  # as a subprocess would write it
        raise RuntimeError("mkfs failed")
    assert target.read_text() == "old" and not partial.exists()


def test_a_directory_kept_on_failure_is_cleared_by_the_next_build(tmp_path):
    target = tmp_path / "image"
    with pytest.raises(RuntimeError), atomic.replacing(target, remove_on_failure=False) as building:
        building.mkdir()
        (building / "debootstrap.log").write_text("why it failed")
        raise RuntimeError("debootstrap failed")
    assert (building / "debootstrap.log").exists() and not target.exists()
    with atomic.replacing(target) as building:
        assert not building.exists()
        building.mkdir()
        (building / "rootfs").mkdir()
    assert (target / "rootfs").is_dir() and not building.exists()

"""File modes and special files: every file the product writes for a user goes through one writer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from autopack_pipeline.services.reporting import write_atomic_text


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_new_file_gets_the_umask_mode(tmp_path: Path, umask_022) -> None:
    target = tmp_path / "report.md"
    write_atomic_text(target, "hello\n")
    assert _mode(target) == 0o644
    assert target.read_text() == "hello\n"


def test_existing_file_keeps_its_mode(tmp_path: Path, umask_022) -> None:
    target = tmp_path / "report.md"
    target.write_text("old\n")
    target.chmod(0o640)
    write_atomic_text(target, "new\n")
    assert _mode(target) == 0o640
    assert target.read_text() == "new\n"


def test_symlink_target_is_refused_and_named(tmp_path: Path) -> None:
    real = tmp_path / "real.md"
    real.write_text("keep\n")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    with pytest.raises(ValueError, match="link.md.*symbolic link"):
        write_atomic_text(link, "new\n")
    assert link.is_symlink() and real.read_text() == "keep\n"


def test_fifo_target_is_refused_and_named(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="pipe.md.*FIFO"):
        write_atomic_text(fifo, "new\n")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_device_node_target_is_refused_and_named(tmp_path: Path) -> None:
    device = tmp_path / "null.md"
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a second /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs privileges this test does not have")
    with pytest.raises(ValueError, match="null.md.*character device"):
        write_atomic_text(device, "new\n")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    write_atomic_text(tmp_path / "a.md", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]

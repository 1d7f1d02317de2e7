"""A power cut after a ``spooled`` receipt loses nothing: the spool directory is synced too.

``fdatasync`` on a spool file makes its bytes durable, but not the directory entry that
names it: a file created (or renamed to ``.flushing``) just before a power cut may be gone
after it. So the spool also syncs its directory after creating or renaming a file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import redis

from ingest.producer import enqueue_payment

from .conftest import MakeProducer, fields

pytestmark = pytest.mark.integration


def record_directory_syncs(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[str]:
    """Patch ``os.fsync`` to note each sync of ``directory`` (by inode), as "synced"."""
    synced: list[str] = []
    real_fsync = os.fsync
    directory.mkdir(parents=True, exist_ok=True)
    inode = directory.stat().st_ino

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        real_fsync(fd)
        if stat.S_ISDIR(info.st_mode) and info.st_ino == inode:
            synced.append("synced")

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


def test_spool_directory_is_synced_when_a_spool_file_is_created(
    closed_redis_url: str,
    spool_dir: Path,
    make_producer: MakeProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced = record_directory_syncs(monkeypatch, spool_dir)
    producer = make_producer(closed_redis_url)

    assert enqueue_payment(**fields("dir-sync-create"), producer=producer).status == "spooled"

    assert synced == ["synced"]


def test_spool_directory_is_synced_when_a_file_is_renamed_for_flushing(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    make_producer: MakeProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = make_producer(closed_redis_url)
    assert enqueue_payment(**fields("dir-sync-rename"), producer=producer).status == "spooled"
    producer.close()
    synced = record_directory_syncs(monkeypatch, spool_dir)
    renamed: list[str] = []
    real_rename = Path.rename

    def recording_rename(self: Path, target: str | os.PathLike[str]) -> Path:
        result = real_rename(self, target)
        renamed.append(f"renamed, then {len(synced)} sync(s)")
        return result

    monkeypatch.setattr(Path, "rename", recording_rename)

    assert make_producer(redis_url).flush_spool().queued == 1

    assert renamed == ["renamed, then 0 sync(s)"]
    assert synced == ["synced"]

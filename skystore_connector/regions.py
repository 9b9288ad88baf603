"""Region backends: where the bytes of physical copies live.

A blob is named by a relative path chosen by the store (``<bucket>/<version id>.<copy nonce>``, parts under
``_multipart/``); every physical copy has its own path, so concurrent writers never share a file. Blobs are
written through a ``BlobWriter``: bytes go to a temporary name and appear under the final name only on
``commit()``, so a crash leaves at most a temporary file (collected by the sweeper, see ``list_blobs``).

Errors: ``RegionUnavailable`` when the region itself cannot be reached (directory removed, I/O error, network),
``BlobNotFound`` when the region is fine but the blob is gone. The store fails over on both.
"""
from __future__ import annotations

import os
import secrets
from datetime import datetime
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import fsspec

from .config import RegionConfig

CHUNK = 1024 * 1024
TEMP_MARK = ".tmp-"


class RegionUnavailable(OSError):
    """The region cannot serve requests now (it is down, removed or failing)."""


class BlobNotFound(FileNotFoundError):
    """The region is up but holds no blob at that path."""


class BlobWriter(ABC):
    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None:
        """Make the blob visible under its final path (durably for local disks)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written; never raises."""


class Region(ABC):
    def __init__(self, name: str):
        self.name = name

    @abstractmethod
    def writer(self, path: str) -> BlobWriter: ...

    @abstractmethod
    def read(self, path: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Chunks of ``length`` bytes (all if None) from ``start``. The blob is opened before this returns, so a
        missing blob or a down region raises here rather than in the middle of a response."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove a blob; a missing blob is fine."""

    @abstractmethod
    def available(self) -> bool: ...

    @abstractmethod
    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """(path, modification time) of every blob and temporary file, for collecting leftovers."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def read_chunks(f, length: int | None) -> Iterator[bytes]:
    """Read the file-like ``f`` in CHUNK pieces, at most ``length`` bytes (all if None)."""
    remaining = length
    while remaining is None or remaining > 0:
        data = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not data:
            return
        if remaining is not None:
            remaining -= len(data)
        yield data


def _chunks(f, length: int | None) -> Iterator[bytes]:
    """``read_chunks``, closing ``f`` at the end (or when abandoned)."""
    try:
        yield from read_chunks(f, length)
    finally:
        f.close()


def _temp_name(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}{TEMP_MARK}{secrets.token_hex(4)}" if head else f".{tail}{TEMP_MARK}{secrets.token_hex(4)}"


class LocalRegion(Region):
    """A directory on a local disk. The directory is created once, when the region is opened; if it is removed
    later the region is down (writes do not silently recreate it)."""

    def __init__(self, name: str, root: str | Path, *, create: bool = True):
        super().__init__(name)
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, path: str) -> Path:
        return self.root / path

    def _check_up(self) -> None:
        if not self.root.is_dir():
            raise RegionUnavailable(f"region {self.name}: directory {self.root} is missing")

    def available(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.R_OK | os.W_OK | os.X_OK)

    def writer(self, path: str) -> BlobWriter:
        self._check_up()
        final = self._path(path)
        temp = self._path(_temp_name(path))
        try:
            final.parent.mkdir(exist_ok=True, parents=True)
            f = open(temp, "xb")
        except OSError as e:
            raise RegionUnavailable(f"region {self.name}: cannot write {path}: {e}") from e
        return _LocalWriter(self.name, f, temp, final)

    def read(self, path: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            f = open(self._path(path), "rb")
        except FileNotFoundError:
            self._check_up()
            raise BlobNotFound(f"region {self.name}: no blob {path}") from None
        except OSError as e:
            raise RegionUnavailable(f"region {self.name}: cannot read {path}: {e}") from e
        try:
            f.seek(start)
        except OSError as e:
            f.close()
            raise RegionUnavailable(f"region {self.name}: cannot read {path}: {e}") from e
        return _chunks(f, length)

    def delete(self, path: str) -> None:
        self._check_up()
        try:
            self._path(path).unlink(missing_ok=True)
        except OSError as e:
            raise RegionUnavailable(f"region {self.name}: cannot delete {path}: {e}") from e

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        self._check_up()
        for dirpath, _, filenames in os.walk(self.root):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                try:
                    mtime = os.stat(full).st_mtime
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield os.path.relpath(full, self.root).replace(os.sep, "/"), mtime


class _LocalWriter(BlobWriter):
    def __init__(self, region: str, f, temp: Path, final: Path):
        self._region, self._f, self._temp, self._final = region, f, temp, final

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise RegionUnavailable(f"region {self._region}: write failed: {e}") from e

    def commit(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._temp, self._final)
        except OSError as e:
            self.abort()
            raise RegionUnavailable(f"region {self._region}: cannot commit {self._final.name}: {e}") from e

    def abort(self) -> None:
        try:
            self._f.close()
            self._temp.unlink(missing_ok=True)
        except OSError:
            pass  # the region is failing; the sweeper collects the temporary file later


class FsspecRegion(Region):
    """Any fsspec filesystem (s3://, gs://, az://, memory://, file://). Object stores publish a blob atomically
    when its upload completes; other filesystems get the temporary name + move of ``LocalRegion``."""

    def __init__(self, name: str, url: str, storage_options: dict | None = None):
        super().__init__(name)
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        # a local filesystem shows a file while it is written; object stores (and memory://) publish on close
        self._atomic_upload = not {"file", "local"} & set(_protocols(self.fs))
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError:
            pass  # object stores need no directories; a store that is down shows up on first use

    def _path(self, path: str) -> str:
        return f"{self.root}/{path}"

    def available(self) -> bool:
        try:
            self.fs.ls(self.root, detail=False)
            return True
        except FileNotFoundError:
            return True  # an empty prefix of an object store
        except Exception:
            return False

    def writer(self, path: str) -> BlobWriter:
        final = self._path(path)
        target = final if self._atomic_upload else self._path(_temp_name(path))
        try:
            self.fs.makedirs(final.rpartition("/")[0], exist_ok=True)
            f = self.fs.open(target, "wb")
        except Exception as e:
            raise RegionUnavailable(f"region {self.name}: cannot write {path}: {e}") from e
        return _FsspecWriter(self, f, target, final)

    def read(self, path: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            f = self.fs.open(self._path(path), "rb")
            f.seek(start)
        except FileNotFoundError:
            raise BlobNotFound(f"region {self.name}: no blob {path}") from None
        except Exception as e:
            raise RegionUnavailable(f"region {self.name}: cannot read {path}: {e}") from e
        return _chunks(f, length)

    def delete(self, path: str) -> None:
        try:
            self.fs.rm_file(self._path(path))
        except FileNotFoundError:
            pass
        except Exception as e:
            raise RegionUnavailable(f"region {self.name}: cannot delete {path}: {e}") from e

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Blobs whose store reports no time are left out: their age is unknown, so they are never collected."""
        try:
            found = self.fs.find(self.root, detail=True)
        except Exception as e:
            raise RegionUnavailable(f"region {self.name}: cannot list: {e}") from e
        for full, info in found.items():
            mtime = _modified(info)
            if mtime is not None:
                yield full[len(self.root) + 1:], mtime


class _FsspecWriter(BlobWriter):
    def __init__(self, region: FsspecRegion, f, target: str, final: str):
        self._region, self._f, self._target, self._final = region, f, target, final

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except Exception as e:
            raise RegionUnavailable(f"region {self._region.name}: write failed: {e}") from e

    def commit(self) -> None:
        try:
            self._f.close()
            if self._target != self._final:
                self._region.fs.mv(self._target, self._final)
        except Exception as e:
            self.abort()
            raise RegionUnavailable(f"region {self._region.name}: cannot commit {self._final}: {e}") from e

    def abort(self) -> None:
        try:
            if hasattr(self._f, "discard"):  # buffered uploads (s3fs): abort the multipart upload
                self._f.discard()
            self._f.close()
        except Exception:
            pass
        try:
            self._region.fs.rm_file(self._target)
        except Exception:
            pass  # never published, or the sweeper collects it


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _modified(info: dict) -> float | None:
    for field in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


def open_region(config: RegionConfig) -> Region:
    if config.is_local:
        return LocalRegion(config.name, config.url)
    return FsspecRegion(config.name, config.url, config.storage_options)

"""Atomic file writes: a file is either its old version or its complete new one, also after a crash
or power loss (temporary file in the same folder, fsync, rename, fsync of the folder)."""

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator


def _fsync_directory(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
  """A binary file object whose content replaces `path` only when the block ends without error;
  on error the temporary file is removed and `path` is left as it was."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode.
    os.replace(temp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temp)
    raise
  _fsync_directory(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_writer(path) as f:
    f.write(data)


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  atomic_write_bytes(path, text.encode("utf-8"))

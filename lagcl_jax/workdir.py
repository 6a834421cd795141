"""A work directory belongs to one run: one config, one training process at a time.

`claim(workdir, config)` runs before a run writes anything. It takes an exclusive lock on
`WORKDIR/run.lock` (fcntl.flock: released by the kernel when the holder dies, so a lock left by a
killed run is simply taken over) and compares the config with the run's saved `config.json`.
Only settings that may change on resume are allowed to differ (`RESUMABLE_FIELDS`, and paths that
name the same files); any other difference stops with a short diff. `overwrite=True` starts afresh:
the old run is moved aside to `WORKDIR.old-<timestamp>`, never deleted.
"""

import contextlib
import dataclasses
import errno
import fcntl
import glob
import json
import os
import time
from typing import Iterator

from absl import logging

from lagcl_jax import config as config_lib

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"

# May differ between the config.json of a run and the config that resumes it.
RESUMABLE_FIELDS = ("num_epochs", "patience", "checkpoint_every_steps", "eval_batch_size",
                    "download")
# Compared by the files they name, not by spelling (e.g. relative and absolute).
PATH_FIELDS = ("data_dir", "train_file", "test_file", "metadata_dir", "augment_file",
               "user_group_file", "item_group_file")


class WorkDirError(RuntimeError):
  """The work directory cannot be used by this run; the message says why and what to do."""


def _same_path(a: str, b: str) -> bool:
  if a == b:
    return True
  try:
    return bool(a) and bool(b) and os.path.samefile(a, b)
  except OSError:  # One of them does not exist: they name different files.
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def config_differences(saved: config_lib.Config, new: config_lib.Config) -> list[str]:
  """`--name: saved -> new` for every setting that must not change within a run."""
  lines = []
  for field in dataclasses.fields(config_lib.Config):
    name = field.name
    old, value = getattr(saved, name), getattr(new, name)
    if name in RESUMABLE_FIELDS or old == value:
      continue
    if name in PATH_FIELDS and _same_path(old, value):
      continue
    lines.append(f"  --{name}: {old!r} in the run, {value!r} now")
  return lines


def saved_config(workdir: str) -> config_lib.Config | None:
  """The config in `workdir/config.json`, or None when there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return config_lib.config_from_dict(json.load(f))
    except (ValueError, TypeError) as e:
      raise WorkDirError(f"{path} is not a run's config ({e}); use another --workdir, or "
                         "--overwrite to move this folder's content aside.") from e


def holds_a_run(workdir: str) -> bool:
  """Whether `workdir` holds anything a run wrote (not just its lock file)."""
  return any(name != LOCK_FILE for name in os.listdir(workdir))


def move_aside(workdir: str) -> str:
  """Moves everything in `workdir` but the lock file to `WORKDIR.old-<timestamp>`; returns it."""
  base = f"{os.path.abspath(workdir).rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  target, n = base, 1
  while os.path.exists(target):
    n += 1
    target = f"{base}-{n}"
  os.makedirs(target)
  for name in os.listdir(workdir):
    if name != LOCK_FILE:
      os.rename(os.path.join(workdir, name), os.path.join(target, name))
  return target


def _lock(workdir: str) -> int:
  """Takes the run lock (non-blocking) and writes this pid into it; returns its descriptor."""
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    if e.errno not in (errno.EAGAIN, errno.EACCES):
      raise
    raise WorkDirError(
        f"{workdir} is in use by another run (pid {holder}). Wait for it to finish, or use "
        "another --workdir.") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  return fd


@contextlib.contextmanager
def claim(workdir: str, config: config_lib.Config, overwrite: bool = False) -> Iterator[None]:
  """Holds `workdir` for a run of `config` for the duration of the block.

  Raises:
    WorkDirError: another process holds it, or it holds a run of another config (and not
      `overwrite`).
  """
  os.makedirs(workdir, exist_ok=True)
  fd = _lock(workdir)
  try:
    if overwrite:
      if holds_a_run(workdir):
        logging.warning("--overwrite: moved the previous run in %s to %s.", workdir,
                        move_aside(workdir))
    else:
      saved = saved_config(workdir)
      if saved is not None:
        differences = config_differences(saved, config)
        if differences:
          raise WorkDirError(
              f"{workdir} holds a run of another config:\n" + "\n".join(differences) +
              "\nUse another --workdir for the new run, or --overwrite to start afresh here (the "
              "old run is moved to a .old-<timestamp> folder next to it).")
      for temp in glob.glob(os.path.join(workdir, ".*.tmp")):  # Left by a killed atomic write.
        os.remove(temp)
    yield
  finally:
    os.close(fd)  # Releases the lock.

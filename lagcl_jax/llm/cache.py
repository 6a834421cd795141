"""An on-disk, append-only cache of LLM results, one JSON line per prompt.

Each line is `{"key": ..., "value": ..., "check": ...}` where `key` is the sha256 of everything
that determines the result (model, prompt, decoding parameters) and `check` a digest of key and
value. A process appends only to its own file (named after its stage and shard) and flushes
after every batch, so a killed run loses at most the batch in flight. On load every `*.jsonl`
file of the folder is read: shard files copied into one folder merge. A truncated, unparsable
or altered line fails its check, is counted as corrupt and ignored, so its prompt is simply
recomputed.
"""

import glob
import hashlib
import json
import os
from typing import Any, Iterable, Optional

from absl import logging


def request_key(request: dict[str, Any]) -> str:
  """The cache key of a request: sha256 of its canonical JSON."""
  return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _check(key: str, value: Any) -> str:
  return hashlib.sha256((key + json.dumps(value, sort_keys=True)).encode()).hexdigest()[:16]


class PromptCache:
  """Results by key, loaded from a folder of JSONL files; new results go to `writer_file`."""

  def __init__(self, directory: str, writer_name: str):
    self.directory = directory
    self.writer_path = os.path.join(directory, f"{writer_name}.jsonl")
    self.num_corrupt = 0
    self._values: dict[str, Any] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
      self._load(path)
    if self.num_corrupt:
      logging.warning("%s: %d corrupt or truncated cache lines ignored; their prompts will be "
                      "recomputed.", directory, self.num_corrupt)

  def _load(self, path: str) -> None:
    with open(path, "rb") as f:
      for line in f:
        try:
          entry = json.loads(line)
          key, value = entry["key"], entry["value"]
          valid = isinstance(key, str) and entry["check"] == _check(key, value)
        except (ValueError, TypeError, KeyError):
          valid = False
        if valid:
          self._values[key] = value
        elif line.strip():
          self.num_corrupt += 1

  def __len__(self) -> int:
    return len(self._values)

  def get(self, key: str) -> Optional[Any]:
    return self._values.get(key)

  def put_many(self, entries: Iterable[tuple[str, Any]]) -> None:
    """Appends entries to this process's file and flushes them to disk."""
    entries = list(entries)
    if not entries:
      return
    os.makedirs(self.directory, exist_ok=True)
    lines = "".join(json.dumps({"key": k, "value": v, "check": _check(k, v)}) + "\n"
                    for k, v in entries)
    with open(self.writer_path, "a+b") as f:
      if f.tell() > 0:  # a run killed mid-line left no newline: start on a fresh line
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
          lines = "\n" + lines
      f.write(lines.encode())
      f.flush()
      os.fsync(f.fileno())
    self._values.update(entries)

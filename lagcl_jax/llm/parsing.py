"""Robust reading of LLM answers and of id lists: what cannot be used is dropped and counted,
never raised."""

import collections
import re
from typing import Optional

import numpy as np

MAX_SUMMARY_CHARS = 400

_FIELD = re.compile(r"^[\s*#>-]*(name|characteristics|key characteristics|reasoning)[\s*]*:"
                    r"[\s*]*(.*)$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"[<>\[\]]|^\.\.\.$")  # the prompt's template copied back
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*)$")


def clean_summary(text: str) -> Optional[str]:
  """The first paragraph of a generated summary, whitespace collapsed, cut after the last full
  sentence when it was cut off at max_new_tokens; None when nothing usable is left."""
  paragraph = " ".join(text.strip().split("\n\n")[0].split())
  if len(paragraph) > MAX_SUMMARY_CHARS:
    paragraph = paragraph[:MAX_SUMMARY_CHARS]
  last_stop = max(paragraph.rfind(". "), paragraph.rfind("! "), paragraph.rfind("? "))
  if not paragraph.endswith((".", "!", "?")) and last_stop > 0:
    paragraph = paragraph[:last_stop + 1]
  return paragraph.strip() or None


def parse_group_description(text: str) -> Optional[dict]:
  """Reads `Name: / Characteristics: / Reasoning:` lines (markdown and bullets tolerated).

  Returns {"group_name", "key_characteristics" (list), "reasoning"} or None when the answer
  has no name or no characteristic.
  """
  fields = collections.defaultdict(list)
  current = None
  for line in text.splitlines():
    match = _FIELD.match(line)
    if match:
      current = match.group(1).lower().replace("key ", "")
      line = match.group(2)
    elif current == "characteristics" and _BULLET.match(line):
      line = _BULLET.match(line).group(1)
    if current and line.strip():
      fields[current].append(line.strip().strip("*").strip())
  name = " ".join(fields["name"][:1]).strip(" \"'")
  traits = [t.strip(" .\"'") for part in fields["characteristics"] for t in re.split(r";", part)]
  traits = list(dict.fromkeys(t for t in traits if t and not _PLACEHOLDER.search(t)))
  if not name or _PLACEHOLDER.search(name) or not traits:
    return None
  return {"group_name": name, "key_characteristics": traits,
          "reasoning": " ".join(fields["reasoning"]).strip()}


def resolve_ids(raw_ids: list, index: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
  """Maps raw ids (JSON scalars) to internal indices, -1 where dropped.

  Dropped and counted: invalid ids (not a non-empty string or integer), ids absent from
  `index`, and repeats of an id already kept. Returns (int64 [len(raw_ids)], counts).
  """
  counts = {"invalid": 0, "unknown": 0, "duplicate": 0}
  seen = set()
  internal = np.full(len(raw_ids), -1, np.int64)
  for position, raw in enumerate(raw_ids):
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
      counts["invalid"] += 1
      continue
    key = str(raw).strip()
    if key not in index:
      counts["unknown"] += 1
    elif key in seen:
      counts["duplicate"] += 1
    else:
      seen.add(key)
      internal[position] = index[key]
  return internal, counts

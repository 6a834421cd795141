"""Semantic groups of users and items for the group-aware losses.

Sources (`--groups`):
  * files: the paper's `id,group` lines (`user_group.txt`, `item_group.txt`) or its grouping
    JSON (`*.json`: a list of {group_id, group_name, key_characteristics, reasoning, members}).
  * metadata: groups derived from MovieLens metadata, not from an LLM: items by their first
    listed genre, users by the genre they liked most in train.
  * none: everything in group 0.

Group ids are dense, 0-based int32: file groups in their natural order (numeric when all
labels are numeric, else lexicographic; JSON groups in listed order). Nodes absent from the
source get one extra group, the last id. A file id matches a data set id when the strings are
equal or, both being digit strings, when their integer values are equal ("012" matches "12");
the authors' code compared ints with strings and silently put every node in group 0, so low
coverage is loud: below 90% a warning, below `--min_group_coverage` (default 50%) an error.
With groups on, a grouping that puts every user (or every item) in one group stops the run
unless `--allow_degenerate_groups`: the group-aware losses would silently be plain ones.
"""

import json
from typing import Any

from absl import logging
import numpy as np

from lagcl_jax.config import Config
from lagcl_jax.data_types import Dataset

LOW_COVERAGE = 0.9


def _is_number(text: str) -> bool:
  return text.isascii() and text.isdigit()


def _natural_sorted(labels: set[str]) -> list[str]:
  if all(_is_number(label) for label in labels):
    return sorted(labels, key=lambda label: (int(label), label))
  return sorted(labels)


def _assign(membership: dict[str, str], labels: list[str], raw_ids: np.ndarray, kind: str,
            source: str, min_coverage: float) -> tuple[np.ndarray, dict[str, Any]]:
  """Maps each raw id to the dense group of its label; unmatched ids get an extra group.

  Raises:
    ValueError: fewer than `min_coverage` of the ids are in the file.
  """
  dense = {label: g for g, label in enumerate(labels)}
  by_number = {}
  for file_id in membership:
    if _is_number(file_id):
      by_number.setdefault(int(file_id), file_id)
  groups = np.full(len(raw_ids), -1, np.int32)
  matched = set()
  for node, raw_id in enumerate(raw_ids.tolist()):
    file_id = raw_id if raw_id in membership else None
    if file_id is None and _is_number(raw_id):
      file_id = by_number.get(int(raw_id))
    if file_id is not None:
      groups[node] = dense[membership[file_id]]
      matched.add(file_id)
  missing = int((groups < 0).sum())
  num_groups = len(labels) + (1 if missing else 0)
  groups[groups < 0] = len(labels)
  coverage = 1.0 - missing / len(raw_ids) if len(raw_ids) else 1.0
  report = {
      "source": source, "covered": len(raw_ids) - missing, "missing": missing,
      "coverage": coverage, "num_groups": num_groups,
      "groups_used": int(np.unique(groups).size),
      "unknown_ids_in_file": len(membership) - len(matched), "labels": list(labels)}
  if coverage < min_coverage:
    raise ValueError(
        f"{source}: only {report['covered']:,} of {len(raw_ids):,} {kind}s ({coverage:.1%}) "
        f"are in this group file, below --min_group_coverage={min_coverage} "
        f"({report['unknown_ids_in_file']:,} of its ids are not in the data). Is it the group "
        "file of this data set? Its ids must be the interaction files' raw ids.")
  if coverage < LOW_COVERAGE:
    logging.warning(
        "LOW GROUP COVERAGE: only %d of %d %ss (%.1f%%) are in %s; the other %d share the "
        "extra group %d. Do the file's ids match the interaction files' ids?",
        report["covered"], len(raw_ids), kind, 100 * coverage, source, missing, len(labels))
  return groups, report


def load_group_file(path: str, raw_ids: np.ndarray, kind: str, min_coverage: float = 0.5
                    ) -> tuple[np.ndarray, dict[str, Any]]:
  """Reads `id,group` lines (no header; spaces around fields allowed) for `raw_ids`.

  Args:
    path: the group file.
    raw_ids: [n] raw id strings of the data set's users or items, in internal order.
    kind: "user" or "item", for messages.
    min_coverage: the least fraction of raw_ids the file must cover.

  Returns:
    (groups, report): int32 [n] dense group per node, and a dict with covered, missing,
    coverage, num_groups, groups_used, unknown_ids_in_file and labels (file label per id).

  Raises:
    ValueError: a malformed line or an id listed with two groups, naming file and line, or
      coverage below min_coverage.
  """
  membership, first_line = {}, {}
  with open(path, encoding="utf-8-sig") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = [field.strip() for field in line.split(",")]
      if len(fields) != 2 or not all(fields):
        raise ValueError(f"{path}, line {number}: expected `id,group`, got {line.strip()!r}")
      node, group = fields
      if membership.get(node, group) != group:
        raise ValueError(f"{path}, line {number}: {kind} {node!r} is already in group "
                         f"{membership[node]!r} (line {first_line[node]}), now {group!r}")
      membership[node] = group
      first_line.setdefault(node, number)
  return _assign(membership, _natural_sorted(set(membership.values())), raw_ids, kind, path,
                 min_coverage)


def load_group_json(path: str, raw_ids: np.ndarray, kind: str, min_coverage: float = 0.5
                    ) -> tuple[np.ndarray, dict[str, Any]]:
  """Reads the paper's grouping JSON; same return as `load_group_file`.

  Groups get dense ids in listed order. A member listed in several groups stays in the first
  (which is what the authors' `id,group` files record); such members are counted in
  report["members_in_several_groups"]; report["names"] holds the group names.
  """
  with open(path, encoding="utf-8-sig") as f:
    try:
      entries = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from e
  if not isinstance(entries, list):
    raise ValueError(f"{path}: expected a JSON list of groups, got {type(entries).__name__}")
  labels, names, membership, repeated = [], [], {}, 0
  for index, entry in enumerate(entries):
    if (not isinstance(entry, dict) or "group_id" not in entry
        or not isinstance(entry.get("members"), list)):
      raise ValueError(f"{path}: group entry {index} lacks `group_id` or a `members` list")
    label = str(entry["group_id"])
    if label in labels:
      raise ValueError(f"{path}: group entry {index} repeats group_id {label!r}")
    labels.append(label)
    names.append(str(entry.get("group_name", label)))
    for member in map(str, entry["members"]):
      if member in membership:
        repeated += 1
      else:
        membership[member] = label
  groups, report = _assign(membership, labels, raw_ids, kind, path, min_coverage)
  report.update(names=names, members_in_several_groups=repeated)
  return groups, report


def metadata_groups(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Groups derived from MovieLens metadata (not from an LLM).

  Genres are numbered alphabetically and shared by users and items. An item's group is its
  first listed genre; a user's group is the genre of most of their train (+1) items, counting
  every genre of each item, ties to the lowest genre id. Items without genres and users who
  liked nothing with a genre share one extra group, the last id.

  Returns:
    (user_groups, item_groups, report).
  """
  genres = sorted({g for meta in dataset.item_meta for g in meta.get("genres", [])})
  index = {genre: g for g, genre in enumerate(genres)}
  extra = len(genres)
  item_genres = np.zeros((dataset.num_items, max(extra, 1)), np.float64)
  item_groups = np.full(dataset.num_items, extra, np.int32)
  for item, meta in enumerate(dataset.item_meta):
    listed = meta.get("genres", [])
    if listed:
      item_groups[item] = index[listed[0]]
      item_genres[item, [index[g] for g in listed]] = 1
  liked = dataset.train.positives
  counts = np.stack([
      np.bincount(liked.users, weights=item_genres[liked.items, g], minlength=dataset.num_users)
      for g in range(item_genres.shape[1])], axis=1)
  user_groups = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), extra).astype(np.int32)

  def part(groups: np.ndarray, without: str) -> dict[str, Any]:
    missing = int((groups == extra).sum())
    return {"source": "metadata", "num_groups": extra + (1 if missing else 0),
            "groups_used": int(np.unique(groups).size), without: missing,
            "labels": genres + (["(no genre)"] if missing else [])}

  report = {"source": "metadata", "user": part(user_groups, "users_without_liked_genre"),
            "item": part(item_groups, "items_without_genre")}
  return user_groups, item_groups, report


def _load_files(config: Config, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, dict]:
  loaded = {}
  for kind, flag, raw_ids in (("user", "user_group_file", dataset.user_ids),
                              ("item", "item_group_file", dataset.item_ids)):
    path = getattr(config, flag)
    if not path:
      raise ValueError(f"--groups=files needs --{flag}, which is empty.")
    loader = load_group_json if path.lower().endswith(".json") else load_group_file
    loaded[kind] = loader(path, raw_ids, kind, config.min_group_coverage)
  report = {"source": "files", "user": loaded["user"][1], "item": loaded["item"][1]}
  return loaded["user"][0], loaded["item"][0], report


def shuffle_groups(user_groups: np.ndarray, item_groups: np.ndarray,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The group labels permuted over users and over items: random groups of the same sizes (the
  control that tells whether a grouping's content matters)."""
  rng = np.random.default_rng([seed, 2])
  return rng.permutation(user_groups), rng.permutation(item_groups)


def build_groups(config: Config, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, dict]:
  """User and item groups as `config.groups` says: none, files or metadata.

  Returns:
    (user_groups int32 [num_users], item_groups int32 [num_items], report) where report has
    "source" and per-kind "user"/"item" dicts (num_groups, coverage, ...).
  """
  if config.groups == "none":
    report = {"source": "none", "user": {"num_groups": 1}, "item": {"num_groups": 1}}
    user_groups = np.zeros(dataset.num_users, np.int32)
    item_groups = np.zeros(dataset.num_items, np.int32)
  elif config.groups == "files":
    user_groups, item_groups, report = _load_files(config, dataset)
  elif config.groups == "metadata":
    if not any(meta.get("genres") for meta in dataset.item_meta):
      raise ValueError("--groups=metadata: the data set has no item genres "
                       "(for --dataset=lagcl, set --metadata_dir).")
    user_groups, item_groups, report = metadata_groups(dataset)
  else:
    raise ValueError(f"--groups={config.groups!r}: expected none, files or metadata.")
  if config.shuffle_groups:
    user_groups, item_groups = shuffle_groups(user_groups, item_groups, config.seed)
    report["shuffled"] = True
  if config.uses_groups and not config.allow_degenerate_groups:
    for kind, assigned in (("user", user_groups), ("item", item_groups)):
      if assigned.size and np.unique(assigned).size < 2:
        raise ValueError(
            f"--groups={config.groups}: every {kind} is in the same group, so the group-aware "
            "losses reduce to plain ones. Check the grouping, use --groups=none, or pass "
            "--allow_degenerate_groups to train anyway.")
  for kind in ("user", "item"):
    part = report[kind]
    logging.info("Groups (%s) for %ss: %d groups, %s used, coverage %s", report["source"], kind,
                 part["num_groups"], part.get("groups_used", "all"),
                 f"{part['coverage']:.1%}" if "coverage" in part else "n/a")
  return user_groups, item_groups, report

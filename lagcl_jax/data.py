"""Loading a data set: read its files, number its ids, split it, check it and summarise it.

`load_dataset(config)` is the entry point. The files come from one of the readers
(`--dataset`): raw MovieLens (`lagcl_jax.movielens`), the paper's format, delimited rating files,
adjacency lists or RecBole atomic files (`lagcl_jax.readers`). Splits follow
`lagcl_jax.splits`.

Rules (all counted in `Dataset.summary`):
  * Raw ids stay strings, exactly as written. Internal indices number every user and item that
    appears in train, valid or test (so items seen only in valid or test are rankable), in
    numeric order when all ids are numeric, else lexicographic.
  * A malformed row raises ValueError naming the file and 1-based line; with `skip_bad_rows` it
    is skipped and counted instead, and more than `max_bad_fraction` skipped rows in one file
    stop the load (`parsing.BadRows`). An empty file stops it too.
  * A user-item pair repeated within one file keeps its last row.
  * Given files: `--test_file` and `--valid_file` are used as given, except that a pair also in
    train (or a test pair also in valid) is dropped from the later split: it is masked as a
    known item during full ranking, so it could only ever be a guaranteed miss.
  * Without `--test_file`, test is split off the train file, and without `--valid_file`
    validation is carved from train, both by `--split` (see `lagcl_jax.splits`).
  * `augment_file` rows (paper format, raw ids) are added to train after validation is carved
    and kept apart as `Dataset.augmented`. An unknown raw id is an error (counted skip under
    `skip_bad_rows`); a pair already in train or valid is dropped and counted. The test split
    never shapes training data: an augmented pair that happens to be a test pair stays (counted
    as `augment_test_pair_rows`). Augmented rows are predictions, not observations, so
    evaluation does not mask them: an LLM's correct guess of a test item can count as a hit,
    and a wrong one takes a slot in the ranking.
  * Cold test users (test positives but no train positive: training never updates their
    embedding) are counted as `cold_test_users`; evaluation reports them apart (`test_cold/`).
"""

import dataclasses
import os
from typing import Any, Optional

from absl import logging
import numpy as np

from lagcl_jax import movielens
from lagcl_jax import readers
from lagcl_jax import splits
from lagcl_jax.config import Config
from lagcl_jax.data_types import Dataset, Interactions
from lagcl_jax.parsing import BadRows, RawRows


@dataclasses.dataclass
class Source:
  """What the readers found: row files by split ("train" always; "valid", "test" when given)
  and side information by raw id."""
  parts: dict[str, RawRows]
  item_meta: dict[str, dict]
  user_meta: dict[str, dict]


def _read_file(path: str, flag: str) -> tuple[bytes, str]:
  if not path:
    raise ValueError(f"--{flag} is empty: --dataset=lagcl, ratings, adjacency and recbole "
                     "read --train_file (and optionally --valid_file, --test_file).")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--{flag}={path!r}: file not found.")
  with open(path, "rb") as f:
    return f.read(), path


def _recbole_side_file(config: Config, suffix: str) -> str:
  """<name>.item / <name>.user beside the train file (`x.inter` or `x.train.inter`)."""
  stem = config.train_file.removesuffix(".inter").removesuffix(".train")
  path = stem + suffix
  return path if os.path.isfile(path) else ""


def _read_rows(config: Config, flag: str, bad_rows: BadRows) -> RawRows:
  """Reads one interaction file of `config.dataset`'s format."""
  data, name = _read_file(getattr(config, flag), flag)
  if config.dataset == "lagcl":
    return readers.read_paper_file(data, name, bad_rows)
  if config.dataset == "adjacency":
    return readers.read_adjacency(data, name, config.encoding, bad_rows)
  if config.dataset == "recbole":
    return readers.read_recbole_inter(data, name, config.user_col, config.item_col,
                                      config.rating_col, config.time_col, config.implicit,
                                      config.like_threshold, config.encoding, bad_rows)
  columns = readers.Columns(
      config.user_col or "0", config.item_col or "1",
      "" if config.implicit else (config.rating_col or "2"), config.time_col,
      config.like_threshold)
  return readers.read_delimited(data, name, columns, config.delimiter, config.header,
                                config.encoding, bad_rows)


def _read_side_tables(config: Config, bad_rows: BadRows
                      ) -> tuple[dict[str, dict], dict[str, dict]]:
  """(item meta, user meta) from --item_file / --user_file (recbole: found beside the train)."""
  recbole = config.dataset == "recbole"
  tables = []
  for flag, suffix, id_flag, default_id in (("item_file", ".item", "item_id_col", "item_id"),
                                            ("user_file", ".user", "user_id_col", "user_id")):
    path = getattr(config, flag) or (_recbole_side_file(config, suffix) if recbole else "")
    if not path:
      tables.append({})
      continue
    data, name = _read_file(path, flag)
    id_col = getattr(config, id_flag) or (default_id if recbole else "0")
    is_item = flag == "item_file"
    tables.append(readers.read_table(
        data, name, id_col, id_flag, config.item_title_col if is_item else "",
        config.item_genre_col if is_item else "", "\t" if recbole else "", config.encoding,
        bad_rows))
  return tables[0], tables[1]


def read_source(config: Config, bad_rows: BadRows) -> Source:
  """Reads every file `config` names (see the module docstring)."""
  if config.dataset in movielens.ARCHIVES:
    archive = movielens.ARCHIVES[config.dataset]
    files = movielens.find_movielens(config.dataset, config.data_dir, config.download)
    ratings = movielens.read_ratings(*files.read(archive.ratings_file), config.like_threshold,
                                     bad_rows)
    bad_rows.check_file(ratings.file_name, len(ratings))
    item_meta, user_meta = movielens.read_metadata(files, bad_rows)
    return Source({"train": ratings}, item_meta, user_meta)
  if config.dataset not in ("lagcl", "ratings", "adjacency", "recbole"):
    raise ValueError(f"--dataset={config.dataset!r}: expected ml-100k, ml-1m, lagcl, ratings, "
                     "adjacency or recbole.")
  parts = {}
  for split in ("train", "valid", "test"):
    flag = f"{split}_file"
    if split == "train" or getattr(config, flag):
      parts[split] = _read_rows(config, flag, bad_rows)
      bad_rows.check_file(parts[split].file_name, len(parts[split]))
  item_meta, user_meta = _read_side_tables(config, bad_rows)
  if config.dataset == "lagcl" and config.metadata_dir:
    if not os.path.isdir(config.metadata_dir):
      raise FileNotFoundError(f"--metadata_dir={config.metadata_dir!r}: no such folder.")
    movie_meta, people_meta = movielens.read_metadata(
        movielens.FileSource(folder=config.metadata_dir), bad_rows)
    item_meta, user_meta = {**movie_meta, **item_meta}, {**people_meta, **user_meta}
  return Source(parts, item_meta, user_meta)


# --------------------------------------------------------------------------------------------
# Ids and duplicates.


def _natural_order(ids: np.ndarray) -> np.ndarray:
  """Sorted raw ids: by numeric value when all are digits, else lexicographically."""
  ids = np.unique(ids)
  if ids.size and all(s.isascii() and s.isdigit() for s in ids.tolist()):
    values = np.array([int(s) for s in ids.tolist()], dtype=object)
    ids = ids[np.argsort(values, kind="stable")]
  return ids


def _index_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Position of each value in `ids` (unique, any order), -1 where absent."""
  if not ids.size:
    return np.full(values.shape, -1, np.int64)
  sorter = np.argsort(ids, kind="stable")
  positions = sorter[np.minimum(np.searchsorted(ids, values, sorter=sorter), ids.size - 1)]
  return np.where(ids[positions] == values, positions, -1)


def _pair_keys(interactions: Interactions, num_items: int) -> np.ndarray:
  return interactions.users.astype(np.int64) * num_items + interactions.items


def _dedupe(rows: Interactions, num_items: int, file_name: str, counts: dict) -> np.ndarray:
  """Indices of the last row of each user-item pair (rows in file order), in (user, item)
  order; repeated pairs are counted."""
  keys = _pair_keys(rows, num_items)
  _, last_reversed = np.unique(keys[::-1], return_index=True)
  keep = len(keys) - 1 - last_reversed  # np.unique sorts by key, i.e. by (user, item)
  duplicates = len(keys) - len(keep)
  if duplicates:
    logging.warning("%s: %d repeated user-item rows; kept the last of each.", file_name,
                    duplicates)
  counts["duplicate_rows"] += duplicates
  return keep


@dataclasses.dataclass
class _Split:
  """One split's rows in internal indices, with each row's time (or None) and file line."""
  file_name: str
  rows: Interactions
  times: Optional[np.ndarray]
  lines: np.ndarray

  def select(self, mask: np.ndarray) -> "_Split":
    return _Split(self.file_name, self.rows.select(mask),
                  None if self.times is None else self.times[mask], self.lines[mask])


def _to_split(raw: RawRows, user_ids: np.ndarray, item_ids: np.ndarray,
              counts: dict) -> _Split:
  """Internal indices; repeated pairs keep their last row (counted); sorted by (user, item)."""
  rows = Interactions(_index_of(user_ids, raw.users).astype(np.int32),
                      _index_of(item_ids, raw.items).astype(np.int32), raw.labels)
  keep = _dedupe(rows, item_ids.shape[0], raw.file_name, counts)
  return _Split(raw.file_name, rows, raw.times, raw.lines).select(keep)


def _drop_known(later: _Split, earlier: list[_Split], num_items: int) -> tuple[_Split, int]:
  """Drops the pairs of `later` that are also in an earlier split; returns (kept, dropped)."""
  known = np.concatenate([_pair_keys(part.rows, num_items) for part in earlier])
  overlap = np.isin(_pair_keys(later.rows, num_items), known)
  if overlap.any():
    logging.warning("%s: dropped %d pairs that are also in %s.", later.file_name,
                    overlap.sum(), ", ".join(part.file_name for part in earlier))
  return later.select(~overlap), int(overlap.sum())


def _needs_times(part: _Split, rule: str) -> None:
  if part.times is None:
    raise ValueError(f"--split={rule} orders rows by time, but {part.file_name} has no time "
                     "column (set --time_col, or use --split=random).")


def split_parts(config: Config, parts: dict[str, _Split], num_users: int, num_items: int,
                counts: dict) -> tuple[Interactions, Interactions, Interactions]:
  """(train, valid, test) from the given parts, splitting where a file is not given."""
  train = parts["train"]
  rule = config.split
  if "test" in parts:
    test, counts["train_test_overlap"] = _drop_known(parts["test"], [train], num_items)
  else:
    if rule != "random":
      _needs_times(train, rule)
    in_test = splits.hold_out_test(train.rows, num_users, rule, config.test_fraction,
                                   config.split_seed, train.times, train.lines)
    train, test = train.select(~in_test), train.select(in_test)
    counts["train_test_overlap"] = 0
  counts["train_rows_before_valid"] = len(train.rows)
  if "valid" in parts:
    valid, counts["valid_train_overlap"] = _drop_known(parts["valid"], [train], num_items)
    test, counts["test_valid_overlap"] = _drop_known(test, [valid], num_items)
  else:
    if rule != "random" and config.valid_fraction > 0:
      _needs_times(train, rule)
    in_valid = splits.carve_validation(train.rows, num_users, config.valid_fraction,
                                       config.split_seed, rule, train.times, train.lines)
    train, valid = train.select(~in_valid), train.select(in_valid)
  if rule == "global_time" and "test" not in parts and len(test.rows):
    counts["test_time_cut"] = float(test.times.min())
  return train.rows, valid.rows, test.rows


# --------------------------------------------------------------------------------------------
# Loading.


def _read_augmentation(config: Config, train: Interactions, valid: Interactions,
                       test: Interactions, user_ids: np.ndarray, item_ids: np.ndarray,
                       bad_rows: BadRows, counts: dict) -> Interactions:
  """The augment_file rows to add to train (unknown ids: error or counted skip; pairs in train or
  valid dropped; pairs that are test pairs kept and counted)."""
  data, file_name = _read_file(config.augment_file, "augment_file")
  rows = readers.read_paper_file(data, file_name, bad_rows)
  users, items = _index_of(user_ids, rows.users), _index_of(item_ids, rows.items)
  unknown = (users < 0) | (items < 0)
  for index in np.flatnonzero(unknown):
    which = "user" if users[index] < 0 else "item"
    value = str(rows.users[index] if which == "user" else rows.items[index])
    bad_rows.report(file_name, int(rows.lines[index]),
                    f"unknown {which} id {value!r} (not in train or test)")
  counts["augment_unknown_rows"] = int(unknown.sum())
  bad_rows.check_file(file_name, int((~unknown).sum()))
  if unknown.any():
    logging.warning("%s: dropped %d rows with ids unknown to train/test.", file_name,
                    unknown.sum())
  augment = Interactions(users[~unknown].astype(np.int32), items[~unknown].astype(np.int32),
                         rows.labels[~unknown])
  num_items = item_ids.shape[0]
  augment = augment.select(_dedupe(augment, num_items, file_name, counts))
  existing = np.concatenate([_pair_keys(part, num_items) for part in (train, valid)])
  overlap = np.isin(_pair_keys(augment, num_items), existing)
  counts["augment_overlap_rows"] = int(overlap.sum())
  augment = augment.select(~overlap)
  counts["augmented_positives"] = int((augment.labels > 0).sum())
  counts["augmented_negatives"] = int((augment.labels < 0).sum())
  in_test = np.isin(_pair_keys(augment, num_items), _pair_keys(test, num_items))
  counts["augment_test_pair_rows"] = int(in_test.sum())
  return augment


def _split_stats(name: str, split: Interactions, summary: dict) -> None:
  summary[f"{name}_rows"] = len(split)
  summary[f"{name}_positives"] = int((split.labels > 0).sum())
  summary[f"{name}_negatives"] = int((split.labels < 0).sum())


def _evaluation_stats(dataset: Dataset) -> dict[str, int]:
  train, valid, test = dataset.train, dataset.valid, dataset.test
  has_train_positive = dataset.has_train_positive()
  seen_in_train = np.zeros(dataset.num_items, bool)
  seen_in_train[train.items] = True
  test_users = np.unique(test.users)
  positive_test_users = np.unique(test.users[test.labels > 0])
  cold = ~seen_in_train[test.items]
  return {
      "cold_test_items": int(np.unique(test.items[cold]).size),
      "cold_test_rows": int(cold.sum()),
      "test_users": int(test_users.size),
      "test_users_with_positive": int(positive_test_users.size),
      "test_users_without_train_positives": int((~has_train_positive[test_users]).sum()),
      "cold_test_users": int((~has_train_positive[positive_test_users]).sum()),
      "valid_users_with_positive": int(np.unique(valid.users[valid.labels > 0]).size),
      "users_without_train_positives": int((~has_train_positive).sum()),
      "items_without_train_rows": int((~seen_in_train).sum()),
  }


def load_dataset(config: Config) -> Dataset:
  """Loads, checks and splits `config.dataset` (see the module docstring for every rule)."""
  bad_rows = BadRows(config.skip_bad_rows, config.max_bad_fraction)
  counts: dict[str, Any] = {"duplicate_rows": 0, "augmented_positives": 0,
                            "augmented_negatives": 0, "augment_unknown_rows": 0,
                            "augment_overlap_rows": 0, "augment_test_pair_rows": 0}
  source = read_source(config, bad_rows)
  raw_parts = list(source.parts.values())
  user_ids = _natural_order(np.concatenate([p.users for p in raw_parts]))
  item_ids = _natural_order(np.concatenate([p.items for p in raw_parts]))
  num_users, num_items = user_ids.shape[0], item_ids.shape[0]
  parts = {name: _to_split(raw, user_ids, item_ids, counts)
           for name, raw in source.parts.items()}
  train, valid, test = split_parts(config, parts, num_users, num_items, counts)
  augmented = Interactions.empty()
  if config.augment_file:
    augmented = _read_augmentation(config, train, valid, test, user_ids, item_ids, bad_rows,
                                   counts)
    train = Interactions.concatenate([train, augmented])
    train = train.select(np.lexsort((train.items, train.users)))

  dataset = Dataset(
      name=config.dataset, user_ids=user_ids, item_ids=item_ids, train=train, valid=valid,
      test=test, user_meta=[source.user_meta.get(u, {}) for u in user_ids.tolist()],
      item_meta=[source.item_meta.get(i, {}) for i in item_ids.tolist()], summary={},
      augmented=augmented)
  given = [p.file_name for p in raw_parts]
  dataset.summary.update(dataset=config.dataset, files=given, split=(
      "given files" if {"test", "valid"} <= source.parts.keys() else config.split),
                         users=num_users, items=num_items)
  for name, split in (("train", train), ("valid", valid), ("test", test)):
    _split_stats(name, split, dataset.summary)
  dataset.summary.update(counts)
  dataset.summary.update(_evaluation_stats(dataset))
  meta_fields = sorted({key for meta in dataset.item_meta for key in meta})
  dataset.summary.update(
      users_with_metadata=sum(bool(m) for m in dataset.user_meta),
      items_with_metadata=sum(bool(m) for m in dataset.item_meta),
      item_metadata_fields=meta_fields,
      skipped_rows=bad_rows.count, skipped_examples=bad_rows.examples)
  if not source.item_meta:
    logging.info("No item metadata: the LLM stages will only know the items' raw ids.")
  elif not dataset.summary["items_with_metadata"]:
    logging.warning("The item metadata matches none of the data's item ids: check the id "
                    "column (--item_id_col).")
  if dataset.summary["cold_test_users"]:
    logging.warning(
        "%d test users have no train positive (cold users): training never updates their "
        "embeddings, so they are left out of the test metrics and reported apart as test_cold/.",
        dataset.summary["cold_test_users"])
  logging.info("%s", format_summary(dataset.summary))
  return dataset


def format_summary(summary: dict[str, Any]) -> str:
  """The load summary as aligned `key: value` lines."""
  width = max(map(len, summary), default=0)
  lines = ["Data summary:"]
  for key, value in summary.items():
    if isinstance(value, list):
      value = "; ".join(map(str, value)) if value else "-"
    elif isinstance(value, int) and not isinstance(value, bool):
      value = f"{value:,}"
    lines.append(f"  {key:<{width}}  {value}")
  return "\n".join(lines)

"""Plain containers shared by the data layer, training, evaluation and the LLM stages."""

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Interactions:
  """Rated user-item pairs, in internal (dense, 0-based) indices.

  Attributes:
    users: int32 [n] internal user index.
    items: int32 [n] internal item index.
    labels: int8 [n], +1 (liked) or -1 (disliked).
  """
  users: np.ndarray
  items: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return int(self.users.shape[0])

  @property
  def positives(self) -> "Interactions":
    """The label +1 rows only."""
    return self.select(self.labels > 0)

  @property
  def negatives(self) -> "Interactions":
    """The label -1 rows only."""
    return self.select(self.labels < 0)

  def select(self, mask: np.ndarray) -> "Interactions":
    return Interactions(self.users[mask], self.items[mask], self.labels[mask])

  @staticmethod
  def concatenate(parts: list["Interactions"]) -> "Interactions":
    return Interactions(
        np.concatenate([p.users for p in parts]).astype(np.int32),
        np.concatenate([p.items for p in parts]).astype(np.int32),
        np.concatenate([p.labels for p in parts]).astype(np.int8))

  @staticmethod
  def empty() -> "Interactions":
    return Interactions(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8))


@dataclasses.dataclass
class Dataset:
  """A split recommendation data set with its id maps and side information.

  Attributes:
    name: e.g. "ml-100k", "ml-1m", "lagcl".
    user_ids: [num_users] raw id strings; user_ids[u] is internal user u's raw id.
    item_ids: [num_items] raw id strings.
    train, valid, test: the splits (valid may be empty).
    user_meta: per internal user a dict (e.g. gender, age, occupation, zip); may be empty dicts.
    item_meta: per internal item a dict (e.g. title, year, genres: list[str]); may be empty dicts.
    summary: counts from loading (rows, duplicates, cold test items, ...), printed at load.
    augmented: the LLM-augmented rows (`--augment_file`), also in train; empty without them.
  """
  name: str
  user_ids: np.ndarray
  item_ids: np.ndarray
  train: Interactions
  valid: Interactions
  test: Interactions
  user_meta: list[dict[str, Any]]
  item_meta: list[dict[str, Any]]
  summary: dict[str, Any]
  augmented: Interactions = dataclasses.field(default_factory=Interactions.empty)

  def observed_train(self) -> Interactions:
    """The train rows without the augmented ones: what evaluation masks as known."""
    if not len(self.augmented):
      return self.train
    keys = self.train.users.astype(np.int64) * self.num_items + self.train.items
    augmented = self.augmented.users.astype(np.int64) * self.num_items + self.augmented.items
    return self.train.select(~np.isin(keys, augmented))

  @property
  def num_users(self) -> int:
    return int(self.user_ids.shape[0])

  @property
  def num_items(self) -> int:
    return int(self.item_ids.shape[0])

  def has_train_positive(self) -> np.ndarray:
    """[num_users] bool: the user has a +1 train row. Users without one are "cold": training
    never updates their embeddings, so evaluation reports them apart (`test_cold/`)."""
    has = np.zeros(self.num_users, bool)
    has[self.train.users[self.train.labels > 0]] = True
    return has

"""Vectorised, seeded, group-aware sampling of training batches.

An epoch is a seeded permutation of the train positives (label +1), cut into batches of
`batch_size` rows; the last batch is padded (row weight 0) so every step has one shape. Each row
gets K negatives outside the user's train positives:
- with groups: one easy negative (another group than the positive item) and one hard negative (the
  positive's group, or, with `hard_from_dislikes`, one of the user's own -1 items when there are any);
- without groups: one uniform negative.
Sampling is rejection sampling over whole arrays (a few rounds), then a uniform fallback, counted
per batch (`Batch.fallbacks`; training logs its rate per epoch). Batches of
epoch e depend only on (seed, e), so a run resumed at any step sees the same batches.
`prefetch` draws them on a background thread while the device trains on the previous one.
"""

import dataclasses
import queue
import threading
from typing import Iterator

import numpy as np

from lagcl_jax.data_types import Interactions

_ROUNDS = 8


@dataclasses.dataclass
class Batch:
  """One training step's rows (host arrays); see `BatchSampler` for the fields."""
  users: np.ndarray  # int32 [B]
  pos_items: np.ndarray  # int32 [B]
  neg_items: np.ndarray  # int32 [B, K]
  row_weights: np.ndarray  # float32 [B]: 1 real row, 0 padding
  user_first: np.ndarray  # float32 [B]: 1 where the row holds the user's first occurrence
  item_first: np.ndarray  # float32 [B]: 1 where the row holds the item's first occurrence
  # By kind of negative ("easy", "hard"; "uniform" without groups): how many rows got one outside
  # the intended group (uniform fallback), for the logs.
  fallbacks: dict[str, int] = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict[str, np.ndarray]:
    """The arrays (the step's inputs), by field name."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name != "fallbacks"}


def _first_occurrence(ids: np.ndarray, real: np.ndarray) -> np.ndarray:
  first = np.zeros(ids.shape[0], np.float32)
  _, index = np.unique(np.where(real, ids, -1), return_index=True)
  first[index] = 1.0
  return first * real


class BatchSampler:
  """Draws the training batches of each epoch."""

  def __init__(self, train: Interactions, num_users: int, num_items: int,
               item_groups: np.ndarray, use_groups: bool, hard_from_dislikes: bool,
               batch_size: int, seed: int):
    positives = train.positives
    if len(positives) == 0:
      raise ValueError("The training split has no positive (label 1) interactions.")
    self.users = positives.users.astype(np.int32)
    self.items = positives.items.astype(np.int32)
    self.num_users, self.num_items = num_users, num_items
    self.batch_size, self.seed = batch_size, seed
    self.use_groups, self.hard_from_dislikes = use_groups, hard_from_dislikes
    self.item_groups = item_groups.astype(np.int64)
    # Sorted keys user * I + item of the train positives, for vectorised membership tests.
    self._positive_keys = np.unique(self.users.astype(np.int64) * num_items + self.items)
    # Items grouped: members of group g are _group_members[_group_start[g]:_group_start[g+1]].
    self._group_members = np.argsort(self.item_groups, kind="stable").astype(np.int32)
    counts = np.bincount(self.item_groups, minlength=int(self.item_groups.max()) + 1)
    self._group_start = np.concatenate([[0], np.cumsum(counts)])
    # The users' disliked (-1) train items, CSR-style.
    dislikes = train.negatives
    order = np.argsort(dislikes.users, kind="stable")
    self._dislike_items = dislikes.items[order].astype(np.int32)
    self._dislike_start = np.concatenate(
        [[0], np.cumsum(np.bincount(dislikes.users, minlength=num_users))])
    # Of the batch last drawn, by kind of negative ("easy", "hard"; "uniform" without groups):
    # how many rows got one outside the intended group (uniform fallback), for the logs.
    self.batch_fallbacks: dict[str, int] = {}

  @property
  def num_negatives(self) -> int:
    return 2 if self.use_groups else 1

  @property
  def num_batches(self) -> int:
    return -(-self.users.shape[0] // self.batch_size)

  def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    keys = users.astype(np.int64) * self.num_items + items
    found = np.searchsorted(self._positive_keys, keys)
    found = np.minimum(found, self._positive_keys.shape[0] - 1)
    return self._positive_keys[found] == keys

  def _draw(self, rng: np.random.Generator, users: np.ndarray, propose,
            accept) -> tuple[np.ndarray, np.ndarray]:
    """Rejection sampling: proposals until accepted, then a uniform non-positive fallback.

    Returns the items and a mask of the rows whose item is a fallback that `accept` rejects
    (outside the intended group), or, for users who liked every item, not a negative at all.
    """
    out = np.zeros(users.shape[0], np.int32)
    outside = np.zeros(users.shape[0], bool)
    todo = np.arange(users.shape[0])
    for round_ in range(_ROUNDS + 4):
      if todo.size == 0:
        break
      fallback = round_ >= _ROUNDS
      cand = (rng.integers(0, self.num_items, todo.size).astype(np.int32) if fallback
              else propose(rng, todo))
      ok = ~self._is_positive(users[todo], cand)
      if not fallback:
        ok &= accept(todo, cand)
      else:
        outside[todo[ok]] = ~accept(todo[ok], cand[ok])
      out[todo[ok]] = cand[ok]
      todo = todo[~ok]
    out[todo] = rng.integers(0, self.num_items, todo.size)  # Users who liked every item.
    outside[todo] = True
    return out, outside

  def _negatives(self, rng: np.random.Generator, users: np.ndarray,
                 pos_items: np.ndarray) -> np.ndarray:
    uniform = lambda rng, todo: rng.integers(0, self.num_items, todo.size).astype(np.int32)
    if not self.use_groups:
      negatives, outside = self._draw(rng, users, uniform, lambda t, c: np.ones(t.size, bool))
      self.batch_fallbacks = {"uniform": int(outside.sum())}
      return negatives[:, None]
    groups = self.item_groups[pos_items]
    easy, easy_outside = self._draw(rng, users, uniform,
                                    lambda todo, cand: self.item_groups[cand] != groups[todo])

    def same_group(rng, todo):
      start, stop = self._group_start[groups[todo]], self._group_start[groups[todo] + 1]
      return self._group_members[start + (rng.random(todo.size) * (stop - start)).astype(np.int64)]

    hard, hard_outside = self._draw(rng, users, same_group,
                                    lambda todo, cand: self.item_groups[cand] == groups[todo])
    if self.hard_from_dislikes:
      start, stop = self._dislike_start[users], self._dislike_start[users + 1]
      has = stop > start
      pick = start + (rng.random(users.shape[0]) * (stop - start)).astype(np.int64)
      hard = np.where(has, self._dislike_items[np.minimum(pick, len(self._dislike_items) - 1)]
                      if len(self._dislike_items) else hard, hard)
      hard_outside &= ~has
    self.batch_fallbacks = {"easy": int(easy_outside.sum()), "hard": int(hard_outside.sum())}
    return np.stack([easy, hard], axis=1)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """The batches of `epoch` (0-based), from step `start_step` of that epoch on."""
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(self.users.shape[0])
    for step in range(start_step, self.num_batches):
      # Each batch has its own generator, so skipping steps on resume changes nothing.
      batch_rng = np.random.default_rng([self.seed, epoch, step])
      rows = order[step * self.batch_size:(step + 1) * self.batch_size]
      real = np.ones(self.batch_size, bool)
      real[rows.size:] = False
      rows = np.pad(rows, (0, self.batch_size - rows.size))
      users, pos_items = self.users[rows], self.items[rows]
      neg_items = self._negatives(batch_rng, users, pos_items).astype(np.int32)
      yield Batch(
          users=users, pos_items=pos_items, neg_items=neg_items,
          row_weights=real.astype(np.float32),
          user_first=_first_occurrence(users, real),
          item_first=_first_occurrence(pos_items, real),
          fallbacks=dict(self.batch_fallbacks))


def prefetch(batches: Iterator[Batch], size: int = 2) -> Iterator[Batch]:
  """The same batches, in the same order, drawn up to `size` ahead on a background thread.

  Errors of the drawing thread are raised here; closing this generator stops the thread.
  """
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  end = object()

  def put(item) -> bool:
    """Queues `item` unless the reader stopped first (then never blocks); True if queued."""
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def fill():
    try:
      for batch in batches:
        if not put(batch):
          return
      put(end)
    except BaseException as e:  # pylint: disable=broad-except
      put(e)

  thread = threading.Thread(target=fill, name="prefetch_batches", daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is end:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join()

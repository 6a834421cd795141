"""Splitting one interaction file into train / test, and carving validation out of train.

Rules (`--split`; test takes `--test_fraction`, validation `--valid_fraction` of what is left):
  * random (default): per user, ceil(fraction * n) of the user's n rows, drawn with
    `np.random.default_rng(split_seed)` for test and `np.random.default_rng([split_seed, 1])`
    for validation. Validation takes at most n - 1 rows (a user keeps at least one train row)
    and one randomly chosen train positive of each user who has any always stays in train.
  * leave_last_out: per user with at least two rows, the latest row (by time).
  * temporal_fraction: per user, the latest ceil(fraction * n) rows, at most n - 1.
  * global_time: one time cut for everybody: the latest ceil(fraction * N) of all N rows
    (users whose rows all come after the cut have no train rows: see `cold_test_users` in the
    data summary).
  Time ties are broken by line order in the file (later lines count as later). The time rules
  draw no random numbers. Every fraction * n is rounded to 6 decimals before the ceiling, so
  0.1 * 30 gives 3, not 4.
"""

from typing import Optional

import numpy as np

from lagcl_jax.data_types import Interactions

RULES = ("random", "leave_last_out", "temporal_fraction", "global_time")
TIME_RULES = RULES[1:]


def ceil_fraction(fraction: float, counts: np.ndarray) -> np.ndarray:
  """ceil(fraction * counts), computed on the value rounded to 6 decimals."""
  return np.ceil(np.round(fraction * counts, 6)).astype(np.int64)


def take_per_user(users: np.ndarray, num_users: int, counts: np.ndarray,
                  rng: np.random.Generator, protected: Optional[np.ndarray] = None
                  ) -> np.ndarray:
  """Randomly marks `counts[u]` rows of each user u; `protected` rows are marked last.

  Args:
    users: [n] internal user of each row.
    num_users: number of users.
    counts: [num_users] how many rows to take per user.
    rng: the random generator (one uniform draw per row, in row order).
    protected: optional [n] bool; these rows are taken only after all others.

  Returns:
    [n] bool mask of the taken rows.
  """
  keys = rng.random(users.shape[0])
  if protected is not None:
    keys = np.where(protected, 2.0, keys)
  return _take_first(users, num_users, counts, keys)


def _take_first(users: np.ndarray, num_users: int, counts: np.ndarray,
                keys: np.ndarray) -> np.ndarray:
  """Marks the counts[u] rows of each user u with the smallest keys (ties: row order)."""
  order = np.lexsort((keys, users))
  sorted_users = users[order]
  starts = np.searchsorted(sorted_users, np.arange(num_users))
  rank = np.arange(users.shape[0]) - starts[sorted_users]
  taken = np.zeros(users.shape[0], bool)
  taken[order] = rank < counts[sorted_users]
  return taken


def take_latest_per_user(users: np.ndarray, num_users: int, counts: np.ndarray,
                         times: np.ndarray, lines: np.ndarray) -> np.ndarray:
  """Marks the latest `counts[u]` rows of each user u (by time, then line)."""
  recency = np.empty(users.shape[0], np.int64)
  recency[np.lexsort((lines, times))] = np.arange(users.shape[0])
  return _take_first(users, num_users, counts, -recency)


def take_latest(fraction: float, times: np.ndarray, lines: np.ndarray) -> np.ndarray:
  """Marks the latest ceil(fraction * n) of all n rows (by time, then line)."""
  count = int(ceil_fraction(fraction, np.array([times.shape[0]]))[0])
  taken = np.zeros(times.shape[0], bool)
  if count:
    taken[np.lexsort((lines, times))[-count:]] = True
  return taken


def one_positive_per_user(rows: Interactions, rng: np.random.Generator) -> np.ndarray:
  """[n] bool: one random +1 row of every user who has one."""
  keys = np.where(rows.labels > 0, rng.random(len(rows)), 2.0)
  order = np.lexsort((keys, rows.users))
  first = np.ones(len(rows), bool)
  first[1:] = rows.users[order][1:] != rows.users[order][:-1]
  chosen = np.zeros(len(rows), bool)
  chosen[order] = first & (rows.labels[order] > 0)
  return chosen


def _time_rule(rule: str, rows: Interactions, num_users: int, fraction: float,
               times: np.ndarray, lines: np.ndarray) -> np.ndarray:
  if rule == "global_time":
    return take_latest(fraction, times, lines)
  sizes = np.bincount(rows.users, minlength=num_users)
  counts = np.ones(num_users, np.int64) if rule == "leave_last_out" else ceil_fraction(
      fraction, sizes)
  counts = np.minimum(counts, np.maximum(sizes - 1, 0))
  return take_latest_per_user(rows.users, num_users, counts, times, lines)


def hold_out_test(rows: Interactions, num_users: int, rule: str, fraction: float, seed: int,
                  times: Optional[np.ndarray], lines: np.ndarray) -> np.ndarray:
  """[n] bool mask of the rows that go to test under `rule` (see the module docstring)."""
  if rule == "random":
    sizes = np.bincount(rows.users, minlength=num_users)
    return take_per_user(rows.users, num_users, ceil_fraction(fraction, sizes),
                         np.random.default_rng(seed))
  return _time_rule(rule, rows, num_users, fraction, times, lines)


def carve_validation(train: Interactions, num_users: int, fraction: float, seed: int,
                     rule: str = "random", times: Optional[np.ndarray] = None,
                     lines: Optional[np.ndarray] = None) -> np.ndarray:
  """[n] bool mask of the train rows that become validation (see the module docstring)."""
  if fraction <= 0 or not len(train):
    return np.zeros(len(train), bool)
  if rule != "random":
    return _time_rule(rule, train, num_users, fraction, times, lines)
  rng = np.random.default_rng([seed, 1])
  sizes = np.bincount(train.users, minlength=num_users)
  counts = np.minimum(ceil_fraction(fraction, sizes), np.maximum(sizes - 1, 0))
  keep_in_train = one_positive_per_user(train, rng)
  return take_per_user(train.users, num_users, counts, rng, protected=keep_in_train)

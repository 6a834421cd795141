"""Balanced LLM augmentation of the train interactions.

Per user, the candidates are the backbone's top unseen items plus random unseen items: items
outside the user's train and validation rows. The test split is not consulted (it never shapes
training data), so a candidate may be one of the user's test items; the provenance counts how
many written rows are (see the README, "Augmentation and the test split"). The LLM's preference margin of each
candidate picks the k most liked (label +1) and the k least liked (label -1). The result is the
paper's `user<TAB>item<TAB>label` file with raw ids (read by training through
`--augment_file`), with a provenance JSON beside it.
"""

import os
from typing import Any

import numpy as np

from lagcl_jax import evaluation
from lagcl_jax import reporting
from lagcl_jax.data_types import Dataset, Interactions
from lagcl_jax.llm import cached_llm
from lagcl_jax.llm import preference
from lagcl_jax.llm import profiles as profiles_lib


def popularity_embeddings(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings whose scores rank items by train positives: the backbone when none is given."""
  counts = np.bincount(dataset.train.items[dataset.train.labels > 0],
                       minlength=dataset.num_items)
  return np.ones((dataset.num_users, 1), np.float32), counts[:, None].astype(np.float32)


def candidate_items(dataset: Dataset, users: np.ndarray, user_emb: np.ndarray,
                    item_emb: np.ndarray, num_top: int, num_random: int,
                    seed: int) -> list[np.ndarray]:
  """Per user: the top `num_top` items outside the user's train and validation rows by score,
  then `num_random` other such items drawn with a per-user seed (so a user's candidates do not
  depend on sharding). Test rows are not looked at."""
  known = evaluation.interaction_matrix(dataset.num_users, dataset.num_items, dataset.train,
                                        dataset.valid)
  top = np.zeros((len(users), 0), np.int32)
  if num_top > 0 and len(users):
    top, scores = evaluation.top_k_items(user_emb, item_emb, users, known, num_top)
    top = np.where(np.isfinite(scores), top, -1)
  result = []
  for row, u in enumerate(users.tolist()):
    chosen = top[row][top[row] >= 0]
    unseen = np.ones(dataset.num_items, bool)
    unseen[known[u].indices] = False
    unseen[chosen] = False
    pool = np.flatnonzero(unseen)
    rng = np.random.default_rng([seed, u])
    extra = rng.choice(pool, size=min(num_random, pool.size), replace=False)
    result.append(np.concatenate([chosen, np.sort(extra)]).astype(np.int32))
  return result


def choose_balanced(margins: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions of the k highest and the k lowest finite margins, disjoint and equally many
  (fewer than k each when there are fewer than 2k finite margins)."""
  finite = np.flatnonzero(np.isfinite(margins))
  count = min(k, finite.size // 2)
  order = finite[np.argsort(-margins[finite], kind="stable")]
  return order[:count], order[order.size - count:]


def augment(llm: cached_llm.CachedLLM, profiles: profiles_lib.Profiles, users: np.ndarray,
            candidates: list[np.ndarray], k: int) -> Interactions:
  """The LLM's k liked (+1) and k disliked (-1) candidates of each user, internal indices."""
  sizes = np.array([c.size for c in candidates], np.int64)
  pair_users = np.repeat(users, sizes).astype(np.int32)
  pair_items = np.concatenate(candidates) if candidates else np.zeros(0, np.int32)
  margins = preference.preference_margins(llm, profiles, pair_users, pair_items,
                                          "augment: candidates")
  parts = []
  for start, size in zip(np.cumsum(sizes) - sizes, sizes):
    liked, disliked = choose_balanced(margins[start:start + size], k)
    chosen = np.concatenate([liked, disliked]) + start
    labels = np.concatenate([np.ones(liked.size, np.int8), -np.ones(disliked.size, np.int8)])
    parts.append(Interactions(pair_users[chosen], pair_items[chosen], labels))
  return Interactions.concatenate(parts) if parts else Interactions.empty()


def provenance_path(path: str) -> str:
  return os.path.splitext(path)[0] + ".provenance.json"


def test_overlap(dataset: Dataset, rows: Interactions) -> dict[str, int]:
  """How many augmented rows are a (user, item) pair of the test split, by label. Counted after
  the rows are chosen, for the provenance only."""
  keys = rows.users.astype(np.int64) * dataset.num_items + rows.items
  test_keys = dataset.test.users.astype(np.int64) * dataset.num_items + dataset.test.items
  in_test = np.isin(keys, test_keys)
  return {"test_pair_rows": int(in_test.sum()),
          "test_pair_positives": int((in_test & (rows.labels > 0)).sum()),
          "test_pair_negatives": int((in_test & (rows.labels < 0)).sum())}


def write_augmentation(path: str, dataset: Dataset, rows: Interactions,
                       provenance: dict[str, Any]) -> None:
  """Writes the rows as `raw_user<TAB>raw_item<TAB>±1` and the provenance JSON beside them
  (with the rows' overlap with test pairs)."""
  reporting.atomic_write_text(path, "".join(
      f"{dataset.user_ids[u]}\t{dataset.item_ids[i]}\t{int(l)}\n"
      for u, i, l in zip(rows.users.tolist(), rows.items.tolist(), rows.labels.tolist())))
  reporting.write_json(provenance_path(path), {
      **provenance, "rows": len(rows), "positives": int((rows.labels > 0).sum()),
      "negatives": int((rows.labels < 0).sum()), **test_overlap(dataset, rows)})

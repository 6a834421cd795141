"""Full-ranking evaluation: every test user against every item.

For each evaluated user (one with at least one label-1 item in the split) all items are scored by
<user, item>, the user's known items are masked (train; at test also valid, unless
`mask_valid=False`, the LightGCN++ protocol), and the top K are compared with the user's label-1
items of the split. Users are processed in fixed-size batches, so
memory is bounded by `batch_size x num_items` and no users x items matrix is ever built.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from lagcl_jax import reporting
from lagcl_jax.data_types import Dataset, Interactions


def interaction_matrix(num_users: int, num_items: int, *parts: Interactions) -> sp.csr_matrix:
  """Boolean users x items CSR matrix of the given interactions (any label)."""
  users = np.concatenate([p.users for p in parts]) if parts else np.zeros(0, np.int32)
  items = np.concatenate([p.items for p in parts]) if parts else np.zeros(0, np.int32)
  matrix = sp.csr_matrix((np.ones(users.shape[0], bool), (users, items)),
                         shape=(num_users, num_items), dtype=bool)
  matrix.sum_duplicates()
  return matrix


@functools.partial(jax.jit, static_argnames="k")
def _masked_top_k(user_emb, item_emb, mask, k):
  scores = jnp.where(mask, -jnp.inf, user_emb @ item_emb.T)
  return jax.lax.top_k(scores, k)


def top_k_items(user_emb: np.ndarray, item_emb: np.ndarray, users: np.ndarray,
                exclude: sp.csr_matrix, k: int,
                batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Top-k unmasked items of each user by inner product, in user batches of a fixed shape.

  Returns (items int32 [n, k], scores float32 [n, k]), best first.
  """
  item_emb = jnp.asarray(item_emb)
  k = min(k, item_emb.shape[0])
  batch_size = max(1, min(batch_size, users.shape[0]))
  out_items, out_scores = [], []
  num_batches = -(-users.shape[0] // batch_size)
  bar = reporting.progress_bar(num_batches, "ranking", unit="batch") if num_batches > 1 else None
  for start in range(0, users.shape[0], batch_size):
    chunk = users[start:start + batch_size]
    padded = np.pad(chunk, (0, batch_size - chunk.shape[0]))
    mask = exclude[padded].toarray()
    scores, items = _masked_top_k(jnp.asarray(user_emb[padded]), item_emb, jnp.asarray(mask), k)
    out_items.append(np.asarray(items)[:chunk.shape[0]])
    out_scores.append(np.asarray(scores)[:chunk.shape[0]])
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  if not out_items:
    return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
  return np.concatenate(out_items).astype(np.int32), np.concatenate(out_scores)


def per_user_ranking_metrics(top_items: np.ndarray, relevant: sp.csr_matrix,
                             ks: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Recall, NDCG, Precision and HitRate at each K of every row, as float64 [n] arrays.

  Args:
    top_items: [n, >= max(ks)] ranked item indices per evaluated user.
    relevant: [n, num_items] boolean CSR, row r = the relevant items of top_items' row r; every
      row must have at least one relevant item.
    ks: cut-offs.
  """
  n = top_items.shape[0]
  num_relevant = np.asarray(relevant.sum(axis=1)).ravel().astype(np.float64)
  if n == 0 or np.any(num_relevant == 0):
    raise ValueError("ranking_metrics needs at least one user, each with a relevant item.")
  rows = np.repeat(np.arange(n), top_items.shape[1])
  hits = np.asarray(relevant[rows, top_items.ravel()]).reshape(top_items.shape).astype(np.float64)
  discounts = 1.0 / np.log2(np.arange(2, top_items.shape[1] + 2))
  metrics = {}
  for k in ks:
    hits_k = hits[:, :k]
    num_hits = hits_k.sum(axis=1)
    dcg = (hits_k * discounts[:k]).sum(axis=1)
    ideal = np.cumsum(discounts[:k])[np.minimum(num_relevant, k).astype(np.int64) - 1]
    metrics[f"recall@{k}"] = num_hits / num_relevant
    metrics[f"ndcg@{k}"] = dcg / ideal
    metrics[f"precision@{k}"] = num_hits / k
    metrics[f"hit@{k}"] = (num_hits > 0).astype(np.float64)
  return metrics


def ranking_metrics(top_items: np.ndarray, relevant: sp.csr_matrix,
                    ks: tuple[int, ...]) -> dict[str, float]:
  """The means over the rows of `per_user_ranking_metrics` (same arguments)."""
  return {name: float(np.mean(values))
          for name, values in per_user_ranking_metrics(top_items, relevant, ks).items()}


def split_targets(dataset: Dataset, split: str, mask_valid: bool = True,
                  cold: bool = False
                  ) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
  """(evaluated users, their relevant-item rows, the users x items mask of known items).

  Known items are masked; augmented train rows (`Dataset.augmented`) are predictions, not known.
  valid: relevant = label-1 valid items, known = train. test: relevant = label-1 test items,
  known = train + valid, or train only with `mask_valid=False`. Users without a train positive
  (`Dataset.has_train_positive`) are evaluated only with `cold=True`, which evaluates only them.
  """
  if split not in ("valid", "test"):
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
  target = dataset.valid if split == "valid" else dataset.test
  known = [dataset.observed_train()] + ([dataset.valid] if split == "test" and mask_valid else [])
  relevant_all = interaction_matrix(dataset.num_users, dataset.num_items, target.positives)
  users = np.flatnonzero(np.diff(relevant_all.indptr) > 0).astype(np.int32)
  users = users[dataset.has_train_positive()[users] != cold]
  exclude = interaction_matrix(dataset.num_users, dataset.num_items, *known)
  return users, relevant_all[users], exclude


def evaluate_per_user(user_emb: np.ndarray, item_emb: np.ndarray, dataset: Dataset, split: str,
                      ks: tuple[int, ...], batch_size: int = 1024, mask_valid: bool = True,
                      cold: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(evaluated users [n], per-user metrics keyed like "recall@20", each [n]) of the split.

  `cold`: evaluate only the users without a train positive (see `split_targets`)."""
  users, relevant, exclude = split_targets(dataset, split, mask_valid, cold)
  if users.size == 0:
    raise ValueError(f"The {split} split has no {'cold ' if cold else ''}user with a label-1 "
                     "item: nothing to evaluate.")
  top_items, _ = top_k_items(user_emb, item_emb, users, exclude, max(ks), batch_size)
  return users, per_user_ranking_metrics(top_items, relevant, ks)


def evaluate(user_emb: np.ndarray, item_emb: np.ndarray, dataset: Dataset, split: str,
             ks: tuple[int, ...], batch_size: int = 1024, mask_valid: bool = True,
             cold: bool = False) -> dict[str, float]:
  """Full-ranking metrics of the split (means over its users), keyed like "recall@20", plus
  "num_users"."""
  users, per_user = evaluate_per_user(user_emb, item_emb, dataset, split, ks, batch_size,
                                      mask_valid, cold)
  metrics = {name: float(np.mean(values)) for name, values in per_user.items()}
  metrics["num_users"] = int(users.size)
  return metrics

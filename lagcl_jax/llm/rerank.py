"""LLM reranking of a trained model's top-N: each candidate's preference margin (from the user's
profile, liked and disliked history and the candidate's profile) is fused with its CF score,
final = alpha * CF + (1 - alpha) * LLM, both normalised per user. Alpha is chosen on the
validation split only; the test split is scored once, with that alpha.
"""

import dataclasses
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp

from lagcl_jax import evaluation
from lagcl_jax import reporting
from lagcl_jax.llm import cached_llm
from lagcl_jax.llm import preference
from lagcl_jax.llm import profiles as profiles_lib


@dataclasses.dataclass
class Candidates:
  """The CF top-N of the evaluated users of a split, and their relevant items."""
  users: np.ndarray  # int32 [n]
  items: np.ndarray  # int32 [n, N], best CF score first
  cf_scores: np.ndarray  # float32 [n, N]; -inf pads users with fewer than N unmasked items
  relevant: sp.csr_matrix  # bool [n, num_items]

  def select(self, rows: np.ndarray) -> "Candidates":
    return Candidates(self.users[rows], self.items[rows], self.cf_scores[rows],
                      self.relevant[rows])


def cf_candidates(run, split: str, top_n: int, batch_size: int = 1024) -> Candidates:
  """Top-N of `run` (a `lagcl_jax.inference.TrainedRun`) for every user with a label-1 item in
  `split`, masking what full-ranking evaluation masks (train; at test also valid unless
  --test_mask_valid=false)."""
  users, relevant, exclude = evaluation.split_targets(run.dataset, split,
                                                      run.config.test_mask_valid)
  if not users.size:
    raise ValueError(f"The run's {split} split has no user with a label-1 item (a run retrained "
                     "on train+valid has no validation split to choose alpha on).")
  items, scores = evaluation.top_k_items(run.user_embeddings, run.item_embeddings, users,
                                         exclude, top_n, batch_size)
  return Candidates(users, items, scores, relevant)


def llm_scores(llm: cached_llm.CachedLLM, profiles: profiles_lib.Profiles,
               splits: list[Candidates], description: str) -> list[np.ndarray]:
  """Preference margins [n, N] of each split's candidates (NaN where the model failed), in one
  request: a user's valid and test candidates share their profile prefix and a pair in both is
  scored once."""
  users = np.concatenate([np.repeat(c.users, c.items.shape[1]) for c in splits])
  items = np.concatenate([c.items.ravel() for c in splits])
  margins = preference.preference_margins(llm, profiles, users, items, description)
  sizes = [c.items.size for c in splits]
  parts = np.split(margins, np.cumsum(sizes)[:-1])
  return [part.reshape(c.items.shape) for part, c in zip(parts, splits)]


def normalise(scores: np.ndarray, method: str) -> np.ndarray:
  """Per-row min-max to [0, 1] or z-score over the finite entries; others become the row's
  minimum (a constant row becomes 0)."""
  finite = np.isfinite(scores)
  masked = np.where(finite, scores, np.nan)
  with np.errstate(invalid="ignore", divide="ignore"):
    if method == "minmax":
      low, high = np.nanmin(masked, 1, keepdims=True), np.nanmax(masked, 1, keepdims=True)
      result = (masked - low) / np.where(high > low, high - low, 1.0)
    elif method == "zscore":
      mean, std = np.nanmean(masked, 1, keepdims=True), np.nanstd(masked, 1, keepdims=True)
      result = (masked - mean) / np.where(std > 0, std, 1.0)
    else:
      raise ValueError(f"--rerank_normalisation={method!r}: expected minmax or zscore.")
  result = np.nan_to_num(result, nan=np.inf)
  row_min = np.min(np.where(finite, result, np.inf), 1, keepdims=True)
  return np.where(finite, result, np.where(np.isfinite(row_min), row_min, 0.0))


def fuse(candidates: Candidates, llm: np.ndarray, alpha: float, method: str) -> np.ndarray:
  """Candidates reordered by alpha * CF + (1 - alpha) * LLM (ties keep CF order); padding
  (-inf CF) stays last. Returns int32 [n, N] items."""
  final = alpha * normalise(candidates.cf_scores, method) + (1 - alpha) * normalise(llm, method)
  final = np.where(np.isfinite(candidates.cf_scores), final, -np.inf)
  order = np.argsort(-final, axis=1, kind="stable")
  return np.take_along_axis(candidates.items, order, axis=1)


def _metrics(items: np.ndarray, candidates: Candidates, ks: tuple[int, ...]) -> dict[str, float]:
  result = evaluation.ranking_metrics(items, candidates.relevant, ks)
  result["num_users"] = int(items.shape[0])
  return result


@dataclasses.dataclass
class RerankResult:
  """Metrics without and with reranking, and the reranked test lists."""
  metrics: dict[str, Any]  # JSON-ready: alpha, alpha_grid, valid/test cf/reranked metrics
  test: Candidates
  test_llm_scores: np.ndarray  # [n, N] preference margins of test.items
  test_reranked: np.ndarray  # int32 [n, N]
  test_per_user: dict[str, np.ndarray]  # reranked metrics of each test.users row, e.g. "ndcg@20"


def rerank_evaluation(valid: Candidates, valid_llm: np.ndarray, test: Candidates,
                      test_llm: np.ndarray, alphas: tuple[float, ...], method: str,
                      ks: tuple[int, ...], select_metric: str) -> RerankResult:
  """Chooses alpha on validation by `select_metric` (e.g. "ndcg@20"; ties go to the larger
  alpha, i.e. closer to CF), then scores validation and test without and with reranking."""
  if not alphas:
    raise ValueError("--rerank_alphas is empty.")
  grid = {alpha: _metrics(fuse(valid, valid_llm, alpha, method), valid, ks) for alpha in alphas}
  best = max(alphas, key=lambda a: (grid[a][select_metric], a))
  reranked = fuse(test, test_llm, best, method)
  metrics = {
      "alpha": best,
      "select_metric": f"valid/{select_metric}",
      "alpha_grid": {str(a): grid[a][select_metric] for a in alphas},
      "normalisation": method,
      "valid": {"cf": _metrics(valid.items, valid, ks), "reranked": grid[best]},
      "test": {"cf": _metrics(test.items, test, ks), "reranked": _metrics(reranked, test, ks)},
  }
  return RerankResult(metrics, test, test_llm, reranked,
                      evaluation.per_user_ranking_metrics(reranked, test.relevant, ks))


def rerank_run(run, llm: cached_llm.CachedLLM, profiles: profiles_lib.Profiles, top_n: int,
               alphas: tuple[float, ...], method: str,
               keep_users: Optional[np.ndarray] = None) -> RerankResult:
  """Reranks the top-N of `run` (a `lagcl_jax.inference.TrainedRun`) on valid and test.

  `keep_users` (internal indices) restricts both splits to those users. Metrics are the run's
  cut-offs up to N; alpha is chosen by the run's select_metric on validation.
  """
  config = run.config
  ks = tuple(k for k in config.top_k if k <= top_n)
  select_metric = config.select_metric.split("/", 1)[-1]
  if not ks or int(select_metric.split("@")[-1]) > top_n:
    raise ValueError(f"--rerank_top_n={top_n} is below the cut-offs top_k={config.top_k} / "
                     f"select_metric={config.select_metric}.")
  splits = []
  for split in ("valid", "test"):
    candidates = cf_candidates(run, split, top_n, config.eval_batch_size)
    if keep_users is not None:
      candidates = candidates.select(np.isin(candidates.users, keep_users))
    if not candidates.users.size:
      raise ValueError(f"No {split} user left to rerank among the selected users.")
    splits.append(candidates)
  valid_llm, test_llm = llm_scores(llm, profiles, splits, "rerank: valid and test")
  result = rerank_evaluation(splits[0], valid_llm, splits[1], test_llm, alphas, method, ks,
                             select_metric)
  result.metrics["top_n"] = top_n
  return result


def write_reranked(path: str, dataset, result: RerankResult) -> None:
  """The reranked test lists as TSV: user, rank, item, cf_score, llm_score (raw ids)."""
  lines = ["user\trank\titem\tcf_score\tllm_score\n"]
  for row, user in enumerate(result.test.users.tolist()):
    position = {item: col for col, item in enumerate(result.test.items[row].tolist())}
    for rank, item in enumerate(result.test_reranked[row].tolist(), 1):
      col = position[item]
      cf = result.test.cf_scores[row, col]
      if np.isfinite(cf):
        lines.append(f"{dataset.user_ids[user]}\t{rank}\t{dataset.item_ids[item]}\t{cf:.6f}\t"
                     f"{result.test_llm_scores[row, col]:.6f}\n")
  reporting.atomic_write_text(path, "".join(lines))

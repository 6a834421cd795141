"""Tests for lagcl_jax.evaluation against a brute-force dense ranking and per-user loops."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from lagcl_jax import evaluation
from lagcl_jax.data_types import Dataset

import synthetic


def reference_metrics(ranked: list[list[int]], relevant: list[set[int]],
                      ks: tuple[int, ...]) -> dict[str, float]:
  """Per-user loop: recall = hits/|rel|, NDCG with IDCG over min(|rel|, K), precision = hits/K."""
  sums = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg", "precision", "hit")}
  for items, rel in zip(ranked, relevant):
    for k in ks:
      hits = [1.0 if item in rel else 0.0 for item in items[:k]]
      dcg = sum(h / math.log2(rank + 2) for rank, h in enumerate(hits))
      idcg = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(rel), k)))
      sums[f"recall@{k}"] += sum(hits) / len(rel)
      sums[f"ndcg@{k}"] += dcg / idcg
      sums[f"precision@{k}"] += sum(hits) / k
      sums[f"hit@{k}"] += float(sum(hits) > 0)
  return {name: total / len(ranked) for name, total in sums.items()}


def brute_force_evaluate(user_emb, item_emb, dataset: Dataset, split: str, ks):
  """Dense scores, known items set to -inf, full argsort; only label-1 items of the split count."""
  target = dataset.valid if split == "valid" else dataset.test
  known = [dataset.train] + ([dataset.valid] if split == "test" else [])
  scores = user_emb.astype(np.float64) @ item_emb.astype(np.float64).T
  for part in known:
    scores[part.users, part.items] = -np.inf
  ranked, relevant = [], []
  for user in range(dataset.num_users):
    rel = set(target.items[(target.users == user) & (target.labels > 0)].tolist())
    if not rel:
      continue
    ranked.append(np.argsort(-scores[user], kind="stable")[:max(ks)].tolist())
    relevant.append(rel)
  metrics = reference_metrics(ranked, relevant, ks)
  metrics["num_users"] = len(ranked)
  return metrics


def relevance_matrix(relevant: list[set[int]], num_items: int) -> sp.csr_matrix:
  rows = [r for r, rel in enumerate(relevant) for _ in rel]
  cols = [i for rel in relevant for i in sorted(rel)]
  return sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)),
                       shape=(len(relevant), num_items))


def test_ranking_metrics_hand_computed():
  top_items = np.array([[3, 1, 2], [0, 4, 5]])
  relevant = relevance_matrix([{1, 5}, {0}], 6)
  metrics = evaluation.ranking_metrics(top_items, relevant, (1, 2))
  ndcg2_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
  assert metrics["recall@1"] == pytest.approx((0 + 1) / 2)
  assert metrics["recall@2"] == pytest.approx((0.5 + 1) / 2)
  assert metrics["ndcg@1"] == pytest.approx((0 + 1) / 2)
  assert metrics["ndcg@2"] == pytest.approx((ndcg2_user0 + 1) / 2)
  assert metrics["precision@2"] == pytest.approx((0.5 + 0.5) / 2)
  assert metrics["hit@1"] == pytest.approx(0.5)
  assert metrics["hit@2"] == pytest.approx(1.0)


def test_ranking_metrics_matches_loop_reference():
  rng = np.random.default_rng(0)
  num_users, num_items = 25, 30
  top_items = np.stack([rng.permutation(num_items)[:12] for _ in range(num_users)])
  relevant = []
  for user in range(num_users):
    size = int(rng.integers(1, 15))  # Some users have more relevant items than K.
    rel = set(rng.choice(num_items, size, replace=False).tolist())
    if user % 3 == 0:  # Guarantee hits at various ranks.
      rel.add(int(top_items[user, user % 12]))
    relevant.append(rel)
  ks = (1, 5, 10, 12)
  expected = reference_metrics(top_items.tolist(), relevant, ks)
  got = evaluation.ranking_metrics(top_items, relevance_matrix(relevant, num_items), ks)
  assert set(got) == set(expected)
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, rel=1e-12), name


def test_ranking_metrics_rejects_users_without_relevant_items():
  relevant = sp.csr_matrix(np.array([[True, False], [False, False]]))
  with pytest.raises(ValueError, match="relevant"):
    evaluation.ranking_metrics(np.array([[0, 1], [1, 0]]), relevant, (1,))


def hand_made_case():
  """User 0: train {0:+1, 1:-1}, valid {2:+1}, test {3:+1, 4:-1}; user 1: only a -1 test item.
  Every user scores items 0..5 as 10, 9, 8, 6, 7, 5. Returns (dataset, user_emb, item_emb)."""
  dataset = Dataset(
      name="hand", user_ids=np.array(["a", "b"]), item_ids=np.array(list("012345")),
      train=synthetic.interactions([0, 0, 1], [0, 1, 5], [1, -1, 1]),
      valid=synthetic.interactions([0], [2], [1]),
      test=synthetic.interactions([0, 0, 1], [3, 4, 4], [1, -1, -1]),
      user_meta=[{}, {}], item_meta=[{}] * 6, summary={})
  user_emb = np.ones((2, 1), np.float32)
  item_emb = np.array([[10], [9], [8], [6], [7], [5]], np.float32)
  return dataset, user_emb, item_emb


def test_evaluate_hand_made_masks_and_labels():
  dataset, user_emb, item_emb = hand_made_case()
  test = evaluation.evaluate(user_emb, item_emb, dataset, "test", (1, 2))
  # Items 0, 1 (train, either label) and 2 (valid) are masked; the -1 item 4 is not relevant.
  assert test["num_users"] == 1
  assert test["recall@1"] == 0.0 and test["hit@1"] == 0.0
  assert test["recall@2"] == 1.0 and test["precision@2"] == 0.5
  assert test["ndcg@2"] == pytest.approx(1 / math.log2(3))
  valid = evaluation.evaluate(user_emb, item_emb, dataset, "valid", (1, 2))
  # On validation only train is masked: the valid item 2 ranks first.
  assert valid["num_users"] == 1
  assert valid["recall@1"] == 1.0 and valid["ndcg@1"] == 1.0


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_matches_brute_force(split):
  dataset = synthetic.random_dataset(num_users=30, num_items=40, seed=1)
  rng = np.random.default_rng(2)
  user_emb = rng.normal(size=(dataset.num_users, 8)).astype(np.float32)
  item_emb = rng.normal(size=(dataset.num_items, 8)).astype(np.float32)
  # Make the known (masked) items the users' favourites, so a missing mask cannot go unnoticed.
  known = [dataset.train] + ([dataset.valid] if split == "test" else [])
  for part in known:
    item_emb[part.items] += 0.5 * user_emb[part.users]
  ks = (1, 5, 10, 20)
  expected = brute_force_evaluate(user_emb, item_emb, dataset, split, ks)
  target = dataset.valid if split == "valid" else dataset.test
  assert expected["num_users"] < dataset.num_users  # Some users have no label-1 item here.
  assert expected["num_users"] == np.unique(target.users[target.labels > 0]).size
  results = [evaluation.evaluate(user_emb, item_emb, dataset, split, ks, batch_size=b)
             for b in (1, 7, 1024)]  # 7 does not divide the number of evaluated users.
  for got in results:
    assert got == results[0]
  assert set(results[0]) == set(expected)
  for name, value in expected.items():
    assert results[0][name] == pytest.approx(value, rel=1e-6), name


def test_top_k_items_matches_dense_argsort():
  dataset = synthetic.random_dataset(num_users=20, num_items=35, seed=3)
  rng = np.random.default_rng(4)
  user_emb = rng.normal(size=(dataset.num_users, 6)).astype(np.float32)
  item_emb = rng.normal(size=(dataset.num_items, 6)).astype(np.float32)
  exclude = evaluation.interaction_matrix(dataset.num_users, dataset.num_items, dataset.train,
                                          dataset.valid)
  users = np.array([5, 0, 19, 3, 3, 11, 7], np.int32)  # Any order, repeats allowed.
  scores = user_emb @ item_emb.T
  scores[exclude.toarray()] = -np.inf
  for batch_size in (1, 3, 100):
    items, top_scores = evaluation.top_k_items(user_emb, item_emb, users, exclude, 10,
                                               batch_size)
    assert items.shape == (7, 10) and items.dtype == np.int32
    for row, user in enumerate(users):
      np.testing.assert_array_equal(items[row], np.argsort(-scores[user], kind="stable")[:10])
      np.testing.assert_allclose(top_scores[row], scores[user, items[row]], rtol=1e-5)
      assert not exclude[user, items[row]].toarray().any()


def test_top_k_items_k_larger_than_catalogue():
  user_emb = np.ones((2, 1), np.float32)
  item_emb = np.array([[3.0], [1.0], [2.0]], np.float32)
  exclude = sp.csr_matrix((2, 3), dtype=bool)
  items, scores = evaluation.top_k_items(user_emb, item_emb, np.array([0, 1]), exclude, 10)
  np.testing.assert_array_equal(items, [[0, 2, 1], [0, 2, 1]])
  np.testing.assert_allclose(scores, [[3, 2, 1], [3, 2, 1]])


def test_interaction_matrix_any_label_and_duplicates():
  part = synthetic.interactions([0, 0, 1], [2, 2, 0], [1, -1, -1])
  matrix = evaluation.interaction_matrix(2, 3, part, synthetic.interactions([1], [1], [1]))
  np.testing.assert_array_equal(matrix.toarray(), [[0, 0, 1], [1, 1, 0]])


def test_evaluate_unknown_split_and_empty_split():
  dataset = synthetic.random_dataset(num_users=5, num_items=20)
  with pytest.raises(ValueError, match="split"):
    evaluation.evaluate(np.ones((5, 2)), np.ones((20, 2)), dataset, "train", (1,))
  empty = Dataset(**{**vars(dataset), "valid": synthetic.interactions([], [], [])})
  with pytest.raises(ValueError, match="valid"):
    evaluation.evaluate(np.ones((5, 2)), np.ones((20, 2)), empty, "valid", (1,))


def test_per_user_metrics_match_loop_reference():
  """Each evaluated user's metrics equal the loop reference on that user alone; `evaluate` is
  their mean."""
  dataset = synthetic.random_dataset(num_users=30, num_items=40, seed=5)
  rng = np.random.default_rng(6)
  user_emb = rng.normal(size=(dataset.num_users, 8)).astype(np.float32)
  item_emb = rng.normal(size=(dataset.num_items, 8)).astype(np.float32)
  ks = (1, 5, 10, 40)
  users, per_user = evaluation.evaluate_per_user(user_emb, item_emb, dataset, "test", ks,
                                                 batch_size=7)
  expected_users = np.unique(dataset.test.users[dataset.test.labels > 0])
  np.testing.assert_array_equal(users, expected_users)
  scores = user_emb.astype(np.float64) @ item_emb.astype(np.float64).T
  for part in (dataset.train, dataset.valid):
    scores[part.users, part.items] = -np.inf
  for row, user in enumerate(users):
    rel = set(dataset.test.items[(dataset.test.users == user) & (dataset.test.labels > 0)].tolist())
    ranked = np.argsort(-scores[user], kind="stable")[:max(ks)].tolist()
    expected = reference_metrics([ranked], [rel], ks)
    for name, value in expected.items():
      assert per_user[name][row] == pytest.approx(value, rel=1e-6), (user, name)
  means = evaluation.evaluate(user_emb, item_emb, dataset, "test", ks)
  assert means == {**{name: float(np.mean(v)) for name, v in per_user.items()},
                   "num_users": users.size}


def test_test_without_valid_mask_matches_brute_force():
  """The LightGCN++ protocol (mask_valid=False): at test only train items are masked; validation
  items stay rankable and are not relevant."""
  dataset = synthetic.random_dataset(num_users=30, num_items=40, seed=7)
  rng = np.random.default_rng(8)
  user_emb = rng.normal(size=(dataset.num_users, 8)).astype(np.float32)
  item_emb = rng.normal(size=(dataset.num_items, 8)).astype(np.float32)
  item_emb[dataset.valid.items] += 0.5 * user_emb[dataset.valid.users]  # Valid items rank high.
  ks = (1, 5, 10)
  no_valid = Dataset(**{**vars(dataset), "valid": synthetic.interactions([], [], [])})
  expected = brute_force_evaluate(user_emb, item_emb, no_valid, "test", ks)  # Masks train only.
  got = evaluation.evaluate(user_emb, item_emb, dataset, "test", ks, mask_valid=False)
  assert set(got) == set(expected)
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, rel=1e-6), name
  masked = evaluation.evaluate(user_emb, item_emb, dataset, "test", ks)
  assert masked != got  # The flag changes the protocol on this data.
  # Validation is unaffected by the flag: only train is masked there.
  assert (evaluation.evaluate(user_emb, item_emb, dataset, "valid", ks, mask_valid=False)
          == evaluation.evaluate(user_emb, item_emb, dataset, "valid", ks))


def test_hand_made_test_without_valid_mask():
  """User 0 of the hand-made case: with valid unmasked, its valid item 2 (score 8) ranks first
  and is not a hit; the test item 3 is second."""
  dataset, user_emb, item_emb = hand_made_case()
  test = evaluation.evaluate(user_emb, item_emb, dataset, "test", (1, 3), mask_valid=False)
  assert test["recall@1"] == 0.0 and test["recall@3"] == 1.0  # Ranking 2, 4, 3.
  assert test["ndcg@3"] == pytest.approx(1 / math.log2(4))

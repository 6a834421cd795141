"""Tests for lagcl_jax.losses against slow references written from the formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lagcl_jax import losses

# Jitted once per shape: eager op-by-op dispatch would dominate the test time.
group_infonce = jax.jit(losses.group_infonce,
                        static_argnames=("tau_positive", "tau_easy", "tau_hard", "hard_weight"))


def reference_group_infonce(anchors, candidates, positive_index, anchor_groups,
                            candidate_groups, anchor_weights, candidate_valid, normaliser,
                            tau_positive, tau_easy, tau_hard, hard_weight):
  """loss_i = -log(e^{s_ip/τp} / (e^{s_ip/τp} + Σ_easy e^{s_ij/τe} + w_h Σ_hard e^{s_ij/τh}))."""
  anchors = np.asarray(anchors, np.float64)
  candidates = np.asarray(candidates, np.float64)
  total = 0.0
  for i in range(anchors.shape[0]):
    if anchor_weights[i] == 0:
      continue
    p = positive_index[i]

    def cosine(j):
      a, c = anchors[i], candidates[j]
      return a @ c / (np.linalg.norm(a) * np.linalg.norm(c))

    # Work relative to the positive's logit so large inputs cannot overflow.
    pos_logit = cosine(p) / tau_positive
    denominator = 1.0
    for j in range(candidates.shape[0]):
      if j == p or not candidate_valid[j]:
        continue
      if candidate_groups[j] == anchor_groups[i]:
        denominator += hard_weight * math.exp(cosine(j) / tau_hard - pos_logit)
      else:
        denominator += math.exp(cosine(j) / tau_easy - pos_logit)
    total += float(anchor_weights[i]) * math.log(denominator)
  return total / normaliser


def infonce_inputs(rng, n, m, num_groups, scale=1.0, invalid_fraction=0.0, zero_weights=0):
  anchors = rng.normal(size=(n, 6)) * scale
  candidates = rng.normal(size=(m, 6)) * scale
  positive_index = rng.permutation(m)[:n]
  anchor_groups = rng.integers(0, num_groups, n)
  candidate_groups = rng.integers(0, num_groups, m)
  candidate_groups[positive_index] = anchor_groups  # A node's two views share its group.
  candidate_valid = rng.random(m) >= invalid_fraction
  candidate_valid[positive_index] = True
  anchor_weights = np.ones(n)
  anchor_weights[rng.permutation(n)[:zero_weights]] = 0.0
  return dict(anchors=anchors.astype(np.float32), candidates=candidates.astype(np.float32),
              positive_index=positive_index, anchor_groups=anchor_groups,
              candidate_groups=candidate_groups, anchor_weights=anchor_weights.astype(np.float32),
              candidate_valid=candidate_valid, normaliser=max(anchor_weights.sum(), 1.0))


def call_infonce(inputs, **temperatures):
  arrays = {k: jnp.asarray(v) for k, v in inputs.items()}
  return float(group_infonce(**arrays, **temperatures))


TEMPERATURES = dict(tau_positive=1.0, tau_easy=0.25, tau_hard=0.1, hard_weight=2.0)


@pytest.mark.parametrize("case", [
    dict(n=7, m=7, num_groups=3),
    dict(n=5, m=12, num_groups=4),  # More candidates than anchors (other devices' rows).
    dict(n=6, m=6, num_groups=1),  # Everything in one group: every negative is hard.
    dict(n=6, m=6, num_groups=100),  # Practically every negative is easy.
    dict(n=1, m=1, num_groups=2),  # One node: no negatives (the reference gives 0).
    dict(n=8, m=10, num_groups=3, invalid_fraction=0.4),  # Padding / repeated nodes.
    dict(n=8, m=8, num_groups=2, zero_weights=3),  # Repeated anchors do not count.
])
def test_group_infonce_matches_reference(case):
  rng = np.random.default_rng(len(str(case)))
  inputs = infonce_inputs(rng, **case)
  for temperatures in (TEMPERATURES, dict(tau_positive=0.5, tau_easy=0.3, tau_hard=0.2,
                                          hard_weight=0.5)):
    expected = reference_group_infonce(**inputs, **temperatures)
    np.testing.assert_allclose(call_infonce(inputs, **temperatures), expected, rtol=2e-5,
                               atol=1e-6)


def test_group_infonce_hard_weight_and_groups_matter():
  """The loss responds to w_hard and to the groups (so the reference comparisons have teeth)."""
  inputs = infonce_inputs(np.random.default_rng(1), n=6, m=6, num_groups=2)
  base = call_infonce(inputs, **TEMPERATURES)
  heavier = call_infonce(inputs, **{**TEMPERATURES, "hard_weight": 5.0})
  assert heavier > base
  one_group = dict(inputs, anchor_groups=np.zeros(6, int), candidate_groups=np.zeros(6, int))
  assert call_infonce(one_group, **TEMPERATURES) != pytest.approx(base)


def test_group_infonce_plain_infonce_with_distinct_groups():
  """Distinct groups per node and τ_easy = τ_pos give the textbook InfoNCE (cross entropy)."""
  rng = np.random.default_rng(2)
  anchors, candidates = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
  c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
  logits = a @ c.T / 0.2
  expected = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
  got = group_infonce(
      jnp.asarray(anchors, jnp.float32), jnp.asarray(candidates, jnp.float32), jnp.arange(5),
      jnp.arange(5), jnp.arange(5), jnp.ones(5), jnp.ones(5, bool), 5.0, tau_positive=0.2,
      tau_easy=0.2, tau_hard=0.1, hard_weight=2.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e3, 1e15])
def test_group_infonce_large_inputs_finite_with_finite_gradients(scale):
  inputs = infonce_inputs(np.random.default_rng(3), n=6, m=6, num_groups=2, scale=scale)
  # Tiny temperatures make the logits huge: only a log-sum-exp survives.
  temperatures = dict(tau_positive=1e-3, tau_easy=1e-3, tau_hard=1e-3, hard_weight=2.0)
  expected = reference_group_infonce(**inputs, **temperatures)
  value = call_infonce(inputs, **temperatures)
  assert np.isfinite(value)
  np.testing.assert_allclose(value, expected, rtol=1e-3)
  arrays = {k: jnp.asarray(v) for k, v in inputs.items()}

  def loss(anchors, candidates):
    return group_infonce(**{**arrays, "anchors": anchors, "candidates": candidates},
                                **temperatures)

  grads = jax.grad(loss, argnums=(0, 1))(arrays["anchors"], arrays["candidates"])
  for grad in grads:
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("argument", ["anchors", "candidates"])
def test_group_infonce_gradients_match_finite_differences(argument):
  inputs = infonce_inputs(np.random.default_rng(4), n=5, m=7, num_groups=2,
                          invalid_fraction=0.3)
  arrays = {k: jnp.asarray(v) for k, v in inputs.items()}
  grad = jax.jit(jax.grad(lambda x: group_infonce(**{**arrays, argument: x}, **TEMPERATURES)))(
      arrays[argument])
  assert np.all(np.isfinite(np.asarray(grad)))
  step = 1e-4
  for i, d in [(0, 0), (2, 3), (4, 5), (1, 1)]:
    plus, minus = inputs[argument].astype(np.float64), inputs[argument].astype(np.float64)
    plus[i, d] += step
    minus[i, d] -= step
    numeric = (reference_group_infonce(**{**inputs, argument: plus}, **TEMPERATURES)
               - reference_group_infonce(**{**inputs, argument: minus}, **TEMPERATURES))
    numeric /= 2 * step
    np.testing.assert_allclose(float(grad[i, d]), numeric, rtol=1e-3, atol=1e-5)


def test_similarity_gradients_equal_plain_product():
  """The custom backward of `similarity` gives the gradients of `a @ c.T`."""
  rng = np.random.default_rng(6)
  a, c, g = (jnp.asarray(rng.normal(size=shape), jnp.float32)
             for shape in [(9, 4), (11, 4), (9, 11)])
  np.testing.assert_array_equal(np.asarray(losses.similarity(a, c)), np.asarray(a @ c.T))
  got = jax.vjp(losses.similarity, a, c)[1](g)
  want = jax.vjp(lambda a, c: a @ c.T, a, c)[1](g)
  for got_grad, want_grad in zip(got, want):
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=1e-6, atol=1e-6)


def test_group_infonce_gradients_finite_for_padded_rows():
  """Padding rows (weight 0, invalid) and a zero embedding must not poison the gradient."""
  inputs = infonce_inputs(np.random.default_rng(5), n=6, m=6, num_groups=2)
  inputs["anchors"][5] = 0.0
  inputs["candidates"][inputs["positive_index"][5]] = 0.0
  inputs["anchor_weights"][5] = 0.0
  inputs["candidate_valid"][inputs["positive_index"][5]] = False
  arrays = {k: jnp.asarray(v) for k, v in inputs.items()}
  value, grads = jax.value_and_grad(
      lambda a, c: group_infonce(**{**arrays, "anchors": a, "candidates": c},
                                        **TEMPERATURES), argnums=(0, 1))(
                                            arrays["anchors"], arrays["candidates"])
  assert np.isfinite(float(value))
  for grad in grads:
    assert np.all(np.isfinite(np.asarray(grad)))


def reference_bpr(user, pos, neg, neg_weights, row_weights, normaliser):
  total = 0.0
  for b in range(user.shape[0]):
    for k in range(neg.shape[1]):
      margin = float(user[b] @ pos[b] - user[b] @ neg[b, k])
      total += float(row_weights[b]) * neg_weights[k] * -math.log(1.0 / (1.0 + math.exp(-margin)))
  return total / normaliser


@pytest.mark.parametrize("num_negatives,neg_weights", [(1, [1.0]), (2, [1.0, 2.0])])
def test_bpr_loss_matches_reference(num_negatives, neg_weights):
  rng = np.random.default_rng(num_negatives)
  batch, dim = 9, 5
  user = rng.normal(size=(batch, dim)).astype(np.float32)
  pos = rng.normal(size=(batch, dim)).astype(np.float32)
  neg = rng.normal(size=(batch, num_negatives, dim)).astype(np.float32)
  row_weights = np.array([1] * 6 + [0] * 3, np.float32)  # Three padding rows.
  expected = reference_bpr(user, pos, neg, neg_weights, row_weights, 6.0)
  got = losses.bpr_loss(jnp.asarray(user), jnp.asarray(pos), jnp.asarray(neg),
                        jnp.asarray(neg_weights), jnp.asarray(row_weights), jnp.asarray(6.0))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  # Padding rows change nothing.
  user[6:] = 100.0
  again = losses.bpr_loss(jnp.asarray(user), jnp.asarray(pos), jnp.asarray(neg),
                          jnp.asarray(neg_weights), jnp.asarray(row_weights), jnp.asarray(6.0))
  np.testing.assert_allclose(float(again), expected, rtol=1e-5)


def test_bpr_loss_large_margins_finite():
  user = jnp.full((2, 3), 100.0)
  pos = jnp.array([[100.0] * 3, [-100.0] * 3])
  neg = -pos[:, None, :]
  got = losses.bpr_loss(user, pos, neg, jnp.ones(1), jnp.ones(2), jnp.asarray(2.0))
  # Row 0: margin +6e4 -> 0; row 1: margin -6e4 -> 6e4.
  np.testing.assert_allclose(float(got), 6e4 / 2, rtol=1e-6)


def test_l2_penalty_matches_reference():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 3)).astype(np.float32)
  b = rng.normal(size=(4, 2, 3)).astype(np.float32)
  row_weights = np.array([1, 1, 0, 1], np.float32)
  expected = sum(row_weights[r] * (np.sum(a[r] ** 2) + np.sum(b[r] ** 2)) for r in range(4)) / 3
  got = losses.l2_penalty([jnp.asarray(a), jnp.asarray(b)], jnp.asarray(row_weights),
                          jnp.asarray(3.0))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)

"""Tests for lagcl_jax.graph and lagcl_jax.model against dense NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lagcl_jax import graph as graph_lib
from lagcl_jax import model as model_lib

NUM_USERS, NUM_ITEMS = 7, 9


def random_edges(seed=0, num_rows=30):
  """Random user-item rows with duplicates; item 8 and user 6 stay isolated."""
  rng = np.random.default_rng(seed)
  users = rng.integers(0, NUM_USERS - 1, num_rows)
  items = rng.integers(0, NUM_ITEMS - 1, num_rows)
  return np.concatenate([users, users[:5]]), np.concatenate([items, items[:5]])


def dense_normalised_adjacency(users, items):
  """D^-1/2 A D^-1/2 of the bipartite graph, built densely (isolated nodes: zero rows)."""
  n = NUM_USERS + NUM_ITEMS
  adjacency = np.zeros((n, n))
  for u, i in zip(users, items):
    adjacency[u, NUM_USERS + i] = adjacency[NUM_USERS + i, u] = 1.0
  degree = adjacency.sum(axis=1)
  inv_sqrt = np.array([1 / np.sqrt(d) if d > 0 else 0.0 for d in degree])
  return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]


@pytest.fixture(scope="module")
def graph_and_dense():
  users, items = random_edges()
  return (graph_lib.build_graph(NUM_USERS, NUM_ITEMS, users, items),
          dense_normalised_adjacency(users, items))


def test_build_graph_normalisation_matches_dense(graph_and_dense):
  graph, dense = graph_and_dense
  assert graph_lib.num_nodes(graph) == NUM_USERS + NUM_ITEMS
  np.testing.assert_allclose(graph_lib.to_csr(graph).toarray(), dense, rtol=1e-6)
  # Every undirected edge once in each direction (duplicates merged), sorted by receiver.
  assert int(graph.n_edge[0]) == 2 * int((dense[:NUM_USERS] > 0).sum())
  assert np.all(np.diff(graph.receivers) >= 0)
  assert dense[NUM_USERS - 1].sum() == 0 and dense[-1].sum() == 0  # Isolated nodes.


@pytest.mark.parametrize("kernel", ["segment_sum", "bcoo", "scipy"])
def test_propagation_values_and_gradients_match_dense(graph_and_dense, kernel):
  graph, dense = graph_and_dense
  propagate = graph_lib.make_propagation(kernel, graph)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(NUM_USERS + NUM_ITEMS, 4)).astype(np.float32)
  weights = rng.normal(size=x.shape).astype(np.float32)
  np.testing.assert_allclose(np.asarray(propagate(graph, jnp.asarray(x))), dense @ x,
                             rtol=1e-5, atol=1e-6)

  def two_layers(embeddings):
    first = propagate(graph, embeddings)
    second = propagate(graph, first)
    return jnp.sum(jnp.tanh(second) * weights) + jnp.sum(first ** 2)

  value, grad = jax.jit(jax.value_and_grad(two_layers))(jnp.asarray(x))
  first, second = dense @ x, dense @ dense @ x
  np.testing.assert_allclose(float(value), np.sum(np.tanh(second) * weights) + np.sum(first ** 2),
                             rtol=1e-5)
  # d/dx: A^T (A^T (w * (1 - tanh^2(A A x)))) + A^T (2 A x); A is symmetric.
  expected = dense.T @ (dense.T @ (weights * (1 - np.tanh(second) ** 2))) + dense.T @ (2 * first)
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-5)


def test_kernels_agree_with_each_other(graph_and_dense):
  graph, _ = graph_and_dense
  x = jnp.asarray(np.random.default_rng(2).normal(size=(NUM_USERS + NUM_ITEMS, 3)), jnp.float32)
  scipy_kernel = graph_lib.make_propagation("scipy", graph)
  np.testing.assert_allclose(np.asarray(scipy_kernel(graph, x)),
                             np.asarray(graph_lib.propagate_segment_sum(graph, x)), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("num_threads", [2, 3, 50])
def test_threaded_csr_product_equals_single_threaded_and_dense(graph_and_dense, num_threads):
  graph, dense = graph_and_dense
  adjacency = graph_lib.to_csr(graph)
  blocks = graph_lib.row_blocks(adjacency, num_threads)
  assert sum(block.shape[0] for block in blocks) == adjacency.shape[0]
  assert sum(block.nnz for block in blocks) == adjacency.nnz
  x = np.random.default_rng(3).normal(size=(adjacency.shape[0], 4)).astype(np.float32)
  threaded = graph_lib.csr_product(adjacency, num_threads)(x)
  np.testing.assert_array_equal(threaded, graph_lib.csr_product(adjacency, 1)(x))
  np.testing.assert_allclose(threaded, dense @ x, rtol=1e-5, atol=1e-6)


def test_make_propagation_rejects_unknown_kernel(graph_and_dense):
  with pytest.raises(ValueError, match="propagation_kernel"):
    graph_lib.make_propagation("dense", graph_and_dense[0])


def encoder(graph, kernel, num_layers=2, cl_layer=1, eps=0.0):
  return model_lib.GraphEncoder(
      num_users=NUM_USERS, num_items=NUM_ITEMS, embedding_dim=5, num_layers=num_layers,
      cl_layer=cl_layer, eps=eps, propagate=graph_lib.make_propagation(kernel, graph))


@pytest.mark.parametrize("kernel,num_layers,cl_layer", [("segment_sum", 2, 1),
                                                         ("scipy", 3, 2)])
def test_encoder_without_noise_is_dense_lightgcn(graph_and_dense, kernel, num_layers, cl_layer):
  graph, dense = graph_and_dense
  model = encoder(graph, kernel, num_layers, cl_layer)
  params = model.init(jax.random.PRNGKey(0), graph)
  x0 = np.concatenate([np.asarray(params["params"]["user_embedding"]),
                       np.asarray(params["params"]["item_embedding"])]).astype(np.float64)
  layers = [x0]
  for _ in range(num_layers):
    layers.append(dense @ layers[-1])
  expected_final = np.mean(layers[1:], axis=0)  # Mean of layers 1..L (layer 0 excluded).
  for noise_key in (None, jax.random.PRNGKey(3)):  # eps=0: a noise key changes nothing.
    final, cl_view = model.apply(params, graph, noise_key)
    np.testing.assert_allclose(np.asarray(final), expected_final, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(cl_view), layers[cl_layer], rtol=1e-5, atol=1e-7)
  users, items = model_lib.split_nodes(final, NUM_USERS)
  assert users.shape == (NUM_USERS, 5) and items.shape == (NUM_ITEMS, 5)


def test_encoder_noise_has_norm_eps_and_keeps_signs(graph_and_dense):
  """XSimGCL: layer output e becomes e + sign(e) * eps * u/|u| with u >= 0."""
  graph, dense = graph_and_dense
  eps = 0.2
  model = encoder(graph, "segment_sum", num_layers=1, cl_layer=1, eps=eps)
  params = model.init(jax.random.PRNGKey(0), graph)
  x0 = np.concatenate([np.asarray(params["params"]["user_embedding"]),
                       np.asarray(params["params"]["item_embedding"])])
  clean = dense @ x0
  final, cl_view = model.apply(params, graph, jax.random.PRNGKey(1))
  np.testing.assert_allclose(np.asarray(final), np.asarray(cl_view))  # One layer: same output.
  delta = np.asarray(cl_view) - clean
  connected = np.abs(clean).min(axis=1) > 0  # Isolated nodes: sign(0) = 0, no noise.
  np.testing.assert_allclose(np.linalg.norm(delta[connected], axis=1), eps, rtol=1e-4)
  assert np.all(delta[connected] * clean[connected] >= 0)
  np.testing.assert_allclose(delta[~connected], 0.0)
  other, _ = model.apply(params, graph, jax.random.PRNGKey(2))
  assert not np.allclose(np.asarray(other), np.asarray(final))  # The key draws the noise.
  no_key, _ = model.apply(params, graph)
  np.testing.assert_allclose(np.asarray(no_key), clean, rtol=1e-5, atol=1e-7)


def test_uniform_rows_are_the_rows_of_the_whole_draw():
  key = jax.random.fold_in(jax.random.PRNGKey(4), 2)
  rows = jnp.asarray([0, 5, 5, 12, 2])
  for shape in ((13, 64), (13, 3)):  # Even and odd sizes.
    full = jax.random.uniform(key, shape)
    np.testing.assert_array_equal(model_lib.uniform_rows(key, shape, rows), full[rows])
    np.testing.assert_array_equal(model_lib.uniform_rows(key, shape), full)


@pytest.mark.parametrize("kernel,num_layers,cl_layer,readout", [
    ("scipy", 2, 1, "layers_1_to_L"), ("segment_sum", 2, 2, "layers_1_to_L"),
    ("scipy", 3, 2, "layers_0_to_L"), ("scipy", 1, 1, "layers_1_to_L")])
def test_encoder_at_rows_equals_rows_of_the_whole_pass_with_gradients(
    graph_and_dense, kernel, num_layers, cl_layer, readout):
  """A training step's pass (the last layer for the batch's rows alone, its noise drawn for them)
  gives the whole-graph outputs at those rows, and the same parameter gradients."""
  graph, _ = graph_and_dense
  model = model_lib.GraphEncoder(
      num_users=NUM_USERS, num_items=NUM_ITEMS, embedding_dim=5, num_layers=num_layers,
      cl_layer=cl_layer, eps=0.2, propagate=graph_lib.make_propagation(kernel, graph),
      readout=readout)
  params = model.init(jax.random.PRNGKey(0), graph)
  rows = jnp.asarray([1, 1, 4, NUM_USERS + 3, NUM_USERS + 3, NUM_USERS, NUM_USERS + 7])
  weights = jnp.asarray(np.random.default_rng(8).normal(size=(2, rows.shape[0], 5)), jnp.float32)
  key = jax.random.PRNGKey(5)

  def loss(params, at_rows):
    final, cl_view = (model.apply(params, graph, key, rows) if at_rows else
                      [out[rows] for out in model.apply(params, graph, key)])
    return jnp.sum(jnp.tanh(final) * weights[0]) + jnp.sum(cl_view ** 2 * weights[1]), (final,
                                                                                        cl_view)
  (value, outputs), grads = jax.value_and_grad(loss, has_aux=True)(params, True)
  (full_value, full_outputs), full_grads = jax.value_and_grad(loss, has_aux=True)(params, False)
  for out, full_out in zip(outputs, full_outputs):
    np.testing.assert_allclose(out, full_out, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(value, full_value, rtol=1e-6)
  for grad, full_grad in zip(jax.tree.leaves(grads), jax.tree.leaves(full_grads)):
    np.testing.assert_allclose(grad, full_grad, rtol=1e-5, atol=1e-6)

"""Tests for the threaded SciPy CSR kernel of lagcl_jax.graph against the reference kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from lagcl_jax import graph as graph_lib

NUM_USERS, NUM_ITEMS = 23, 17


@pytest.fixture(scope="module")
def graph():
  """A random bipartite graph with skewed degrees and some isolated nodes."""
  rng = np.random.default_rng(0)
  users = (rng.power(0.4, 300) * (NUM_USERS - 2)).astype(np.int64)
  items = rng.integers(0, NUM_ITEMS - 1, 300)
  return graph_lib.build_graph(NUM_USERS, NUM_ITEMS, users, items)


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 7, 100])
def test_row_blocks_cover_all_rows_in_order_with_balanced_nonzeros(graph, num_blocks):
  adjacency = graph_lib.to_csr(graph)
  blocks = graph_lib.row_blocks(adjacency, num_blocks)
  assert 1 <= len(blocks) <= min(num_blocks, adjacency.shape[0])
  np.testing.assert_array_equal(sp.vstack(blocks).toarray(), adjacency.toarray())
  if num_blocks <= 3:  # Few blocks: each within one row's worth of the fair share.
    max_row = np.diff(adjacency.indptr).max()
    for block in blocks:
      assert abs(block.nnz - adjacency.nnz / len(blocks)) <= max_row


@pytest.mark.parametrize("num_threads", [1, 2, 3, 8])
def test_threaded_csr_product_equals_single_threaded_and_dense(graph, num_threads):
  adjacency = graph_lib.to_csr(graph)
  x = np.random.default_rng(1).normal(size=(adjacency.shape[0], 6)).astype(np.float32)
  product = graph_lib.csr_product(adjacency, num_threads)
  result = product(x)
  assert result.dtype == np.float32 and result.shape == x.shape
  # Each row is summed in the same order as by the single-threaded product: identical values.
  np.testing.assert_array_equal(result, graph_lib.csr_product(adjacency, 1)(x))
  np.testing.assert_allclose(result, adjacency.toarray().astype(np.float64) @ x, rtol=1e-5,
                             atol=1e-6)


def test_scipy_kernel_matches_segment_sum_values_and_gradients(graph):
  """The flag's CPU kernel (threaded over the available cores) against the XLA reference."""
  scipy_kernel = graph_lib.make_propagation("scipy", graph)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(NUM_USERS + NUM_ITEMS, 5)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def loss(propagate, x):
    first = propagate(graph, x)
    return jnp.sum(jnp.tanh(propagate(graph, first)) * weights) + jnp.sum(first ** 2)

  values = {}
  for name, propagate in (("scipy", scipy_kernel),
                          ("segment_sum", graph_lib.propagate_segment_sum)):
    values[name] = jax.jit(jax.value_and_grad(lambda x, p=propagate: loss(p, x)))(x)
  np.testing.assert_allclose(values["scipy"][0], values["segment_sum"][0], rtol=1e-5)
  np.testing.assert_allclose(values["scipy"][1], values["segment_sum"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("nproc,cores,devices,expected", [
    ("", 2, 1, False),  # One device needs 2 threads.
    ("", 1, 1, True),  # Pinned to one core (taskset -c 0): hung in the final evaluation.
    ("2", 1, 1, False),
    ("2", 2, 2, True),  # 2 devices, 2 threads: every thread can end up waiting in a callback.
    ("3", 2, 2, True),  # Still hung on ML-1M-sized inputs.
    ("16", 2, 2, False),
    ("39", 2, 5, True),
])
def test_host_callbacks_can_deadlock(monkeypatch, nproc, cores, devices, expected):
  monkeypatch.setenv("NPROC", nproc)
  monkeypatch.setattr(jax, "local_device_count", lambda: devices)
  monkeypatch.setattr(graph_lib, "available_cores", lambda: cores)
  assert graph_lib.host_callbacks_can_deadlock() == expected


def test_deadlock_prone_setup_gets_segment_sum_or_a_clear_error(monkeypatch, graph):
  monkeypatch.setattr(graph_lib, "host_callbacks_can_deadlock", lambda: True)
  assert graph_lib.make_propagation("auto", graph) is graph_lib.propagate_segment_sum
  with pytest.raises(ValueError, match="NPROC"):
    graph_lib.make_propagation("scipy", graph)


def test_scipy_kernel_keeps_the_input_dtype(graph):
  kernel = graph_lib.make_propagation("scipy", graph)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(NUM_USERS + NUM_ITEMS, 3)))
  for dtype in (jnp.bfloat16, jnp.float32):
    result = jax.jit(lambda x: kernel(graph, x))(x.astype(dtype))
    assert result.dtype == dtype
    np.testing.assert_allclose(np.asarray(result, np.float32),
                               graph_lib.propagate_segment_sum(graph, x.astype(jnp.float32)),
                               rtol=2e-2 if dtype == jnp.bfloat16 else 1e-5, atol=1e-2)
  grad = jax.grad(lambda x: kernel(graph, x).astype(jnp.float32).sum())(x.astype(jnp.bfloat16))
  assert grad.dtype == jnp.bfloat16


def test_scipy_kernel_under_vmap_equals_one_call_per_input(graph):
  kernel = graph_lib.make_propagation("scipy", graph)
  xs = jnp.asarray(np.random.default_rng(5).normal(size=(4, NUM_USERS + NUM_ITEMS, 3)),
                   jnp.float32)
  batched = jax.jit(jax.vmap(lambda x: kernel(graph, x)))(xs)
  for x, result in zip(xs, batched):
    np.testing.assert_allclose(result, kernel(graph, x), rtol=1e-6)
    np.testing.assert_allclose(result, graph_lib.propagate_segment_sum(graph, x), rtol=1e-5,
                               atol=1e-6)


def test_scipy_kernel_refuses_another_graph(graph):
  kernel = graph_lib.make_propagation("scipy", graph)
  x = jnp.ones((NUM_USERS + NUM_ITEMS, 2))
  # Same nodes and edge count, other edges: caught when the graph is concrete.
  other_edges = graph._replace(senders=graph.senders[::-1].copy())
  # Another edge count: caught also when traced (inside jit).
  fewer_edges = graph_lib.build_graph(NUM_USERS, NUM_ITEMS, np.array([0, 1]), np.array([2, 3]))
  bigger = graph_lib.build_graph(NUM_USERS + 1, NUM_ITEMS, np.array([0, 1]), np.array([2, 3]))
  for other, rows in ((other_edges, NUM_USERS + NUM_ITEMS), (fewer_edges, NUM_USERS + NUM_ITEMS),
                      (bigger, NUM_USERS + NUM_ITEMS + 1)):
    with pytest.raises(ValueError, match="built for a graph of"):
      kernel(other, jnp.ones((rows, 2)))
  with pytest.raises(ValueError, match="built for a graph of"):
    jax.jit(kernel)(fewer_edges, x)
  np.testing.assert_allclose(jax.jit(kernel)(graph, x), kernel(graph, x))


def test_build_graph_edges_are_distinct_and_sorted_by_receiver_then_sender():
  rng = np.random.default_rng(3)
  users, items = rng.integers(0, 50, 2_000), rng.integers(0, 40, 2_000)
  graph = graph_lib.build_graph(50, 40, users, items)
  keys = graph.receivers.astype(np.int64) * 90 + graph.senders
  assert np.all(np.diff(keys) > 0)
  pairs = {(u, i + 50) for u, i in zip(users.tolist(), items.tolist())}
  assert set(zip(graph.senders.tolist(), graph.receivers.tolist())) == (
      pairs | {(i, u) for u, i in pairs})


@pytest.mark.parametrize("kernel", ["scipy", "bcoo", "segment_sum"])
def test_propagation_of_rows_equals_rows_of_the_full_product_with_gradients(graph, kernel):
  """`propagate(graph, x, rows)` = `propagate(graph, x)[rows]`, repeated rows included, and the
  same gradient (the scipy kernel's backward is the sliced adjacency's transpose)."""
  propagate = graph_lib.make_propagation(kernel, graph)
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(NUM_USERS + NUM_ITEMS, 5)), jnp.float32)
  rows = jnp.asarray([3, 0, 3, NUM_USERS + 2, NUM_USERS + NUM_ITEMS - 1, 3, NUM_USERS + 2])
  weights = jnp.asarray(rng.normal(size=(rows.shape[0], 5)), jnp.float32)
  np.testing.assert_array_equal(propagate(graph, x, rows), propagate(graph, x)[rows])
  loss = lambda fn: jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.tanh(fn(x)) * weights)))(x)
  value, grad = loss(lambda x: propagate(graph, x, rows))
  full_value, full_grad = loss(lambda x: graph_lib.propagate_segment_sum(graph, x)[rows])
  np.testing.assert_allclose(value, full_value, rtol=1e-6)
  np.testing.assert_allclose(grad, full_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_threads", [1, 2, 5])
def test_csr_rows_products_match_dense(graph, num_threads):
  adjacency = graph_lib.to_csr(graph)
  dense = adjacency.toarray().astype(np.float64)
  rows_product, rows_transpose_product = graph_lib.csr_rows_products(adjacency, num_threads)
  rng = np.random.default_rng(7)
  x = rng.normal(size=(adjacency.shape[0], 4)).astype(np.float32)
  rows = rng.integers(0, adjacency.shape[0], 25)
  g = rng.normal(size=(rows.size, 4)).astype(np.float32)
  # Each row summed as by the full product: identical values.
  np.testing.assert_array_equal(rows_product(x, rows), graph_lib.csr_product(adjacency, 1)(x)[rows])
  np.testing.assert_allclose(rows_transpose_product(g, rows), dense[rows].T @ g, rtol=1e-5,
                             atol=1e-6)

"""Tests for the propagation sharded over devices (graph.split_rows, RowBlocks, the kernels over a
device's block) against dense NumPy products, and for when training shards it.

The sharded products run under `pmap` over forced host devices, in a subprocess (XLA_FLAGS must be
set before jax starts): run as a script, this file is that check.
"""

import json
import sys

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from lagcl_jax import data as data_lib
from lagcl_jax import graph as graph_lib
from lagcl_jax import train

import synthetic
from test_train import run_python

NUM_USERS, NUM_ITEMS = 9, 8  # 17 nodes: no device count divides them.
NUM_LAYERS = 3
DEVICE_COUNTS = (2, 3, 4)
KERNELS = ("segment_sum", "bcoo", "scipy")


def interactions():
  """Random (user, item) pairs with repeats; user 8 and item 7 have none (isolated nodes)."""
  rng = np.random.default_rng(0)
  return rng.integers(0, NUM_USERS - 1, 40), rng.integers(0, NUM_ITEMS - 1, 40)


def dense_adjacency(users, items) -> np.ndarray:
  """D^-1/2 A D^-1/2 of the bipartite graph, float64, the slow obvious way."""
  n = NUM_USERS + NUM_ITEMS
  adjacency = np.zeros((n, n))
  for user, item in zip(users, items):
    adjacency[user, NUM_USERS + item] = adjacency[NUM_USERS + item, user] = 1.0
  degree = adjacency.sum(axis=1)
  scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0)
  return scale[:, None] * adjacency * scale[None, :]


def small_graph() -> jraph.GraphsTuple:
  return graph_lib.build_graph(NUM_USERS, NUM_ITEMS, *interactions())


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 4, 17, 20])
def test_split_rows_covers_every_edge_once_with_its_weight(num_blocks):
  graph = small_graph()
  n = NUM_USERS + NUM_ITEMS
  blocks = graph_lib.split_rows(graph, num_blocks, "devices")
  size = blocks.block_size
  assert size == -(-n // num_blocks) and blocks.num_nodes == n  # The node count padded up.
  stacked = blocks.graph
  width = stacked.senders.shape[1]
  for array in (stacked.senders, stacked.receivers, stacked.edges):
    assert array.shape == (num_blocks, width)  # Stackable along the device axis.
  np.testing.assert_array_equal(stacked.n_node, np.full((num_blocks, 1), size))
  rebuilt = np.zeros((size * num_blocks, n))
  seen = np.zeros((size * num_blocks, n), int)
  for block in range(num_blocks):
    real = int(stacked.n_edge[block, 0])
    receivers = stacked.receivers[block]
    assert np.all(np.diff(receivers) >= 0) and receivers.min() >= 0 and receivers.max() < size
    assert np.all(stacked.edges[block, real:] == 0)  # Padding edges weigh nothing.
    rows = block * size + receivers[:real]
    np.add.at(rebuilt, (rows, stacked.senders[block, :real]), stacked.edges[block, :real])
    np.add.at(seen, (rows, stacked.senders[block, :real]), 1)
  assert seen.max() == 1 and seen.sum() == graph.senders.shape[0]  # Every edge exactly once.
  assert not rebuilt[n:].any()  # The padding rows are empty.
  np.testing.assert_allclose(rebuilt[:n], dense_adjacency(*interactions()), rtol=1e-6)


def test_scipy_kernel_refuses_the_blocks_of_another_graph():
  kernel = graph_lib.make_propagation("scipy", small_graph())
  users, items = interactions()
  other = graph_lib.build_graph(NUM_USERS, NUM_ITEMS, users[:20], items[:20])
  x = jnp.zeros((NUM_USERS + NUM_ITEMS, 2))
  with pytest.raises(ValueError, match="was built for a graph"):
    kernel(graph_lib.split_rows(other, 2, "devices"), x)


def test_training_shards_only_over_several_devices(tmp_path):
  """One device (or --noshard_propagation) keeps the whole graph, replicated: today's path."""
  config = synthetic.tiny_config(synthetic.write_paper_files(str(tmp_path)), groups=False)
  setup = train.create_model(config, data_lib.load_dataset(config))
  one = jax.local_devices()[:1]
  assert not train.shards_propagation(config, one)
  assert train.graph_in_axis(config, one) is None
  graph = train.training_graph(setup, one)
  assert isinstance(graph, jraph.GraphsTuple)
  np.testing.assert_array_equal(np.asarray(graph.senders), setup.graph.senders)
  two = one * 2  # Only counted.
  assert train.shards_propagation(config, two) and train.graph_in_axis(config, two) == 0
  assert not train.shards_propagation(config.replace(shard_propagation=False), two)


def sharded_errors(kernel: str, num_devices: int) -> dict[str, float]:
  """Max |error| against dense NumPy of the layers 1..NUM_LAYERS of the propagation sharded over
  `num_devices` devices, and of their gradients (summed over the devices, as training does);
  also with `rows` in the last layer, as the model reads it."""
  users, items = interactions()
  graph = graph_lib.build_graph(NUM_USERS, NUM_ITEMS, users, items)
  propagate = graph_lib.make_propagation(kernel, graph)
  n = NUM_USERS + NUM_ITEMS
  rng = np.random.default_rng(num_devices)
  x = rng.normal(size=(n, 3)).astype(np.float32)
  weights = rng.normal(size=(num_devices, NUM_LAYERS, n, 3)).astype(np.float32)
  rows = rng.integers(0, n, (num_devices, 12)).astype(np.int32)  # Repeats too.

  def per_device(blocks, x, weights, rows):
    def layers(x, last_rows=None):
      outputs = []
      for layer in range(NUM_LAYERS):
        last = layer == NUM_LAYERS - 1
        x = propagate(blocks, x, last_rows) if last else propagate(blocks, x)
        outputs.append(x)
      return outputs

    summed_grad = lambda loss: jax.lax.psum(jax.grad(loss)(x), "devices")
    grads = [summed_grad(lambda x, l=l: jnp.sum(layers(x)[l] * weights[l]))
             for l in range(NUM_LAYERS)]
    at_rows = layers(x, rows)[-1]
    grad_at_rows = summed_grad(lambda x: jnp.sum(layers(x, rows)[-1] * weights[-1][:12]))
    return layers(x), grads, at_rows, grad_at_rows

  outputs, grads, at_rows, grad_at_rows = jax.pmap(
      per_device, "devices", in_axes=(0, None, 0, 0), devices=jax.local_devices()[:num_devices])(
          graph_lib.split_rows(graph, num_devices, "devices"), x, weights, rows)

  adjacency = dense_adjacency(users, items)
  errors = {}
  power = np.eye(n)
  for layer in range(NUM_LAYERS):
    power = adjacency @ power
    errors[f"layer{layer + 1}"] = float(np.abs(np.asarray(outputs[layer]) - power @ x).max())
    expected_grad = power.T @ weights[:, layer].sum(axis=0)
    errors[f"layer{layer + 1}_grad"] = float(np.abs(np.asarray(grads[layer]) -
                                                    expected_grad).max())
  errors["rows"] = max(float(np.abs(np.asarray(at_rows[d]) - (power @ x)[rows[d]]).max())
                       for d in range(num_devices))
  cotangent = np.zeros((n, 3))
  for d in range(num_devices):
    np.add.at(cotangent, rows[d], weights[d, -1][:12])
  errors["rows_grad"] = float(np.abs(np.asarray(grad_at_rows) - power.T @ cotangent).max())
  return errors


def test_sharded_propagation_equals_dense_products_over_forced_devices():
  # NPROC=32: the scipy kernel's host callbacks need 8 XLA CPU threads per device.
  stdout = run_python([__file__, "--sharded"],
                      {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "NPROC": "32"})
  results = json.loads(stdout.strip().splitlines()[-1])
  assert set(results) == {f"{k}/{d}" for k in KERNELS for d in DEVICE_COUNTS}
  for case, errors in results.items():
    assert len(errors) == 2 * NUM_LAYERS + 2, case
    for name, error in errors.items():
      assert error < 1e-5, (case, name, error)


if __name__ == "__main__":
  if sys.argv[1:] == ["--sharded"]:
    print(json.dumps({f"{kernel}/{count}": sharded_errors(kernel, count)
                      for kernel in KERNELS for count in DEVICE_COUNTS}))
  else:
    sys.exit(f"usage: {sys.argv[0]} --sharded")

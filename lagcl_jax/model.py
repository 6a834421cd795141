"""The encoders: LightGCN propagation with SimGCL/XSimGCL noise, and MostPop.

One graph model covers the backbones through flags. Every layer propagates over the normalised
user-item graph; with a noise key (training of SimGCL/XSimGCL) each layer's output is perturbed,
`e + sign(e) * eps * normalize(u)` with u ~ U[0, 1). The readout is the mean of layers 1..L
(XSimGCL, SimGCL) or of layers 0..L (LightGCN, the ego embedding included); layer l* is
XSimGCL's contrastive view. A training step reads the outputs at its batch's nodes only: given
those `rows`, the last layer is propagated (and perturbed) for them alone, with the values the
whole-graph pass has there. Under `pmap` the graph may be one device's `graph.RowBlocks`: every
layer is then propagated sharded over the devices (gathered, the same values). MostPop scores
every item by its train popularity, through the same (user, item) inner-product interface, so
every model shares one evaluation.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.extend.random
import jraph
import numpy as np

from lagcl_jax import graph as graph_lib

_INITIALISERS = {"xavier": nn.initializers.xavier_uniform(),
                 "normal": nn.initializers.normal(stddev=0.1)}


def uniform_rows(key: jax.Array, shape: tuple[int, int],
                 rows: Optional[jax.Array] = None) -> jax.Array:
  """`jax.random.uniform(key, shape)` (float32), or its `rows` only: `uniform(key, shape)[rows]`.

  With JAX's default threefry PRNG in its partitionable form, the number at (r, c) hashes the
  counter r * shape[1] + c, so the rows are drawn alone; otherwise the whole array is drawn.
  """
  num_rows, num_cols = shape
  draws_rows_alone = (
      rows is not None and key.dtype == jnp.uint32 and key.shape == (2,)
      and jax.config.jax_default_prng_impl == "threefry2x32"
      and jax.config.jax_threefry_partitionable and num_rows * num_cols < 2**32)
  if not draws_rows_alone:
    full = jax.random.uniform(key, shape)
    return full if rows is None else full[rows]
  counters = (rows.astype(jnp.uint32)[:, None] * jnp.uint32(num_cols)
              + jnp.arange(num_cols, dtype=jnp.uint32)[None, :])
  bits1, bits2 = jax.extend.random.threefry2x32_p.bind(key[0], key[1],
                                                       jnp.zeros_like(counters), counters)
  # As jax.random.uniform: 23 random mantissa bits with the exponent of 1, minus 1.
  mantissa = jax.lax.shift_right_logical(bits1 ^ bits2, jnp.uint32(32 - 23))
  floats = jax.lax.bitcast_convert_type(mantissa | jnp.uint32(0x3F800000), jnp.float32) - 1.0
  return jnp.maximum(floats, 0.0)


class GraphEncoder(nn.Module):
  """User and item embeddings propagated over the normalised user-item graph."""
  num_users: int
  num_items: int
  embedding_dim: int
  num_layers: int
  cl_layer: int
  eps: float
  propagate: graph_lib.Propagation
  readout: str = "layers_1_to_L"
  embedding_init: str = "xavier"

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, noise_key: Optional[jax.Array] = None,
               rows: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Returns (final embeddings, contrastive-view embeddings), each [U + I, d], or with `rows`
    [R] (node indices, repeats allowed) each [R, d]: those rows of the whole-graph outputs.

    With `noise_key=None` (evaluation) no noise is added; the contrastive view is then the
    unperturbed layer l*.
    """
    init = _INITIALISERS[self.embedding_init]
    users = self.param("user_embedding", init, (self.num_users, self.embedding_dim))
    items = self.param("item_embedding", init, (self.num_items, self.embedding_dim))
    x = jnp.concatenate([users, items], axis=0)
    num_nodes = x.shape[0]
    at_rows = (lambda y: y) if rows is None else (lambda y: y[rows])
    layers = [at_rows(x)] if self.readout == "layers_0_to_L" else []
    cl_view = at_rows(x)
    for layer in range(1, self.num_layers + 1):
      last = layer == self.num_layers
      # Only the last layer is read at the rows alone; earlier ones feed the next propagation.
      x = self.propagate(graph, x, rows) if last else self.propagate(graph, x)
      if noise_key is not None and self.eps > 0:
        noise = uniform_rows(jax.random.fold_in(noise_key, layer),
                             (num_nodes, self.embedding_dim), rows if last else None)
        noise = noise.astype(x.dtype)
        noise = noise / jnp.maximum(jnp.linalg.norm(noise, axis=-1, keepdims=True), 1e-12)
        x = x + jnp.sign(x) * noise * self.eps
      layers.append(x if last else at_rows(x))
      if layer == self.cl_layer:
        cl_view = layers[-1]
    return jnp.mean(jnp.stack(layers), axis=0), cl_view


class MostPop(nn.Module):
  """Popularity baseline without parameters: score(u, i) = <1, popularity_i>.

  Users embed as [1] and items as [popularity], so inner-product ranking orders items by
  popularity (ties: lower item index first), for every user alike.
  """
  num_users: int
  popularity: np.ndarray  # [num_items] train positives per item.

  def __call__(self, graph: jraph.GraphsTuple, noise_key: Optional[jax.Array] = None,
               rows: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    del graph, noise_key  # Popularity depends on neither.
    nodes = jnp.concatenate([jnp.ones((self.num_users, 1), jnp.float32),
                             jnp.asarray(self.popularity, jnp.float32)[:, None]])
    nodes = nodes if rows is None else nodes[rows]
    return nodes, nodes


def split_nodes(embeddings: jax.Array, num_users: int) -> tuple[jax.Array, jax.Array]:
  """Splits [U + I, d] node embeddings into (users, items)."""
  return embeddings[:num_users], embeddings[num_users:]

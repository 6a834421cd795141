"""The encoders: LightGCN propagation with SimGCL/XSimGCL noise, and MostPop.

One graph model covers the backbones through flags. Every layer propagates over the normalised
user-item graph; with a noise key (training of SimGCL/XSimGCL) each layer's output is perturbed,
`e + sign(e) * eps * normalize(u)` with u ~ U[0, 1). The readout is the mean of layers 1..L
(XSimGCL, SimGCL) or of layers 0..L (LightGCN, the ego embedding included); layer l* is
XSimGCL's contrastive view. MostPop scores every item by its train popularity, through the same
(user, item) inner-product interface, so every model shares one evaluation.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from lagcl_jax import graph as graph_lib

_INITIALISERS = {"xavier": nn.initializers.xavier_uniform(),
                 "normal": nn.initializers.normal(stddev=0.1)}


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
  def __call__(self, graph: jraph.GraphsTuple,
               noise_key: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Returns (final embeddings, contrastive-view embeddings), each [U + I, d].

    With `noise_key=None` (evaluation) no noise is added; the contrastive view is then the
    unperturbed layer l*.
    """
    init = _INITIALISERS[self.embedding_init]
    users = self.param("user_embedding", init, (self.num_users, self.embedding_dim))
    items = self.param("item_embedding", init, (self.num_items, self.embedding_dim))
    x = jnp.concatenate([users, items], axis=0)
    layers = [x] if self.readout == "layers_0_to_L" else []
    cl_view = x
    for layer in range(1, self.num_layers + 1):
      x = self.propagate(graph, x)
      if noise_key is not None and self.eps > 0:
        noise = jax.random.uniform(jax.random.fold_in(noise_key, layer), x.shape, x.dtype)
        noise = noise / jnp.maximum(jnp.linalg.norm(noise, axis=-1, keepdims=True), 1e-12)
        x = x + jnp.sign(x) * noise * self.eps
      layers.append(x)
      if layer == self.cl_layer:
        cl_view = x
    return jnp.mean(jnp.stack(layers), axis=0), cl_view


class MostPop(nn.Module):
  """Popularity baseline without parameters: score(u, i) = <1, popularity_i>.

  Users embed as [1] and items as [popularity], so inner-product ranking orders items by
  popularity (ties: lower item index first), for every user alike.
  """
  num_users: int
  popularity: np.ndarray  # [num_items] train positives per item.

  def __call__(self, graph: jraph.GraphsTuple,
               noise_key: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    del graph, noise_key  # Popularity depends on neither.
    nodes = jnp.concatenate([jnp.ones((self.num_users, 1), jnp.float32),
                             jnp.asarray(self.popularity, jnp.float32)[:, None]])
    return nodes, nodes


def split_nodes(embeddings: jax.Array, num_users: int) -> tuple[jax.Array, jax.Array]:
  """Splits [U + I, d] node embeddings into (users, items)."""
  return embeddings[:num_users], embeddings[num_users:]

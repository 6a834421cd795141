"""The graph encoder: LightGCN propagation with XSimGCL's noise-perturbed contrastive view.

One model covers the paper's backbones through flags: LightGCN is eps=0 (and no contrastive loss),
XSimGCL perturbs every layer's output, `e + sign(e) * eps * normalize(u)` with u ~ U[0, 1), and
takes layer l* as the contrastive view. The readout is the mean of layers 1..L (as in XSimGCL).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from lagcl_jax import graph as graph_lib


class GraphEncoder(nn.Module):
  """User and item embeddings propagated over the normalised user-item graph."""
  num_users: int
  num_items: int
  embedding_dim: int
  num_layers: int
  cl_layer: int
  eps: float
  propagate: graph_lib.Propagation

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple,
               noise_key: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Returns (final embeddings, contrastive-view embeddings), each [U + I, d].

    With `noise_key=None` (evaluation) no noise is added; the contrastive view is then the
    unperturbed layer l*.
    """
    init = nn.initializers.xavier_uniform()
    users = self.param("user_embedding", init, (self.num_users, self.embedding_dim))
    items = self.param("item_embedding", init, (self.num_items, self.embedding_dim))
    x = jnp.concatenate([users, items], axis=0)
    layers = []
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


def split_nodes(embeddings: jax.Array, num_users: int) -> tuple[jax.Array, jax.Array]:
  """Splits [U + I, d] node embeddings into (users, items)."""
  return embeddings[:num_users], embeddings[num_users:]

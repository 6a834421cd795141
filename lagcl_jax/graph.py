"""The user-item graph as a `jraph.GraphsTuple` and the propagation kernels over it.

Nodes are users `[0, U)` followed by items `[U, U + I)`. Every interaction becomes two directed
edges; `graph.edges` holds the symmetric normalisation weight 1 / sqrt(deg(s) * deg(r)), so one
propagation is x -> D^-1/2 A D^-1/2 x. Edges are sorted by receiver.

A propagation is `propagate(graph, x, rows=None)`: `A x` for x [N, d], or with `rows` [R] only
those rows of it, `(A x)[rows]` [R, d] (the last layer of a training step is read at the batch's
nodes only, so only their rows are computed where the kernel can).

Sharded over devices (under `pmap`), `graph` is one device's `RowBlocks` (`split_rows`): the
device multiplies its block of rows, `A[block] x`, and the blocks are all-gathered into `A x`
(`rows` are then taken from it: no rows-only product when sharded). Every kernel does this (the
scipy kernel multiplies the block's CSR slice, and its transpose backward); the gradient of the
gather sums every device's cotangent of the block, so the gradients summed over the devices are
the whole graph's.

Kernels (one flag, `propagation_kernel`, each checked against a dense product in tests):
- `segment_sum`: jraph-style message passing (gather senders, segment-sum onto receivers). Portable,
  stays inside XLA; `auto`'s choice on GPU/TPU. `rows` are gathered from the whole product.
- `bcoo`: the adjacency as a `jax.experimental.sparse.BCOO` matrix times x. On GPU it lowers to
  cuSPARSE's COO SpMM (this kernel turns on `jax_bcoo_cusparse_lowering`); elsewhere to XLA's
  generic sparse product. The whole graph is symmetric, so its backward is the same product (no
  transposed SpMM). `rows` are gathered from the whole product.
- `scipy`: SciPy CSR sparse-dense product through `jax.pure_callback`, several times faster on CPU.
  The adjacency is symmetric, so the backward pass is the same product. The rows are cut into one
  block of about equal non-zeros per available core, multiplied on a thread each (SciPy's sparse
  kernels release the GIL); every row's sum is the same as in the single-threaded product. With
  `rows`, only the distinct rows' slice of the adjacency is multiplied (and its transpose in the
  backward pass): about half the work of a full product for a batch of 1024 on ML-1M.
"""

import concurrent.futures
import functools
import os
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse
import jraph
import numpy as np
import scipy.sparse as sp

Propagation = Callable[..., jax.Array]  # (graph, x, rows=None) -> A x, or (A x)[rows].


def build_graph(num_users: int, num_items: int, users: np.ndarray,
                items: np.ndarray) -> jraph.GraphsTuple:
  """Normalised bipartite graph of the given (deduplicated) interactions."""
  num_nodes = num_users + num_items
  # Distinct pairs as int64 keys (much faster than np.unique(axis=1) on 20M pairs).
  keys = np.unique(users.astype(np.int64) * num_items + items.astype(np.int64))
  pair_users, pair_items = keys // num_items, keys % num_items + num_users
  senders = np.concatenate([pair_users, pair_items])
  receivers = np.concatenate([pair_items, pair_users])
  degree = np.bincount(receivers, minlength=num_nodes).astype(np.float64)
  inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0)
  weights = (inv_sqrt[senders] * inv_sqrt[receivers]).astype(np.float32)
  order = np.argsort(receivers * num_nodes + senders)  # By receiver, then sender.
  return jraph.GraphsTuple(
      nodes=None,
      edges=weights[order],
      senders=senders[order].astype(np.int32),
      receivers=receivers[order].astype(np.int32),
      n_node=np.array([num_nodes], np.int32),
      n_edge=np.array([senders.shape[0]], np.int32),
      globals=None)


def num_nodes(graph: jraph.GraphsTuple) -> int:
  return int(np.asarray(graph.n_node).sum())


def to_csr(graph: jraph.GraphsTuple) -> sp.csr_matrix:
  """The normalised adjacency as a SciPy CSR matrix (row = receiver)."""
  n = num_nodes(graph)
  return sp.csr_matrix(
      (np.asarray(graph.edges), (np.asarray(graph.receivers), np.asarray(graph.senders))),
      shape=(n, n), dtype=np.float32)


@flax.struct.dataclass
class RowBlocks:
  """A graph's adjacency rows in `num_blocks` equal contiguous blocks, one per device.

  `graph` stacks the blocks along a leading device axis (`pmap` with in_axes=0 hands each device
  its own): the edges whose receiver lies in the block, sorted by receiver, receivers counted
  from the block's first row, padded with weight-0 edges to a common count; `n_node` is the
  block's rows and `n_edge` its real edges. The node count is padded up to a multiple of
  `num_blocks` (the padding rows are empty).
  """
  graph: jraph.GraphsTuple
  num_nodes: int = flax.struct.field(pytree_node=False)
  num_blocks: int = flax.struct.field(pytree_node=False)
  axis_name: str = flax.struct.field(pytree_node=False)  # The pmap axis the blocks lie on.

  @property
  def block_size(self) -> int:
    return block_size(self.num_nodes, self.num_blocks)


def block_size(num_nodes: int, num_blocks: int) -> int:
  """Rows per block when `num_nodes` rows are cut into `num_blocks` equal blocks (the last one
  padded with empty rows)."""
  return -(-num_nodes // num_blocks)


def split_rows(graph: jraph.GraphsTuple, num_blocks: int, axis_name: str) -> RowBlocks:
  """The rows of `graph`'s adjacency split into `num_blocks` blocks for the devices of the pmap
  axis `axis_name` (see `RowBlocks`)."""
  n = num_nodes(graph)
  size = block_size(n, num_blocks)
  receivers = np.asarray(graph.receivers)
  order = np.argsort(receivers, kind="stable")  # Already sorted when made by build_graph.
  receivers = receivers[order]
  senders, weights = np.asarray(graph.senders)[order], np.asarray(graph.edges)[order]
  bounds = np.searchsorted(receivers, np.arange(num_blocks + 1) * size)
  counts = np.diff(bounds)
  width = max(int(counts.max()), 1)
  # Padding edges (last row, last column, weight 0) keep each block sorted by (row, column).
  block_senders = np.full((num_blocks, width), n - 1, np.int32)
  block_receivers = np.full((num_blocks, width), size - 1, np.int32)
  block_weights = np.zeros((num_blocks, width), np.float32)
  for block, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
    block_senders[block, :stop - start] = senders[start:stop]
    block_receivers[block, :stop - start] = receivers[start:stop] - block * size
    block_weights[block, :stop - start] = weights[start:stop]
  blocks = jraph.GraphsTuple(
      nodes=None, edges=block_weights, senders=block_senders, receivers=block_receivers,
      n_node=np.full((num_blocks, 1), size, np.int32),
      n_edge=counts.astype(np.int32)[:, None], globals=None)
  return RowBlocks(blocks, n, num_blocks, axis_name)


def gather_blocks(blocks: RowBlocks, block: jax.Array, rows: Optional[jax.Array]) -> jax.Array:
  """`A x` (or its `rows`) from this device's block of it, [block_size, d]: all-gathered over
  the devices, without the padding rows."""
  whole = jax.lax.all_gather(block, blocks.axis_name, tiled=True)[:blocks.num_nodes]
  return whole if rows is None else whole[rows]


def _message_passing(graph: jraph.GraphsTuple, x: jax.Array, num_rows: int) -> jax.Array:
  """`A x` over the edges of `graph` (receivers in [0, num_rows))."""
  messages = x[graph.senders] * graph.edges[:, None]
  return jax.ops.segment_sum(messages, graph.receivers, num_segments=num_rows,
                             indices_are_sorted=True)


def propagate_segment_sum(graph: jraph.GraphsTuple | RowBlocks, x: jax.Array,
                          rows: Optional[jax.Array] = None) -> jax.Array:
  """One normalised propagation step by message passing over the GraphsTuple (`rows`: only
  those rows of the result), or over this device's `RowBlocks`."""
  if isinstance(graph, RowBlocks):
    return gather_blocks(graph, _message_passing(graph.graph, x, graph.block_size), rows)
  result = _message_passing(graph, x, x.shape[0])
  return result if rows is None else result[rows]


def _bcoo_matrix(graph: jraph.GraphsTuple, num_rows: int, num_cols: int,
                 dtype) -> jsparse.BCOO:
  """The adjacency rows held by `graph` (receivers in [0, num_rows)) as a [num_rows, num_cols]
  BCOO matrix; the edges are sorted by (receiver, sender), as cuSPARSE needs."""
  indices = jnp.stack([graph.receivers, graph.senders], axis=1)
  return jsparse.BCOO((graph.edges.astype(dtype), indices), shape=(num_rows, num_cols),
                      indices_sorted=True)


@jax.custom_vjp
def _symmetric_bcoo_product(graph: jraph.GraphsTuple, x: jax.Array) -> jax.Array:
  """`A x` for the whole (symmetric) adjacency; its VJP is `A g`."""
  return _bcoo_matrix(graph, x.shape[0], x.shape[0], x.dtype) @ x


def _symmetric_bcoo_product_fwd(graph, x):
  return _symmetric_bcoo_product(graph, x), graph


def _symmetric_bcoo_product_bwd(graph, g):
  return None, _symmetric_bcoo_product(graph, g)  # The graph is not differentiated.


_symmetric_bcoo_product.defvjp(_symmetric_bcoo_product_fwd, _symmetric_bcoo_product_bwd)


def propagate_bcoo(graph: jraph.GraphsTuple | RowBlocks, x: jax.Array,
                   rows: Optional[jax.Array] = None) -> jax.Array:
  """One normalised propagation step as a BCOO sparse-dense product (`rows`: only those rows of
  the result), or this device's `RowBlocks` block of it, gathered."""
  if isinstance(graph, RowBlocks):
    block = _bcoo_matrix(graph.graph, graph.block_size, x.shape[0], x.dtype) @ x
    return gather_blocks(graph, block, rows)
  result = _symmetric_bcoo_product(graph, x)
  return result if rows is None else result[rows]


def available_cores() -> int:
  """CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def balanced_bounds(indptr: np.ndarray, num_blocks: int) -> np.ndarray:
  """Bounds of up to `num_blocks` consecutive row ranges with about equal numbers of non-zeros,
  from a CSR row pointer (`indptr`: [rows + 1])."""
  targets = np.linspace(0, indptr[-1], num_blocks + 1)[1:-1]
  return np.unique(np.concatenate([[0], np.searchsorted(indptr, targets), [indptr.size - 1]]))


def row_blocks(adjacency: sp.csr_matrix, num_blocks: int) -> list[sp.csr_matrix]:
  """Consecutive row ranges of `adjacency` with about equal numbers of non-zeros each."""
  bounds = balanced_bounds(adjacency.indptr, num_blocks)
  return [adjacency[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


def csr_product(adjacency: sp.csr_matrix,
                num_threads: int) -> Callable[[np.ndarray], np.ndarray]:
  """`x -> adjacency @ x` (float32 [N, d]) on the host, over `num_threads` row blocks."""
  adjacency = adjacency.astype(np.float32)
  adjacency.sort_indices()
  blocks = row_blocks(adjacency, num_threads)
  if len(blocks) == 1:
    return lambda x: adjacency @ np.asarray(x, np.float32)
  pool = concurrent.futures.ThreadPoolExecutor(len(blocks), thread_name_prefix="csr_product")

  def product(x):
    x = np.asarray(x, np.float32)
    return np.concatenate(list(pool.map(lambda block: block @ x, blocks)))

  return product


def csr_rows_products(adjacency: sp.csr_matrix, num_threads: int):
  """`(rows_product, rows_transpose_product)` on the host, over up to `num_threads` threads:
  `(x, rows) -> (adjacency @ x)[rows]` ([R, d]) and `(g, rows) -> adjacency[rows].T @ g` ([N, d],
  the sum over repeated rows). Only the distinct rows' slice of `adjacency` is multiplied; each
  row of the forward result is summed as by the full product. The slices of the last few row
  sets are kept, so a backward pass reuses its forward pass's."""
  adjacency = adjacency.astype(np.float32)
  adjacency.sort_indices()
  pool = (concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="csr_rows")
          if num_threads > 1 else None)

  degrees = np.diff(adjacency.indptr)

  class RowsSlice:
    """A row set's distinct rows, cut into parts of about equal non-zeros (one per thread), and
    the parts' slices of the adjacency, each cut by the thread that first multiplies it."""

    def __init__(self, rows: np.ndarray):
      self.distinct, inverse = np.unique(rows, return_inverse=True)
      self.inverse = inverse.ravel()
      # The positions of the rows sorted by distinct row, and where each distinct row starts.
      self.order = np.argsort(self.inverse, kind="stable")
      self.starts = np.searchsorted(self.inverse[self.order], np.arange(self.distinct.size))
      self.bounds = balanced_bounds(np.concatenate([[0], np.cumsum(degrees[self.distinct])]),
                                    num_threads)
      self.num_parts = len(self.bounds) - 1
      self._parts = [None] * self.num_parts

    def part(self, i: int) -> sp.csr_matrix:
      if self._parts[i] is None:
        self._parts[i] = adjacency[self.distinct[self.bounds[i]:self.bounds[i + 1]]]
      return self._parts[i]

  @functools.lru_cache(maxsize=16)
  def sliced(rows_bytes) -> RowsSlice:
    return RowsSlice(np.frombuffer(rows_bytes, np.int64))

  def run(fn, items):
    threaded = pool is not None and len(items) > 1
    return list(pool.map(fn, items)) if threaded else list(map(fn, items))

  def rows_product(x, rows):
    x = np.asarray(x, np.float32)
    rows_slice = sliced(np.asarray(rows, np.int64).tobytes())
    parts = run(lambda i: rows_slice.part(i) @ x, range(rows_slice.num_parts))
    return np.concatenate(parts)[rows_slice.inverse]

  def rows_transpose_product(g, rows):
    g = np.asarray(g, np.float32)
    rows_slice = sliced(np.asarray(rows, np.int64).tobytes())
    # The gradient of each distinct row: its repeats' summed.
    summed = np.add.reduceat(g[rows_slice.order], rows_slice.starts)
    bounds = rows_slice.bounds
    results = run(lambda i: rows_slice.part(i).T @ summed[bounds[i]:bounds[i + 1]],
                  range(rows_slice.num_parts))
    total = results[0]
    for result in results[1:]:
      total += result
    return total

  return rows_product, rows_transpose_product


def _fingerprint(graph: jraph.GraphsTuple) -> tuple[int, int]:
  """(edges, hash of senders, receivers and weights) of a concrete graph."""
  arrays = [np.asarray(a) for a in (graph.senders, graph.receivers, graph.edges)]
  return arrays[0].shape[0], hash(tuple(a.tobytes() for a in arrays))


def _check_same_graph(built_for: tuple[int, int, int], graph: jraph.GraphsTuple | RowBlocks,
                      x: jax.Array, block_edges: Callable[[int], int]) -> None:
  """Raises unless `graph` (by content, or by shape when traced) and x's rows match `built_for`
  (nodes, edges, hash); `RowBlocks` by their node count and edges per block, which must be
  `block_edges(num_blocks)`."""
  if isinstance(graph, RowBlocks):
    edges = graph.graph.senders.shape[-1]
    same_edges = graph.num_nodes == built_for[0] and edges == block_edges(graph.num_blocks)
  else:
    traced = any(isinstance(a, jax.core.Tracer) for a in (graph.senders, graph.receivers,
                                                         graph.edges))
    edges = graph.senders.shape[0]
    same_edges = edges == built_for[1] if traced else _fingerprint(graph) == built_for[1:]
  if not same_edges or x.shape[-2] != built_for[0]:
    raise ValueError(
        f"The scipy propagation kernel was built for a graph of {built_for[0]} nodes and "
        f"{built_for[1]} edges, and was given another one ({x.shape[-2]} rows, {edges} edges"
        f"{'' if edges != built_for[1] else ', other edges'}). Build the kernel "
        "(graph.make_propagation) for the graph it propagates over.")


def _batched(product: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
  """`product` ([N, d] -> [N, d]) applied to x of shape [..., N, d] in one call: the leading
  (vmap) dimensions are folded into the columns."""

  def batched(x):
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
      return product(x)
    columns = np.moveaxis(x, -2, 0)  # [N, ..., d]
    result = product(columns.reshape(columns.shape[0], -1)).reshape(columns.shape)
    return np.moveaxis(result, 0, -2)

  return batched


def csr_block_products(adjacency: sp.csr_matrix, num_blocks: int, num_threads: int):
  """`(block_product, block_transpose_product)` on the host for `num_blocks` equal row blocks of
  `adjacency` (as `split_rows`: ceil(N / num_blocks) rows each, the last padded with empty rows):
  `(x, block) -> adjacency[block's rows] @ x` ([rows, d]) and
  `(g, block) -> adjacency[block's rows].T @ g` ([N, d]), each over `num_threads` threads."""
  n = adjacency.shape[0]
  size = block_size(n, num_blocks)
  indptr = np.concatenate([adjacency.indptr,
                           np.full(size * num_blocks - n, adjacency.indptr[-1])])
  padded = sp.csr_matrix((adjacency.data, adjacency.indices, indptr),
                         shape=(size * num_blocks, adjacency.shape[1]))
  blocks = [padded[block * size:(block + 1) * size] for block in range(num_blocks)]
  forward = [csr_product(block, num_threads) for block in blocks]
  backward = [csr_product(block.T.tocsr(), num_threads) for block in blocks]
  return (lambda x, block: forward[int(block)](x)), (lambda g, block: backward[int(block)](g))


def _scipy_propagation(graph: jraph.GraphsTuple, num_threads: int) -> Propagation:
  """A propagation that runs `adjacency @ x` on the host; its VJP is the same product (with
  `rows`: `adjacency[rows] @ x`, whose VJP is `adjacency[rows].T @ g`; over `RowBlocks`: this
  device's block, `adjacency[block] @ x`, whose VJP is `adjacency[block].T @ g`, then gathered).

  The result has the dtype of x (computed in float32); under `vmap` the batch is one host call
  (with `rows`: one call per batch element). It refuses a graph other than the one it was built
  for: by shape when traced, by content otherwise.
  """
  built_for = (num_nodes(graph), *_fingerprint(graph))
  adjacency = to_csr(graph)
  host_product = _batched(csr_product(adjacency, num_threads))
  host_rows_product, host_rows_transpose_product = csr_rows_products(adjacency, num_threads)

  def callback(fn, shape, *args):
    dtype = args[0].dtype
    return jax.pure_callback(lambda *a: fn(*a).astype(dtype, copy=False),
                             jax.ShapeDtypeStruct(shape, dtype), *args,
                             vmap_method="broadcast_all" if len(args) == 1 else "sequential")

  @jax.custom_vjp
  def propagate(x):
    return callback(host_product, x.shape, x)

  propagate.defvjp(lambda x: (propagate(x), None),
                   lambda _, g: (callback(host_product, g.shape, g),))

  @jax.custom_vjp
  def propagate_rows(x, rows):
    return callback(host_rows_product, rows.shape + x.shape[-1:], x, rows)

  def propagate_rows_bwd(rows, g):
    return callback(host_rows_transpose_product, (built_for[0], g.shape[-1]), g, rows), None

  propagate_rows.defvjp(lambda x, rows: (propagate_rows(x, rows), rows), propagate_rows_bwd)

  @functools.lru_cache(maxsize=None)
  def block_propagation(num_blocks):
    """`propagate_block(x, block index)` for `num_blocks` row blocks; the cores are shared
    between the devices' concurrent calls."""
    size = block_size(built_for[0], num_blocks)
    block_product, block_transpose_product = csr_block_products(
        adjacency, num_blocks, max(1, num_threads // num_blocks))

    @jax.custom_vjp
    def propagate_block(x, block):
      return callback(block_product, (size, x.shape[-1]), x, block)

    def propagate_block_bwd(block, g):
      return callback(block_transpose_product, (built_for[0], g.shape[-1]), g, block), None

    propagate_block.defvjp(lambda x, block: (propagate_block(x, block), block),
                           propagate_block_bwd)
    return propagate_block

  block_edges = functools.lru_cache(maxsize=None)(  # What split_rows gives each block.
      lambda num_blocks: split_rows(graph, num_blocks, "").graph.senders.shape[-1])

  def propagate_scipy_csr(graph, x, rows=None):
    _check_same_graph(built_for, graph, x, block_edges)
    if isinstance(graph, RowBlocks):
      block = block_propagation(graph.num_blocks)(x, jax.lax.axis_index(graph.axis_name))
      return gather_blocks(graph, block, rows)
    return propagate(x) if rows is None else propagate_rows(x, rows)

  return propagate_scipy_csr


_THREADS_PER_DEVICE = 8


def _threads_needed(devices: int) -> int:
  return _THREADS_PER_DEVICE * devices if devices > 1 else 2


def host_callbacks_can_deadlock() -> bool:
  """Whether host callbacks (the scipy kernel) can hang on this CPU backend.

  XLA's CPU client runs the devices' programs and its host transfers on one thread pool of NPROC
  (default: the available cores) threads. `jax.pure_callback` hands the callback its inputs as
  CPU arrays placed by a copy that runs on that pool, and the callback waits for it. When every
  thread of the pool runs a program that waits in a callback, the copy never runs:
  - one device needs 2 threads (pinned to one core, e.g. `taskset -c 0` or a 1-vCPU machine,
    the pool has 1 and a run hung in its final evaluation);
  - several devices: 2 forced host devices on 2 cores hung, NPROC = 3 still hung on ML-1M-sized
    inputs, 8 threads per device never did, so that is the rule.
  """
  nproc = os.environ.get("NPROC", "")
  pool = int(nproc) if nproc.isdigit() and int(nproc) > 0 else available_cores()
  return jax.default_backend() == "cpu" and pool < _threads_needed(jax.local_device_count())


def make_propagation(kernel: str, graph: jraph.GraphsTuple) -> Propagation:
  """Returns `propagate(graph, x)` for the named kernel ("auto" picks by platform).

  "auto" is `scipy` on CPU, unless `host_callbacks_can_deadlock()`, and `segment_sum` elsewhere.
  """
  if kernel == "auto":
    use_scipy = jax.default_backend() == "cpu" and not host_callbacks_can_deadlock()
    kernel = "scipy" if use_scipy else "segment_sum"
  if kernel == "segment_sum":
    return propagate_segment_sum
  if kernel == "bcoo":
    jax.config.update("jax_bcoo_cusparse_lowering", True)  # Only read when lowering for GPU.
    return propagate_bcoo
  if kernel == "scipy":
    if host_callbacks_can_deadlock():
      raise ValueError(
          f"--propagation_kernel=scipy with {jax.local_device_count()} CPU device(s) on "
          f"{available_cores()} core(s) needs more XLA CPU threads: set "
          f"NPROC={_threads_needed(jax.local_device_count())} in the "
          "environment, or use --propagation_kernel=segment_sum.")
    return _scipy_propagation(graph, available_cores())
  raise ValueError(f"--propagation_kernel={kernel!r}: expected auto, segment_sum, bcoo or scipy")

"""Speed and memory benchmark: one training epoch by phase, the platform's propagation limit,
full-ranking evaluation, 1, 2 and 4 devices, and a synthetic power-law graph at scale.

Definitions. Times are medians of repeats, as wall seconds and as process CPU seconds (all
threads; on a shared machine CPU time varies less). The machine may be shared, so the ratios,
measured in one run, are the figures that count.
- epoch: the training loop of `train._fit` (sample -> shard -> pmapped `train_step`) for
  `max_steps` steps (0: the whole epoch), scaled to the epoch's number of batches; the JSON says
  whether it was extrapolated. LAGCL (the config) and XSimGCL (the config with --groups=none:
  same graph, one uniform negative, plain InfoNCE) run interleaved.
- phases, per step, timed as separately jitted pieces on the inputs of one batch (the encoder
  and the device step on a new batch per call, as in training): negative
  sampling (the host sampler), host-device transfer of the batch, propagation forward + backward
  (the encoder with its noise, through `jax.vjp`, pmapped over the run's devices on the training
  graph; of which the noise draws), losses forward + backward (`train_step` on a state whose
  "model" returns fixed embeddings, so with the batch gathers and gradient scatters), the
  optimizer (Adam's `apply_gradients`), the whole device step; loop_overhead = training loop -
  device step - sampling - transfer.
- step breakdown (--breakdown): the LAGCL training loop's wall time per step as it is, then with
  the host products replaced by callbacks that return zeros, then without the callbacks (an XLA
  stand-in), then without the noise too; each difference is that part's cost inside training.
- limit: the fastest forward + backward propagation of this graph on this platform,
  2 x num_layers products of the normalised adjacency with an [N, d] matrix (it is symmetric, so
  the backward is the same product), over every kernel tried: SciPy CSR on 1 and on all cores
  (CPU only), XLA segment_sum (forward and autodiff backward) and the BCOO product (cuSPARSE on
  GPU).
- limit_ratio = epoch / (batches x limit); group_overhead_ratio = LAGCL epoch / XSimGCL epoch;
  limit_ratio_cpu: the same in process CPU seconds (steadier on a shared machine, where the
  process gets a varying share of the cores).
  Each repeat times the limit, LAGCL and XSimGCL back to back; a ratio is the median over the
  repeats of the ratio within a repeat.
- devices (subprocess, 4 forced host devices on CPU): 1, 2 and 4 devices on the same batches:
  training throughput, the largest parameter difference from 1 device, and the propagation
  forward + backward (the pmapped encoder over the training graph, as in the phases; sharded
  over the devices with --shard_propagation), with speedups over 1 device. Forced host devices
  share the machine's cores: they check equality and sharding, not real scaling.
- scale (subprocess): power-law data, graph build, two training steps (the first compiles), the
  embeddings and one evaluation batch, with the process's peak resident memory.
"""

import contextlib
import dataclasses
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lagcl_jax import config as config_lib
from lagcl_jax import data as data_lib
from lagcl_jax import evaluation
from lagcl_jax import files
from lagcl_jax import graph as graph_lib
from lagcl_jax import model as model_lib
from lagcl_jax import sampler as sampler_lib
from lagcl_jax import train
from lagcl_jax.config import setting
from lagcl_jax.data_types import Dataset, Interactions

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MS = 1e3


@dataclasses.dataclass(frozen=True)
class Options:
  """What to measure and how often; every field is a flag of launch/benchmark.py."""
  max_steps: int = setting(60, "Steps timed per epoch repeat, extrapolated to the epoch; 0 times "
                           "whole epochs.")
  repeats: int = setting(5, "Repeats of (limit, LAGCL steps, XSimGCL steps).")
  phase_repeats: int = setting(10, "Repeats of each jitted phase and of each limit kernel.")
  eval_repeats: int = setting(3, "Repeats of the full evaluation.")
  device_steps: int = setting(20, "Steps per device count in the 1, 2, 4 forced host devices "
                              "run; 0 skips it.")
  breakdown: bool = setting(False, "Also time the LAGCL training step with parts taken out "
                            "(host products, host callbacks, noise): about 1 minute on ML-1M.")
  scale: bool = setting(False, "Also run the synthetic power-law scale test (heavy).")
  scale_users: int = setting(1_000_000, "Scale test users.")
  scale_items: int = setting(200_000, "Scale test items.")
  scale_interactions: int = setting(20_000_000, "Scale test interactions.")
  timeout_s: int = setting(1800, "Time limit of each subprocess (devices run, scale test).")


# --------------------------------------------------------------------------------------------
# Measuring.


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
  """Median wall and process CPU seconds of `fn()` (its outputs are waited for), after `warmup`
  untimed calls. CPU time counts every thread; on a shared machine it varies less than wall."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  walls, cpus = [], []
  for _ in range(max(repeats, 1)):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - start_cpu)
  return {"seconds": float(np.median(walls)), "cpu_seconds": float(np.median(cpus))}


def host_memory() -> dict[str, Optional[int]]:
  """Peak and current resident memory of this process, in bytes (/proc where it exists, else
  getrusage; the current figure is then None)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  peak *= 1 if sys.platform == "darwin" else 1024  # Linux reports KiB.
  status = {}
  try:
    with open("/proc/self/status") as f:
      status = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f
                if line.startswith(("VmHWM:", "VmRSS:"))}
  except OSError:
    pass
  return {"peak_rss_bytes": max(peak, status.get("VmHWM", 0)),
          "current_rss_bytes": status.get("VmRSS")}


def device_memory() -> list[dict[str, Any]]:
  """Per local device: peak and limit bytes from `memory_stats()` (None where not reported)."""
  report = []
  for device in jax.local_devices():
    stats = device.memory_stats() or {}
    report.append({"device": str(device), "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
                   "bytes_in_use": stats.get("bytes_in_use"),
                   "bytes_limit": stats.get("bytes_limit")})
  return report


def machine() -> dict[str, Any]:
  """The platform the numbers were measured on."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  devices = jax.local_devices()
  return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "num_local_devices": len(devices), "cpu": cpu, "cores": graph_lib.available_cores(),
          "host_memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
          "jax": jax.__version__, "python": platform.python_version(),
          "load_average_1min": os.getloadavg()[0]}


# --------------------------------------------------------------------------------------------
# The platform limit.


def limit_kernels(graph, embedding_dim: int, num_layers: int) -> dict[str, Callable[[], Any]]:
  """Per kernel this platform offers, a call that runs 2 x num_layers products of the
  normalised adjacency with an [N, d] matrix (the forward and backward of a propagation)."""
  x = np.random.default_rng(0).normal(
      size=(graph_lib.num_nodes(graph), embedding_dim)).astype(np.float32)
  kernels = {}
  if jax.default_backend() == "cpu":
    adjacency = graph_lib.to_csr(graph)
    for threads in sorted({1, graph_lib.available_cores()}):
      product = graph_lib.csr_product(adjacency, threads)

      def chain(product=product):
        y = x
        for _ in range(2 * num_layers):
          y = product(y)
        return y

      kernels[f"scipy_csr_{threads}_thread{'s' if threads > 1 else ''}"] = chain
  device_graph = jax.device_put(graph)
  x_device = jnp.asarray(x)
  for name in ("segment_sum", "bcoo"):  # The kernels that stay inside XLA.
    propagate = graph_lib.make_propagation(name, graph)

    @jax.jit
    def fwd_bwd(x, propagate=propagate):
      def layers(x):
        for _ in range(num_layers):
          x = propagate(device_graph, x)
        return x
      y, pullback = jax.vjp(layers, x)
      return pullback(y)[0]

    kernels[name] = lambda fwd_bwd=fwd_bwd: fwd_bwd(x_device)
  return kernels


# --------------------------------------------------------------------------------------------
# Training: the epoch loop and its phases.


class EpochTimer:
  """The training loop of one setup, as `train._fit` runs it, for a number of steps."""

  def __init__(self, setup: train.Setup, devices: list[Any]):
    self.setup = setup
    self.devices = devices
    self.sampler = train.batch_sampler(setup)
    self.p_train_step = train.pmap_train_step(setup, devices)
    self.initial_state = train.create_train_state(setup)
    self.reset()
    self.graph = train.training_graph(setup, devices)
    self.user_groups = jnp.asarray(setup.user_groups)
    self.item_groups = jnp.asarray(setup.item_groups)

  def reset(self):
    """Back to the initial state (the same optimizer object, so the step does not compile
    again: the state's pytree structure holds it)."""
    self.state = train.replicate(self.initial_state, self.devices)

  def step(self, arrays, counts):
    """One training step on sharded inputs (host or device arrays); returns the loss terms."""
    self.state, terms = self.p_train_step(self.state, self.graph, self.user_groups,
                                          self.item_groups, arrays, counts)
    return terms

  def run(self, epoch: int, steps: int) -> dict[str, float]:
    """Wall and CPU seconds per step over the first `steps` steps of `epoch`."""
    if not 0 < steps <= self.sampler.num_batches:
      raise ValueError(f"steps={steps}: an epoch has {self.sampler.num_batches} steps")
    start, start_cpu = time.perf_counter(), time.process_time()
    sums = train.StepSums()
    with contextlib.closing(sampler_lib.prefetch(self.sampler.epoch(epoch))) as batches:
      for _, batch in zip(range(steps), batches):
        sums.add(self.step(*train.shard_batch(batch, len(self.devices))))
    jax.block_until_ready(self.state)
    sums.totals()
    return {"seconds": (time.perf_counter() - start) / steps,
            "cpu_seconds": (time.process_time() - start_cpu) / steps}

  @functools.cached_property
  def encoder_fwd_bwd(self) -> Callable[[Any, dict], Any]:
    """The encoder's forward and backward pass as the step runs it (noise, the batch's rows),
    pmapped over the devices on the training graph: (replicated params, sharded batch arrays)
    -> per device ((final, cl_view) at its rows, its parameter gradients)."""
    setup = self.setup
    noise_key = jax.random.PRNGKey(setup.config.seed + 1) if setup.config.eps > 0 else None

    def fwd_bwd(params, graph, batch):
      rows = train.batch_nodes(batch, setup.dataset.num_users)
      outputs, pullback = jax.vjp(
          lambda p: setup.model.apply({"params": p}, graph, noise_key, rows), params)
      return outputs, pullback(outputs)[0]

    pmapped = jax.pmap(fwd_bwd, train.AXIS, devices=self.devices,
                       in_axes=(0, train.graph_in_axis(setup.config, self.devices), 0))
    return lambda params, arrays: pmapped(params, self.graph, arrays)


def _embedding_state(final: jax.Array, cl_view: jax.Array) -> train_state.TrainState:
  """A train state whose "model" returns fixed embeddings of the batch's rows: `train_step` on
  it times the losses (forward and backward) without the encoder."""
  return train_state.TrainState.create(
      apply_fn=lambda variables, graph, key, rows: (variables["params"]["final"],
                                                    variables["params"]["cl_view"]),
      params={"final": final, "cl_view": cl_view}, tx=optax.identity())


def phase_times(timer: EpochTimer, repeats: int) -> dict[str, dict[str, float]]:
  """Time per step of each phase: separately jitted pieces on the inputs of one batch, except
  the encoder, which gets a new batch at every call, as in training (the scipy kernel slices the
  adjacency once per batch)."""
  setup, devices = timer.setup, timer.devices
  config = setup.config
  batches = train.batch_sampler(setup).epoch(0)
  draws, drawn = [], []
  for _ in range(2 * (repeats + 1) + 1):  # A batch per encoder call below.
    start, start_cpu = time.perf_counter(), time.process_time()
    drawn.append(next(batches))
    draws.append((time.perf_counter() - start, time.process_time() - start_cpu))
  times = {"negative_sampling": {"seconds": float(np.median([d[0] for d in draws[1:]])),
                                 "cpu_seconds": float(np.median([d[1] for d in draws[1:]]))}}
  sharded = [train.shard_batch(batch, len(devices)) for batch in drawn]
  arrays, counts = sharded[0]
  put = lambda: train.place_local((arrays, counts), devices)
  times["host_device_transfer"] = measure(put, repeats)
  inputs = put()
  fresh_inputs = iter([train.place_local(batch, devices) for batch in sharded])

  params = train.replicate(timer.initial_state.params, devices)
  times["propagation_fwd_bwd"] = measure(
      lambda: timer.encoder_fwd_bwd(params, next(fresh_inputs)[0]), repeats)
  if config.eps > 0:  # As the encoder draws it: the last layer at the batch's rows.
    rows = train.batch_nodes(jax.tree.map(lambda x: jnp.asarray(x[0]), arrays),
                             setup.dataset.num_users)  # Those of the first device.
    shape = (graph_lib.num_nodes(setup.graph), config.embedding_dim)
    noise = jax.jit(lambda key: [model_lib.uniform_rows(
        jax.random.fold_in(key, layer), shape, rows if layer == config.num_layers else None)
                                 for layer in range(1, config.num_layers + 1)])
    times["of_which_noise"] = measure(lambda: noise(jax.random.PRNGKey(config.seed + 1)),
                                      repeats)
  (final, cl_view), grads = jax.tree.map(lambda x: x[0], timer.encoder_fwd_bwd(params, inputs[0]))

  losses = EpochTimer(setup, devices)
  losses.p_train_step = timer.p_train_step
  losses.state = train.replicate(_embedding_state(final, cl_view), devices)
  times["losses_fwd_bwd"] = measure(lambda: losses.step(*inputs), repeats)

  apply_gradients = jax.jit(lambda s, g: s.apply_gradients(grads=g), donate_argnums=(0,))
  optimizer = [train.create_train_state(setup)]

  def optimizer_step():
    optimizer[0] = apply_gradients(optimizer[0], grads)
    return optimizer[0]

  # Two untimed calls: the second compiles again (its state is the first call's output).
  times["optimizer"] = measure(optimizer_step, repeats, warmup=2)
  times["device_step"] = measure(lambda: timer.step(*next(fresh_inputs)), repeats)
  return times


def _zero_products(graph, x: jax.Array, rows: Optional[jax.Array] = None) -> jax.Array:
  """A stand-in propagation with the scipy kernel's host round trips (forward and backward) and
  no host work: callbacks that return zeros."""
  del graph
  shape = x.shape if rows is None else rows.shape + x.shape[-1:]
  zeros = lambda result_shape, argument: jax.pure_callback(
      lambda _: np.zeros(result_shape, np.float32),
      jax.ShapeDtypeStruct(result_shape, argument.dtype), argument)

  @jax.custom_vjp
  def product(x):
    return zeros(shape, x)

  product.defvjp(lambda x: (product(x), None), lambda _, g: (zeros(x.shape, g),))
  return product(x)


def _no_products(graph, x: jax.Array, rows: Optional[jax.Array] = None) -> jax.Array:
  """A stand-in propagation inside XLA without any product: x / 2 (at the rows)."""
  del graph
  return (x if rows is None else x[rows]) * 0.5


def step_breakdown(setup: train.Setup, devices: list[Any], steps: int,
                   repeats: int) -> dict[str, float]:
  """Wall seconds per step of the training loop (`steps` steps; medians over `repeats`
  alternations) for the real step and for steps with parts taken out, one more each time: the
  host products (callbacks that return zeros), the callbacks (an XLA stand-in), the noise. The
  differences are what each part costs inside training, where parts share the cores."""
  models = {"step": setup.model,
            "without_host_products": setup.model.clone(propagate=_zero_products),
            "without_callbacks": setup.model.clone(propagate=_no_products),
            "without_callbacks_and_noise": setup.model.clone(propagate=_no_products, eps=0.0)}
  timers = {name: EpochTimer(dataclasses.replace(setup, model=model), devices)
            for name, model in models.items()}
  for timer in timers.values():
    timer.run(0, 2)  # Compiles.
  walls = {name: [] for name in timers}
  for repeat in range(repeats):
    for name, timer in timers.items():
      walls[name].append(timer.run(repeat + 1, steps)["seconds"])
  return {name: float(np.median(values)) for name, values in walls.items()}


# --------------------------------------------------------------------------------------------
# Evaluation.


def evaluation_times(setup: train.Setup, params, repeats: int) -> dict[str, Any]:
  """Full-ranking test evaluation of all test users: embeddings, then ranking and metrics."""
  walls = {"embeddings": [], "ranking": []}
  metrics = {}
  for _ in range(repeats + 1):  # The first call compiles.
    start = time.perf_counter()
    user_emb, item_emb = train.compute_embeddings(setup, params)
    middle = time.perf_counter()
    metrics = evaluation.evaluate(user_emb, item_emb, setup.dataset, "test",
                                  setup.config.top_k, setup.config.eval_batch_size)
    walls["embeddings"].append(middle - start)
    walls["ranking"].append(time.perf_counter() - middle)
  embed, rank = (float(np.median(walls[k][1:])) for k in ("embeddings", "ranking"))
  return {"seconds": embed + rank, "embeddings_seconds": embed, "ranking_seconds": rank,
          "first_call_seconds": walls["embeddings"][0] + walls["ranking"][0],
          "num_users": metrics["num_users"]}


# --------------------------------------------------------------------------------------------
# Synthetic power-law data.


def _power_law_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
  """Probabilities ∝ rank^-exponent, the ranks randomly assigned to the n ids."""
  weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
  return rng.permutation(weights / weights.sum())


def power_law_interactions(num_users: int, num_items: int, num_interactions: int,
                           user_exponent: float = 0.5, item_exponent: float = 0.8,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Exactly `num_interactions` distinct (user, item) pairs, int32, sorted by user then item.

  User activity and item popularity follow power laws: the expected degree of the id of rank r
  is ∝ r^-exponent (ranks shuffled over the ids). Pairs are drawn independently and deduplicated
  in rounds; the surplus of the last round is dropped at random.
  """
  if num_interactions > num_users * num_items // 2:
    raise ValueError(f"{num_interactions} interactions are too dense for {num_users} users x "
                     f"{num_items} items (at most half the pairs).")
  rng = np.random.default_rng(seed)
  user_cdf = np.cumsum(_power_law_weights(num_users, user_exponent, rng))
  item_cdf = np.cumsum(_power_law_weights(num_items, item_exponent, rng))
  keys = np.zeros(0, np.int64)
  for _ in range(100):
    missing = num_interactions - keys.size
    if missing <= 0:
      break
    draws = int(missing * 1.1) + 16
    users = np.minimum(np.searchsorted(user_cdf, rng.random(draws) * user_cdf[-1]), num_users - 1)
    items = np.minimum(np.searchsorted(item_cdf, rng.random(draws) * item_cdf[-1]), num_items - 1)
    keys = np.union1d(keys, users.astype(np.int64) * num_items + items)
  else:
    raise RuntimeError("power_law_interactions: too many duplicate draws; lower the exponents.")
  keys = np.sort(rng.choice(keys, num_interactions, replace=False))
  return (keys // num_items).astype(np.int32), (keys % num_items).astype(np.int32)


def synthetic_dataset(num_users: int, num_items: int, num_interactions: int,
                      num_test_users: int, seed: int = 0) -> Dataset:
  """A power-law data set, all positives: one interaction of each of `num_test_users` random
  users (with at least two) is held out as test, the rest is train; no validation."""
  users, items = power_law_interactions(num_users, num_items, num_interactions, seed=seed)
  rng = np.random.default_rng([seed, 1])
  starts = np.searchsorted(users, np.arange(num_users))
  degrees = np.diff(np.append(starts, users.size))
  candidates = np.flatnonzero(degrees >= 2)
  test_users = rng.choice(candidates, min(num_test_users, candidates.size), replace=False)
  test_rows = starts[test_users] + (rng.random(test_users.size) * degrees[test_users]).astype(int)
  is_test = np.zeros(users.size, bool)
  is_test[test_rows] = True
  labels = np.ones(users.size, np.int8)
  split = lambda mask: Interactions(users[mask], items[mask], labels[mask])
  return Dataset(
      name="synthetic-power-law", user_ids=np.arange(num_users).astype(str),
      item_ids=np.arange(num_items).astype(str), train=split(~is_test), valid=Interactions.empty(),
      test=split(is_test), user_meta=[{}] * num_users, item_meta=[{}] * num_items,
      summary={"interactions": num_interactions})


def scale_test(config: config_lib.Config, options: Options) -> dict[str, Any]:
  """Builds the synthetic graph, runs two training steps with groups (the first compiles) and
  evaluates one batch of users; returns the times and the peak host memory."""
  times = {}
  start = time.perf_counter()
  dataset = synthetic_dataset(options.scale_users, options.scale_items,
                              options.scale_interactions, config.eval_batch_size, config.seed)
  times["generate_seconds"] = time.perf_counter() - start
  config = config.replace(groups="none", num_devices=1)
  start = time.perf_counter()
  setup = train.create_model(config, dataset)
  times["build_graph_seconds"] = time.perf_counter() - start
  # Synthetic groups, so the step runs the group-aware sampler and losses of LAGCL.
  setup = dataclasses.replace(
      setup, config=config.replace(groups="files"),
      user_groups=(np.arange(dataset.num_users) % 50).astype(np.int32),
      item_groups=(np.arange(dataset.num_items) % 40).astype(np.int32))
  devices = jax.local_devices()[:1]
  timer = EpochTimer(setup, devices)
  times["first_step_seconds"] = timer.run(0, 1)["seconds"]  # Compiles.
  times["step_seconds"] = timer.run(1, 1)["seconds"]
  params = train.unreplicate(timer.state).params
  start = time.perf_counter()
  user_emb, item_emb = train.compute_embeddings(setup, params)
  times["embeddings_seconds"] = time.perf_counter() - start
  start = time.perf_counter()
  metrics = evaluation.evaluate(user_emb, item_emb, dataset, "test", config.top_k,
                                config.eval_batch_size)
  times["evaluate_batch_seconds"] = time.perf_counter() - start
  return {"num_users": dataset.num_users, "num_items": dataset.num_items,
          "num_interactions": options.scale_interactions,
          "num_edges": int(setup.graph.n_edge.sum()), "evaluated_users": metrics["num_users"],
          **times, "memory": host_memory(), "device_memory": device_memory(),
          "fits_24_gib": host_memory()["peak_rss_bytes"] < 24 * 2**30}


# --------------------------------------------------------------------------------------------
# 1, 2 and 4 devices.

DEVICE_COUNTS = (1, 2, 4)


def _devices_name(count: int) -> str:
  return f"{count}_device{'s' if count > 1 else ''}"


def compare_device_counts(config: config_lib.Config, steps: int,
                          repeats: int) -> dict[str, Any]:
  """Trains `steps` steps on the same batches with each of `DEVICE_COUNTS` local devices (those
  there are): the throughput of each, the largest parameter difference from 1 device (data
  parallelism must not change the update), and the pmapped encoder forward + backward over the
  training graph (sharded with --shard_propagation), each with its speedup over 1 device."""
  counts = [count for count in DEVICE_COUNTS if count <= len(jax.local_devices())]
  if len(counts) < 2:
    raise ValueError("compare_device_counts needs 2 or more local devices "
                     "(XLA_FLAGS=--xla_force_host_platform_device_count=4 on CPU).")
  dataset = data_lib.load_dataset(config)
  result, params = {}, {}
  for count in counts:
    devices = jax.local_devices()[:count]
    setup = train.create_model(config.replace(num_devices=count), dataset)
    timer = EpochTimer(setup, devices)
    timer.run(0, 2)  # Compiles; then start again from the same initial state.
    timer.reset()
    steps = min(steps, timer.sampler.num_batches)
    seconds = timer.run(0, steps)["seconds"]
    params[count] = train.unreplicate(timer.state).params
    arrays = train.place_local(train.shard_batch(next(timer.sampler.epoch(0)), count)[0], devices)
    replicated = train.replicate(timer.initial_state.params, devices)
    result[_devices_name(count)] = {
        "seconds_per_step": seconds, "rows_per_second": config.batch_size / seconds,
        "propagation_kernel": setup.model.propagate.__name__,
        "sharded_propagation": train.shards_propagation(setup.config, devices),
        "propagation_fwd_bwd": measure(lambda: timer.encoder_fwd_bwd(replicated, arrays),
                                       repeats)}
  one = result[_devices_name(1)]
  for count in counts[1:]:
    entry = result[_devices_name(count)]
    entry["speedup"] = one["seconds_per_step"] / entry["seconds_per_step"]
    entry["propagation_speedup"] = (one["propagation_fwd_bwd"]["seconds"] /
                                    entry["propagation_fwd_bwd"]["seconds"])
    entry["max_param_difference"] = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), params[1], params[count])))
  result["steps"] = steps
  result["max_param_difference"] = max(result[_devices_name(c)]["max_param_difference"]
                                       for c in counts[1:])
  return result


# --------------------------------------------------------------------------------------------
# Subprocesses (forced host devices; the scale test's own peak memory).


def run_part(part: str, config: config_lib.Config, options: Options,
             num_host_devices: int = 1) -> dict[str, Any]:
  """Runs `devices` or `scale` in a fresh Python process and returns its JSON result."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={num_host_devices}").strip()
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
  if num_host_devices > 1:  # Forced host devices: on CPU, whatever accelerator the machine has.
    env["JAX_PLATFORMS"] = "cpu"
    # XLA's CPU thread pool must outnumber the threads that device programs can block: in host
    # callbacks (graph.host_callbacks_can_deadlock) and in collectives waiting for the other
    # devices. NPROC=3 for 2 devices still hung on ML-1M; 8 per device did not.
    env["NPROC"] = str(max(graph_lib.available_cores(), 8 * num_host_devices))
  with tempfile.TemporaryDirectory() as folder:
    request, output = os.path.join(folder, "request.json"), os.path.join(folder, "result.json")
    files.atomic_write_text(request, json.dumps({
        "part": part, "config": dataclasses.asdict(config),
        "options": dataclasses.asdict(options), "output": output}))
    code = f"from tools import benchmark; benchmark.part_main({request!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.getcwd(),
                          capture_output=True, text=True, timeout=options.timeout_s, check=False)
    if done.returncode != 0 or not os.path.exists(output):
      raise RuntimeError(f"benchmark part {part!r} failed (exit {done.returncode}):\n"
                         f"{done.stderr[-4000:]}")
    with open(output) as f:
      return json.load(f)


def _run_part_or_error(part: str, *args, **kwargs) -> dict[str, Any]:
  """`run_part`, or {"error": ...} so that one failed part does not lose the others."""
  try:
    return run_part(part, *args, **kwargs)
  except (RuntimeError, subprocess.TimeoutExpired) as e:
    return {"error": str(e)[-4000:]}


def part_main(request_path: str) -> None:
  """Entry point of `run_part`'s subprocess."""
  with open(request_path) as f:
    request = json.load(f)
  config = config_lib.config_from_dict(request["config"])
  options = Options(**request["options"])
  if request["part"] == "devices":
    result = compare_device_counts(config, options.device_steps, options.phase_repeats)
  elif request["part"] == "scale":
    result = scale_test(config, options)
  else:
    raise ValueError(f"unknown benchmark part {request['part']!r}")
  files.atomic_write_text(request["output"], json.dumps(result))


# --------------------------------------------------------------------------------------------
# The whole benchmark.


def run(config: config_lib.Config, options: Options,
        log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
  """Measures everything for `config` (LAGCL) and its --groups=none variant (XSimGCL)."""
  result: dict[str, Any] = {"machine": machine(), "options": dataclasses.asdict(options)}
  start = time.perf_counter()
  dataset = data_lib.load_dataset(config)
  result["load_seconds"] = time.perf_counter() - start
  variants = {"lagcl": config, "xsimgcl": config.replace(groups="none")}
  setups = {name: train.create_model(c, dataset) for name, c in variants.items()}
  graph = setups["lagcl"].graph
  devices = train.training_devices(config)
  num_batches = train.batch_sampler(setups["lagcl"]).num_batches
  steps = num_batches if options.max_steps <= 0 else min(options.max_steps, num_batches)
  result["graph"] = {"num_users": dataset.num_users, "num_items": dataset.num_items,
                     "num_edges": int(graph.n_edge.sum()), "num_batches": num_batches,
                     "batch_size": config.batch_size, "embedding_dim": config.embedding_dim,
                     "num_layers": config.num_layers, "num_devices": len(devices),
                     "sharded_propagation": train.shards_propagation(config, devices),
                     "propagation_kernel": setups["lagcl"].model.propagate.__name__}

  log("Platform limit (propagation kernels)...")
  kernels = limit_kernels(graph, config.embedding_dim, config.num_layers)
  kernel_times = {name: measure(fn, options.phase_repeats) for name, fn in kernels.items()}
  fastest = min(kernel_times, key=lambda name: kernel_times[name]["seconds"])

  log(f"Epoch: {steps} of {num_batches} steps x {options.repeats} repeats per variant...")
  timers = {name: EpochTimer(setup, devices) for name, setup in setups.items()}
  for timer in timers.values():
    timer.run(0, 2)  # Compiles (once: the second step must not compile again).
  # Each repeat times the limit, LAGCL and XSimGCL back to back; the ratios are medians of the
  # ratios within a repeat, so that a change of the machine's load between repeats cancels.
  repeats = []
  for repeat in range(options.repeats):
    times = {"limit": measure(kernels[fastest], options.phase_repeats)}
    times.update({name: timer.run(repeat + 1, steps) for name, timer in timers.items()})
    repeats.append(times)
  median = lambda values: float(np.median(list(values)))
  result["limit"] = {"seconds": median(r["limit"]["seconds"] for r in repeats),
                     "cpu_seconds": median(r["limit"]["cpu_seconds"] for r in repeats),
                     "kernel": fastest, "products": 2 * config.num_layers,
                     "kernels": kernel_times}
  epoch = {"num_batches": num_batches, "steps_timed": steps, "extrapolated": steps < num_batches,
           "repeats": len(repeats)}
  for name in timers:
    per_step = {k: median(r[name][k] for r in repeats) for k in ("seconds", "cpu_seconds")}
    epoch[name] = {"seconds": per_step["seconds"] * num_batches,
                   "cpu_seconds": per_step["cpu_seconds"] * num_batches,
                   "seconds_per_step": per_step["seconds"],
                   "cpu_seconds_per_step": per_step["cpu_seconds"]}
  epoch["per_repeat_seconds_per_step"] = [{name: times["seconds"] for name, times in r.items()}
                                          for r in repeats]
  result["epoch"] = epoch
  result["limit_ratio"] = median(r["lagcl"]["seconds"] / r["limit"]["seconds"] for r in repeats)
  result["limit_ratio_cpu"] = median(r["lagcl"]["cpu_seconds"] / r["limit"]["cpu_seconds"]
                                     for r in repeats)
  result["xsimgcl_limit_ratio"] = median(r["xsimgcl"]["seconds"] / r["limit"]["seconds"]
                                         for r in repeats)
  result["group_overhead_ratio"] = median(r["lagcl"]["seconds"] / r["xsimgcl"]["seconds"]
                                          for r in repeats)
  result["group_overhead_ratio_cpu"] = median(
      r["lagcl"]["cpu_seconds"] / r["xsimgcl"]["cpu_seconds"] for r in repeats)

  log("Phases...")
  result["phases_per_step"] = {name: phase_times(timer, options.phase_repeats)
                               for name, timer in timers.items()}
  for name, phases in result["phases_per_step"].items():
    phases["loop_overhead"] = {
        k: epoch[name][k + "_per_step"] - sum(phases[p][k] for p in (
            "device_step", "negative_sampling", "host_device_transfer"))
        for k in ("seconds", "cpu_seconds")}

  if options.breakdown:
    log("Step breakdown...")
    result["step_breakdown"] = step_breakdown(setups["lagcl"], devices, steps, options.repeats)

  log("Evaluation...")
  params = train.unreplicate(timers["lagcl"].state).params
  result["evaluation"] = evaluation_times(setups["lagcl"], params, options.eval_repeats)

  result["memory"] = {"host": host_memory(), "device": device_memory()}

  if options.device_steps > 0:
    log(f"Devices {DEVICE_COUNTS} ({options.device_steps} steps each, subprocess)...")
    result["devices"] = _run_part_or_error("devices", config, options,
                                           num_host_devices=max(DEVICE_COUNTS))
  if options.scale:
    log(f"Scale test: {options.scale_users} users, {options.scale_items} items, "
        f"{options.scale_interactions} interactions (subprocess)...")
    result["scale"] = _run_part_or_error("scale", config, options)
  result["goals"] = {
      "epoch_within_1.3x_limit": result["limit_ratio"] <= 1.3,
      "evaluation_under_2s": result["evaluation"]["seconds"] < 2.0,
      "group_overhead_at_most_10pct": result["group_overhead_ratio"] <= 1.1}
  result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
  result["total_seconds"] = time.perf_counter() - start
  return result


def _gib(num_bytes: Optional[int]) -> str:
  return "n/a" if num_bytes is None else f"{num_bytes / 2**30:.2f} GiB"


def _devices_lines(devices: dict[str, Any]) -> list[str]:
  """The table's lines for `compare_device_counts`' result."""
  if "error" in devices:
    return [f"devices comparison failed: {devices['error'][-300:]}"]
  lines = [f"{'devices: wall ms (speedup)':<26}{'training step':>18}{'propagation fwd+bwd':>22}"]
  for count in DEVICE_COUNTS:
    entry = devices.get(_devices_name(count))
    if entry is None:
      continue
    cell = lambda seconds, speedup: f"{seconds * _MS:.1f}" + (
        f" ({entry[speedup]:.2f})" if speedup in entry else "")
    name = f"{count}{' (sharded)' if entry['sharded_propagation'] else ''}"
    lines.append(f"{name:<26}{cell(entry['seconds_per_step'], 'speedup'):>18}"
                 f"{cell(entry['propagation_fwd_bwd']['seconds'], 'propagation_speedup'):>22}")
  lines.append(f"max parameter difference from 1 device {devices['max_param_difference']:.1e} "
               f"after {devices['steps']} steps")
  return lines


def format_table(result: dict[str, Any]) -> str:
  """A short plain-text summary of `run`'s result."""
  epoch, limit, graph = result["epoch"], result["limit"], result["graph"]
  how = (f"extrapolated from {epoch['steps_timed']} steps" if epoch["extrapolated"]
         else "whole epoch")
  lines = [
      f"{result['machine']['cpu']}, {result['machine']['cores']} cores, "
      f"{result['machine']['backend']} x {graph['num_devices']} (load {result['machine']['load_average_1min']:.1f}); "
      f"{graph['num_users']} users, {graph['num_items']} items, {graph['num_edges']} directed "
      f"edges, {epoch['num_batches']} batches of {graph['batch_size']}",
      f"epoch ({how}): LAGCL {epoch['lagcl']['seconds']:.2f} s, XSimGCL "
      f"{epoch['xsimgcl']['seconds']:.2f} s; limit {limit['seconds'] * _MS:.1f} ms per "
      f"fwd+bwd ({limit['kernel']}), batches x limit {epoch['num_batches'] * limit['seconds']:.2f} s",
      f"limit_ratio {result['limit_ratio']:.2f} (goal <= 1.3; CPU time "
      f"{result['limit_ratio_cpu']:.2f}); group_overhead_ratio "
      f"{result['group_overhead_ratio']:.3f} (goal <= 1.1); evaluation "
      f"{result['evaluation']['seconds']:.3f} s for {result['evaluation']['num_users']} users "
      f"(goal < 2 s)",
      "",
      f"{'ms per step, wall (cpu)':<26}{'LAGCL':>18}{'XSimGCL':>18}"]
  phases = result["phases_per_step"]
  cell = lambda t: f"{t['seconds'] * _MS:.1f} ({t['cpu_seconds'] * _MS:.1f})"
  for name in phases["lagcl"]:
    other = cell(phases["xsimgcl"][name]) if name in phases["xsimgcl"] else "-"
    lines.append(f"{name:<26}{cell(phases['lagcl'][name]):>18}{other:>18}")
  per_step = lambda v: {"seconds": v["seconds_per_step"], "cpu_seconds": v["cpu_seconds_per_step"]}
  lines.append(f"{'training loop':<26}{cell(per_step(epoch['lagcl'])):>18}"
               f"{cell(per_step(epoch['xsimgcl'])):>18}")
  lines.append("limit kernels, ms per fwd+bwd: " + ", ".join(
      f"{k} {cell(v)}" for k, v in limit["kernels"].items()))
  if "step_breakdown" in result:
    lines.append("LAGCL step, wall ms: " + ", ".join(
        f"{k} {v * _MS:.1f}" for k, v in result["step_breakdown"].items()))
  device_peaks = [d["peak_bytes_in_use"] for d in result["memory"]["device"]]
  lines.append(f"peak host memory {_gib(result['memory']['host']['peak_rss_bytes'])}; device "
               f"peak {', '.join(_gib(p) for p in device_peaks)}")
  if "devices" in result:
    lines.extend(_devices_lines(result["devices"]))
  if "scale" in result:
    s = result["scale"]
    lines.append(f"scale ({s['num_users']} users, {s['num_items']} items, "
                 f"{s['num_interactions']} interactions): generate {s['generate_seconds']:.1f} s, "
                 f"graph {s['build_graph_seconds']:.1f} s, step {s['step_seconds']:.1f} s (first "
                 f"{s['first_step_seconds']:.1f} s), embeddings {s['embeddings_seconds']:.1f} s, "
                 f"one evaluation batch {s['evaluate_batch_seconds']:.1f} s, peak RSS "
                 f"{_gib(s['memory']['peak_rss_bytes'])}" if "error" not in s else
                 f"scale test failed: {s['error'][-300:]}")
  return "\n".join(lines)

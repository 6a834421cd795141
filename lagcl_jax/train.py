"""Training and evaluation of the graph recommender: `create_model`, `train_step`,
`train_and_evaluate`.

The step is data-parallel with `jax.pmap` over the local devices (one device works the same), or
over every process's devices when several run together (jax.distributed): each device takes a
slice of the batch, in-batch contrastive candidates are gathered from all devices, and gradients
are summed. The propagation is sharded (--shard_propagation, more than one device): each device
multiplies its block of the graph's rows and the blocks are all-gathered (`training_graph`);
otherwise every device propagates the whole graph. Losses are divided by the global batch
counts, so 1 and N devices compute the same update. Every process draws the same global batch and
feeds its own devices' rows; only process 0 writes the run's files.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any, Optional

from absl import logging
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax

from lagcl_jax import checkpointing
from lagcl_jax import config as config_lib
from lagcl_jax import data as data_lib
from lagcl_jax import evaluation
from lagcl_jax import graph as graph_lib
from lagcl_jax import groups as groups_lib
from lagcl_jax import losses
from lagcl_jax import model as model_lib
from lagcl_jax import reporting
from lagcl_jax import sampler as sampler_lib
from lagcl_jax import workdir as workdir_lib
from lagcl_jax.data_types import Dataset, Interactions

AXIS = "devices"  # The pmap axis of the training devices.


class TrainingDiverged(RuntimeError):
  """Raised when a loss becomes NaN or infinite."""


@dataclasses.dataclass
class Setup:
  """Everything a run builds from its config and data before training."""
  config: config_lib.Config
  dataset: Dataset
  graph: jraph.GraphsTuple
  model: model_lib.GraphEncoder
  user_groups: np.ndarray
  item_groups: np.ndarray
  group_report: dict

  @functools.cached_property
  def embed(self):
    """Jitted (params, graph) -> noise-free final node embeddings, compiled once per setup."""
    return jax.jit(lambda params, graph: self.model.apply({"params": params}, graph)[0])


def graph_interactions(config: config_lib.Config, dataset: Dataset):
  """The train interactions that become graph edges (--graph_edges)."""
  if config.graph_edges == "all":
    return dataset.train
  if config.graph_edges == "positive":
    return dataset.train.positives
  raise ValueError(f"--graph_edges={config.graph_edges!r}: expected 'all' or 'positive'")


def item_popularity(dataset: Dataset) -> np.ndarray:
  """[num_items] number of label-1 train interactions of each item."""
  return np.bincount(dataset.train.positives.items, minlength=dataset.num_items)


def create_model(config: config_lib.Config, dataset: Dataset) -> Setup:
  """Builds the graph, the groups and the encoder (--model) for a data set."""
  edges = graph_interactions(config, dataset)
  graph = graph_lib.build_graph(dataset.num_users, dataset.num_items, edges.users, edges.items)
  user_groups, item_groups, group_report = groups_lib.build_groups(config, dataset)
  if config.uses_groups:
    logging.info("Groups: %s", json.dumps(group_report, default=str)[:2000])
  if config.model == "mostpop":
    model = model_lib.MostPop(num_users=dataset.num_users, popularity=item_popularity(dataset))
  else:
    model = model_lib.GraphEncoder(
        num_users=dataset.num_users, num_items=dataset.num_items,
        embedding_dim=config.embedding_dim, num_layers=config.num_layers,
        cl_layer=config.cl_layer, eps=config.eps,
        propagate=graph_lib.make_propagation(config.propagation_kernel, graph),
        readout=config.readout, embedding_init=config.init)
  return Setup(config, dataset, graph, model, user_groups.astype(np.int32),
               item_groups.astype(np.int32), group_report)


def create_train_state(setup: Setup) -> train_state.TrainState:
  """Initial parameters (seeded) and Adam state."""
  params = setup.model.init(jax.random.PRNGKey(setup.config.seed), setup.graph)["params"]
  state = train_state.TrainState.create(
      apply_fn=setup.model.apply, params=params, tx=optax.adam(setup.config.learning_rate))
  # A concrete int32 step (not a weakly typed Python int) keeps the step from compiling twice.
  return state.replace(step=jnp.zeros((), jnp.int32))


def batch_nodes(batch: dict[str, Any], num_users: int) -> jax.Array:
  """The node rows a step reads of the encoder's outputs: the users [B], then the positive items
  [B], then the negative items [B * K] (row-major)."""
  return jnp.concatenate([batch["users"], batch["pos_items"] + num_users,
                          batch["neg_items"].reshape(-1) + num_users])


def train_step(state: train_state.TrainState, graph: jraph.GraphsTuple | graph_lib.RowBlocks,
               user_groups: jax.Array, item_groups: jax.Array, batch: dict[str, jax.Array],
               counts: dict[str, jax.Array], *, config: config_lib.Config, num_users: int):
  """One optimisation step on this device's slice of the batch (run under `pmap`).

  Args:
    batch: this device's rows of a `sampler.Batch` (users, pos_items, neg_items, row_weights,
      user_first, item_first).
    counts: global normalisers: rows (real rows), users and items (distinct nodes in the batch).
  Returns:
    The new state and the summed loss terms of the global batch.
  """
  noise_key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), state.step)
  # XSimGCL trains on its noisy pass; SimGCL and LightGCN on the noise-free one.
  main_noise = noise_key if config.model == "xsimgcl" and config.eps > 0 else None
  neg_weights = jnp.array([1.0, config.hard_weight] if config.groups_in_bpr else [1.0])

  def contrast(anchors, candidates, node_groups, first, normaliser):
    """Group-weighted InfoNCE of this device's nodes (their two views' rows) against the whole
    batch's other view."""
    candidates = jax.lax.all_gather(candidates, AXIS, tiled=True)
    candidate_groups = jax.lax.all_gather(node_groups, AXIS, tiled=True)
    candidate_valid = jax.lax.all_gather(first, AXIS, tiled=True) > 0
    positive_index = jax.lax.axis_index(AXIS) * anchors.shape[0] + jnp.arange(anchors.shape[0])
    if not config.groups_in_infonce:  # Plain InfoNCE: one temperature, no hard negatives.
      node_groups = positive_index
      candidate_groups = jnp.arange(candidates.shape[0])
    tau_easy = config.tau_easy if config.groups_in_infonce else config.tau_positive
    return losses.group_infonce(
        anchors, candidates, positive_index, node_groups, candidate_groups, first,
        candidate_valid, normaliser, config.tau_positive, tau_easy, config.tau_hard,
        config.hard_weight)

  # The encoder's outputs are read at the batch's nodes only, so it computes its last layer for
  # these rows alone.
  size, num_negatives = batch["neg_items"].shape
  rows = batch_nodes(batch, num_users)
  user_rows, pos_rows = slice(0, size), slice(size, 2 * size)

  def loss_fn(params):
    final, cl_view = state.apply_fn({"params": params}, graph, main_noise, rows)
    user_emb, pos_emb = final[user_rows], final[pos_rows]
    neg_emb = final[2 * size:].reshape(size, num_negatives, -1)
    if config.reg_form == "ego":  # LightGCN: 0.5 * ||layer-0 user, positive, negatives||^2.
      reg = 0.5 * losses.l2_penalty(
          [params["user_embedding"][batch["users"]], params["item_embedding"][batch["pos_items"]],
           params["item_embedding"][batch["neg_items"]]], batch["row_weights"], counts["rows"])
    else:
      reg = losses.l2_penalty([user_emb, pos_emb], batch["row_weights"], counts["rows"])
    terms = {
        "bpr": losses.bpr_loss(user_emb, pos_emb, neg_emb, neg_weights, batch["row_weights"],
                               counts["rows"]),
        "reg": config.reg * reg,
    }
    if config.contrastive:
      cl_weight = config.cl_weight
      if config.cl_warmup_steps:  # Linear warm-up of lambda over the first steps.
        cl_weight = cl_weight * jnp.minimum(1.0, (state.step + 1) / config.cl_warmup_steps)
      if config.model == "simgcl":  # Two extra noisy passes are the views.
        view_keys = jax.random.split(noise_key)
        anchor_view = state.apply_fn({"params": params}, graph, view_keys[0], rows)[0]
        candidate_view = state.apply_fn({"params": params}, graph, view_keys[1], rows)[0]
      else:  # XSimGCL: the noisy pass's final embeddings against its layer l*.
        anchor_view, candidate_view = final, cl_view
      terms["cl_user"] = cl_weight * contrast(
          anchor_view[user_rows], candidate_view[user_rows], user_groups[batch["users"]],
          batch["user_first"], counts["users"])
      terms["cl_item"] = cl_weight * contrast(
          anchor_view[pos_rows], candidate_view[pos_rows], item_groups[batch["pos_items"]],
          batch["item_first"], counts["items"])
    return sum(terms.values()), terms

  grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.psum(grads, AXIS)
  terms = jax.lax.psum(terms, AXIS)
  terms["loss"] = sum(terms.values())
  return state.apply_gradients(grads=grads), terms


def compute_embeddings(setup: Setup, params) -> tuple[np.ndarray, np.ndarray]:
  """Final user and item embeddings without noise, as host arrays."""
  nodes = np.asarray(setup.embed(params, setup.graph))
  return nodes[:setup.dataset.num_users], nodes[setup.dataset.num_users:]


def evaluate_params(setup: Setup, params, splits=("valid", "test")) -> dict[str, float]:
  """Full-ranking metrics of the given splits, keyed "valid/recall@20", "test/ndcg@20", ..."""
  user_emb, item_emb = compute_embeddings(setup, params)
  metrics = {}
  for split in splits:
    if split == "valid" and len(setup.dataset.valid) == 0:
      continue
    for name, value in evaluation.evaluate(user_emb, item_emb, setup.dataset, split,
                                           setup.config.top_k, setup.config.eval_batch_size,
                                           setup.config.test_mask_valid).items():
      metrics[f"{split}/{name}"] = value
    if split == "test" and evaluation.split_targets(setup.dataset, "test", cold=True)[0].size:
      for name, value in evaluation.evaluate(user_emb, item_emb, setup.dataset, split,
                                             setup.config.top_k, setup.config.eval_batch_size,
                                             setup.config.test_mask_valid, cold=True).items():
        metrics[f"test_cold/{name}"] = value
  return metrics


def training_devices(config: config_lib.Config) -> list[Any]:
  """The devices a run trains on: the local ones (--num_devices), or with several processes
  (jax.distributed) every process's devices; the batch must divide evenly over them."""
  if jax.process_count() > 1:
    # All global devices: pmap over the local ones would reduce per process, training apart.
    devices = jax.devices()
    if config.num_devices not in (0, len(devices)):
      raise ValueError(f"--num_devices={config.num_devices}: with {jax.process_count()} processes "
                       f"all {len(devices)} devices train; use --num_devices=0")
  else:
    devices = jax.local_devices()
    if config.num_devices:
      if config.num_devices > len(devices):
        raise ValueError(f"--num_devices={config.num_devices} but only {len(devices)} local "
                         "devices")
      devices = devices[:config.num_devices]
  if config.batch_size % len(devices):
    raise ValueError(f"--batch_size={config.batch_size} must divide evenly over {len(devices)} "
                     "devices")
  return devices


def shard_batch(batch: sampler_lib.Batch, num_devices: int) -> tuple[dict, dict]:
  """A host batch as `train_step` inputs: rows split over the devices, global counts."""
  arrays = {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.as_dict().items()}
  counts = {"rows": batch.row_weights.sum(), "users": batch.user_first.sum(),
            "items": batch.item_first.sum()}
  counts = {k: np.full((num_devices,), max(v, 1.0), np.float32) for k, v in counts.items()}
  return arrays, counts


def is_local(device) -> bool:
  return device.process_index == jax.process_index()


def local_rows(tree, devices: list[Any]):
  """This process's rows of a pytree of [len(devices), ...] arrays: those of its own devices, in
  `devices` order (all rows in a single process)."""
  rows = [i for i, device in enumerate(devices) if is_local(device)]
  if len(rows) == len(devices):
    return tree
  return jax.tree.map(lambda x: x[rows], tree)


def batch_sampler(setup: Setup) -> sampler_lib.BatchSampler:
  """The sampler of the run's training batches."""
  config, dataset = setup.config, setup.dataset
  return sampler_lib.BatchSampler(
      dataset.train, dataset.num_users, dataset.num_items, setup.item_groups, config.groups_in_bpr,
      config.hard_negatives_from_dislikes, config.batch_size, config.seed)


def shards_propagation(config: config_lib.Config, devices: list[Any]) -> bool:
  """Whether training on `devices` splits the propagation's rows over them."""
  return config.shard_propagation and len(devices) > 1


def training_graph(setup: Setup, devices: list[Any]):
  """The graph argument of `pmap_train_step`'s step, on this process's devices: the whole graph
  (replicated), or when `shards_propagation` its row blocks (`graph.split_rows`), one each."""
  if not shards_propagation(setup.config, devices):
    return jax.device_put(setup.graph)
  blocks = graph_lib.split_rows(setup.graph, len(devices), AXIS)
  return place_local(local_rows(blocks, devices), devices)


def graph_in_axis(config: config_lib.Config, devices: list[Any]) -> Optional[int]:
  """The `pmap` in_axes entry of `training_graph`: 0 (a block per device) or None (replicated)."""
  return 0 if shards_propagation(config, devices) else None


def pmap_train_step(setup: Setup, devices: list[Any]):
  """`train_step` mapped over `devices`: (replicated state, `training_graph`, user_groups,
  item_groups, sharded batch, counts) -> (replicated state, terms); the state is donated."""
  return jax.pmap(
      functools.partial(train_step, config=setup.config, num_users=setup.dataset.num_users),
      axis_name=AXIS, in_axes=(0, graph_in_axis(setup.config, devices), None, None, 0, 0),
      devices=devices, donate_argnums=(0,))


def pmap_sharding(devices: list[Any]) -> jax.sharding.NamedSharding:
  """Where `pmap` over `devices` places arrays with a leading device axis (its outputs)."""
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def place_local(tree, devices: list[Any]):
  """A pytree of [this process's devices of `devices`, ...] arrays, each row on its device and
  placed as `pmap` places its outputs, so that the step compiles once (not again at the second
  step, when its input is its own output)."""
  return jax.device_put(tree, pmap_sharding([device for device in devices if is_local(device)]))


def replicate(tree, devices: list[Any]):
  """`tree` copied to this process's devices of `devices` (`place_local`)."""
  local = [device for device in devices if is_local(device)]
  return place_local(flax.jax_utils.replicate(tree, local), devices)


def unreplicate(tree):
  """One device's copy of a `replicate`d pytree (for any number of devices, unlike
  flax.jax_utils.unreplicate, which keeps the device axis on a 1-device mesh)."""
  return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)


class StepSums:
  """Running sums of per-step numbers (the steps' loss terms, the sampler's fallback rates),
  added on the host in step order in float64. Device values are read only when the sums are,
  so the training loop never waits for a step to finish."""

  def __init__(self, initial: Optional[dict[str, float]] = None):
    self._sums = dict(initial or {})
    self._pending = []

  def add(self, values: dict[str, Any]) -> None:
    """Adds one step's values: floats, or replicated [devices] arrays (one device's is read)."""
    self._pending.append(values)

  def totals(self) -> dict[str, float]:
    """The sums so far."""
    for values in self._pending:
      for name, value in values.items():
        if isinstance(value, jax.Array):
          value = np.asarray(value.addressable_data(0)).reshape(-1)[0]
        self._sums[name] = self._sums.get(name, 0.0) + float(value)
    self._pending = []
    return dict(self._sums)


def _fit(setup: Setup, workdir: str) -> dict:
  """The training loop with validation, checkpoints and early stopping; returns the progress."""
  config, dataset = setup.config, setup.dataset
  devices = training_devices(config)
  num_devices = len(devices)
  logging.info("Training on %d devices (%d processes)%s.", num_devices, jax.process_count(),
               ", propagation sharded" if shards_propagation(config, devices) else "")
  sampler = batch_sampler(setup)
  p_train_step = pmap_train_step(setup, devices)
  checkpoints = checkpointing.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  has_valid = len(dataset.valid) > 0

  # --- Initialise, or resume from the work directory's latest checkpoint. ---------------------
  state = create_train_state(setup)
  progress = {"epoch": 0, "step_in_epoch": 0, "best_epoch": 0, "best_metric": None,
              "epochs_since_best": 0, "history": [], "partial_sums": {}, "global_step": 0,
              "stopped_early": False}
  if checkpoints.latest_step("latest") is not None:
    state, progress = checkpoints.restore("latest", state)
    logging.info("Resumed from %s: epoch %d, step %d of the epoch.", checkpoints.directory,
                 progress["epoch"] + 1, progress["step_in_epoch"])
  # A finished run continues when --num_epochs was raised, unless it stopped early.
  if progress.get("stopped_early") or progress["epoch"] >= config.num_epochs:
    checkpoints.close()
    return progress
  replicated = replicate(state, devices)
  graph = training_graph(setup, devices)
  user_groups, item_groups = jnp.asarray(setup.user_groups), jnp.asarray(setup.item_groups)

  def check_finite(epoch, losses, state=None):
    """Stops the run, keeping the last good checkpoint, once a loss or parameter is not finite."""
    finite = all(np.isfinite(v) for v in losses.values())
    if state is not None:
      finite = finite and all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))
    if not finite:
      checkpoints.close()
      raise TrainingDiverged(
          f"Loss or parameters not finite in epoch {epoch + 1} (losses {losses}); the last good "
          f"checkpoint is kept in {checkpoints.directory}. Lower --learning_rate or check the data.")

  def save(name, progress):
    state = unreplicate(replicated)
    check_finite(progress["epoch"], progress["partial_sums"], state)
    if jax.process_count() > 1:  # Orbax saves no host-local jax.Array there; NumPy: process 0.
      state = jax.device_get(state)
    checkpoints.save(name, int(progress["global_step"]), state, progress)

  # --- Epochs. ---------------------------------------------------------------------------------
  while progress["epoch"] < config.num_epochs:
    epoch = progress["epoch"]
    sums = StepSums(progress["partial_sums"])
    start = time.time()
    bar = reporting.progress_bar(sampler.num_batches, f"epoch {epoch + 1}/{config.num_epochs}",
                                 initial=progress["step_in_epoch"], unit="step")
    # The next batches are drawn on a background thread while the device trains.
    batches = sampler_lib.prefetch(sampler.epoch(epoch, progress["step_in_epoch"]))
    with contextlib.closing(batches):
      for step, batch in enumerate(batches, start=progress["step_in_epoch"]):
        arrays, counts = local_rows(shard_batch(batch, num_devices), devices)
        replicated, terms = p_train_step(replicated, graph, user_groups, item_groups, arrays,
                                         counts)
        sums.add(terms)
        sums.add({f"{kind}_negative_fallback_rate": count / config.batch_size  # Rate per row.
                  for kind, count in batch.fallbacks.items()})
        bar.update(1)
        if config.checkpoint_every_steps and (step + 1) % config.checkpoint_every_steps == 0 \
            and step + 1 < sampler.num_batches:
          progress.update(step_in_epoch=step + 1, global_step=int(replicated.step[0]),
                          partial_sums=sums.totals())
          save("latest", progress)
    bar.close()
    means = {f"train/{k}": v / sampler.num_batches for k, v in sums.totals().items()}
    check_finite(epoch, means)
    record = {"epoch": epoch + 1, **means, "train/seconds": time.time() - start}
    params = unreplicate(replicated).params
    if has_valid:
      start = time.time()
      record.update(evaluate_params(setup, params, splits=("valid",)))
      record["valid/seconds"] = time.time() - start
    logging.info("%s", reporting.format_record(record))

    # --- Model selection on validation (never on test), early stopping. ------------------------
    # Epochs before --min_epochs are never selected and do not count towards --patience.
    metric = record.get(config.select_metric, float(epoch))  # No validation: the last epoch.
    candidate = epoch + 1 >= config.min_epochs
    improved = candidate and (progress["best_metric"] is None or metric > progress["best_metric"])
    progress.update(epoch=epoch + 1, step_in_epoch=0, partial_sums={},
                    global_step=int(replicated.step[0]), history=progress["history"] + [record])
    if improved:
      progress.update(best_epoch=epoch + 1, best_metric=metric, epochs_since_best=0)
    elif candidate:
      progress["epochs_since_best"] += 1
    stop = has_valid and config.patience and progress["epochs_since_best"] >= config.patience
    progress["stopped_early"] = bool(stop)
    if improved:
      save("best", progress)
    save("latest", progress)
    if jax.process_index() == 0:
      reporting.write_history(workdir, progress["history"])
    if stop:
      logging.info("Early stop: no %s gain for %d epochs; best epoch %d.", config.select_metric,
                   config.patience, progress["best_epoch"])
      break
  checkpoints.close()
  return progress


def _train(setup: Setup, workdir: str) -> dict:
  """The training progress: `_fit`'s, or none for MostPop, which has nothing to train."""
  if setup.config.model == "mostpop":
    return restore_params(setup, workdir)[1]
  return _fit(setup, workdir)


def restore_params(setup: Setup, workdir: str, which: str = "best"):
  """Parameters of checkpoint `which` ("best" or "latest") in `workdir` (MostPop: none)."""
  if setup.config.model == "mostpop":
    return {}, {"best_epoch": 0, "history": []}
  checkpoints = checkpointing.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  try:
    state, progress = checkpoints.restore(which, create_train_state(setup))
  finally:
    checkpoints.close()
  return state.params, progress


def merge_validation(dataset: Dataset) -> Dataset:
  """The data set with the validation rows moved into train (for the final retraining)."""
  return dataclasses.replace(dataset, train=Interactions.concatenate([dataset.train, dataset.valid]),
                             valid=Interactions.empty())


def _write_recommendations(setup: Setup, user_emb: np.ndarray, item_emb: np.ndarray,
                           path: str) -> None:
  """Top-K items of every user, with everything the model trained on (train, valid) masked."""
  dataset, config = setup.dataset, setup.config
  exclude = evaluation.interaction_matrix(dataset.num_users, dataset.num_items, dataset.train,
                                          dataset.valid)
  all_users = np.arange(dataset.num_users, dtype=np.int32)
  items, scores = evaluation.top_k_items(user_emb, item_emb, all_users, exclude,
                                         config.num_recommendations, config.eval_batch_size)
  reporting.write_recommendations(path, dataset, items, scores)


def _write_per_user_test(setup: Setup, user_emb: np.ndarray, item_emb: np.ndarray,
                         path: str) -> None:
  """Per-user test metrics as an .npz: `user_ids` (raw ids of the evaluated users, in evaluation
  order) and one float array per metric key ("ndcg@20", ...); written atomically."""
  config, dataset = setup.config, setup.dataset
  users, per_user = evaluation.evaluate_per_user(user_emb, item_emb, dataset, "test",
                                                 config.top_k, config.eval_batch_size,
                                                 config.test_mask_valid)
  reporting.write_per_user_metrics(path, np.asarray(dataset.user_ids)[users], per_user)



def train_and_evaluate(config: config_lib.Config, workdir: str, *, overwrite: bool = False,
                       flagfile: Optional[str] = None) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a run), selects, tests; writes the artefacts.

  The work directory is claimed first (`workdir.claim`: a lock, and the same config as the run
  it holds, or `overwrite` to move that run aside); nothing is written before. A complete run
  (final metrics written, and early-stopped or trained for `config.num_epochs`) is not redone.
  `flagfile`: text written to `workdir/flags.txt` with `config.json`.

  Returns the final metrics (also in `workdir/final_metrics.json`).
  """
  config_lib.validate(config)
  writes_files = jax.process_index() == 0  # Several processes (jax.distributed) share `workdir`.
  with (workdir_lib.claim(workdir, config, overwrite) if writes_files
        else contextlib.nullcontext()):
    final = _completed_run(config, workdir)
    if final is not None:
      return final
    # Bad data or groups fail here, before the run's files are written.
    setup = create_model(config, data_lib.load_dataset(config))
    if writes_files:
      reporting.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE),
                           dataclasses.asdict(config))
      if flagfile is not None:
        reporting.atomic_write_text(os.path.join(workdir, "flags.txt"), flagfile)
    return _train_and_evaluate(setup, workdir, writes_files)


def _completed_run(config: config_lib.Config, workdir: str) -> Optional[dict[str, Any]]:
  """The final metrics of the run in `workdir` if it is complete for `config`, else None."""
  final_path = os.path.join(workdir, "final_metrics.json")
  if not os.path.exists(final_path):
    return None
  checkpoints = checkpointing.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  try:
    progress = checkpoints.progress("latest")
  finally:
    checkpoints.close()
  with open(final_path) as f:
    final = json.load(f)
  if progress is None or final.get("best_epoch") != progress["best_epoch"]:
    return None  # E.g. killed while continuing with a raised --num_epochs: evaluate again.
  if progress["stopped_early"]:
    state = (f"stopped early after epoch {progress['epoch']} (no {config.select_metric} gain for "
             f"{progress['epochs_since_best']} epochs)")
  elif progress["epoch"] >= config.num_epochs:
    state = f"finished its {progress['epoch']} epochs"
  else:
    return None  # --num_epochs was raised: train on.
  logging.info("The run in %s is complete: it %s; best epoch %d. Nothing to do: the final metrics "
               "are in %s (use another --workdir, or --overwrite, to train again).", workdir,
               state, progress["best_epoch"], final_path)
  return final


def _train_and_evaluate(setup: Setup, workdir: str, writes_files: bool) -> dict[str, Any]:
  """`train_and_evaluate` in a claimed work directory."""
  config, dataset = setup.config, setup.dataset
  progress = _train(setup, workdir)
  final = {"best_epoch": progress["best_epoch"]}
  params = restore_params(setup, workdir)[0]  # Every process: orbax synchronises them.
  final.update(evaluate_params(setup, params))
  model_dir = "."
  if config.retrain_on_full and len(dataset.valid):
    logging.info("Retraining on train + valid for the selected %d epochs.", progress["best_epoch"])
    full_config = config.replace(num_epochs=progress["best_epoch"], retrain_on_full=False)
    setup = create_model(full_config, merge_validation(dataset))
    model_dir = "full"
    _train(setup, os.path.join(workdir, model_dir))
    params = restore_params(setup, os.path.join(workdir, model_dir))[0]
    final.update(evaluate_params(setup, params, splits=("test",)))
  final["model_dir"] = model_dir
  if writes_files:
    embeddings = compute_embeddings(setup, params)  # Once for both files.
    _write_recommendations(setup, *embeddings, os.path.join(workdir, "recommendations.tsv"))
    _write_per_user_test(setup, *embeddings, os.path.join(workdir, "per_user_test.npz"))
    reporting.write_json(os.path.join(workdir, "final_metrics.json"), final)
    reporting.plot_history(workdir, progress["history"], config.select_metric)
  logging.info("Final: %s", reporting.format_record(final))
  return final

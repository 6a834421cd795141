"""Tests for lagcl_jax.train and the launch scripts on a tiny synthetic data set.

Covers one step's loss terms against a NumPy reference, determinism, resuming a killed run,
flag checks, divergence handling, data-parallel training on 2 (virtual CPU) devices, the run's
artefacts, launch/evaluate.py and retraining on train+valid. Run as a script, this file is the
multi-device check (a subprocess: XLA_FLAGS must be set before jax starts).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import numpy as np
import pytest

from lagcl_jax import checkpointing
from lagcl_jax import config as config_lib
from lagcl_jax import data as data_lib
from lagcl_jax import evaluation
from lagcl_jax import graph as graph_lib
from lagcl_jax import inference
from lagcl_jax import sampler as sampler_lib
from lagcl_jax import train

import synthetic
from test_losses import reference_bpr, reference_group_infonce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Interrupted(Exception):
  """Stands in for a kill between two training steps."""


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
  """Runs of one config in new workdirs compile their identical programs once (test speed)."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  previous = {name: getattr(jax.config, name) for name in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update(names[1], 0.5)
  compilation_cache.reset_cache()
  yield
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  return synthetic.write_paper_files(str(tmp_path_factory.mktemp("data")))


def restore(config, workdir, which="latest"):
  """(params, progress) of checkpoint `which` in `workdir`."""
  setup = train.create_model(config, data_lib.load_dataset(config))
  return train.restore_params(setup, str(workdir), which)


def steps_per_epoch(config) -> int:
  return -(-len(data_lib.load_dataset(config).train.positives) // config.batch_size)


def assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def history(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# --- One step against a NumPy reference. ----------------------------------------------------------


def one_step_terms(config):
  """(setup, initial state, batch, the loss terms of one `train_step` on that batch)."""
  setup = train.create_model(config, data_lib.load_dataset(config))
  state = train.create_train_state(setup)
  batch = next(train.batch_sampler(setup).epoch(0, start_step=1))
  devices = jax.local_devices()[:1]
  arrays, counts = train.shard_batch(batch, 1)
  _, terms = train.pmap_train_step(setup, devices)(
      train.replicate(state, devices), setup.graph, jnp.asarray(setup.user_groups),
      jnp.asarray(setup.item_groups), arrays, counts)
  return setup, state, batch, {name: float(value[0]) for name, value in terms.items()}


def reference_contrast(config, setup, batch, anchor_view, candidate_view, groups):
  """The two InfoNCE terms (users, items) of a batch from two [U + I, d] views."""
  users, pos = batch.users, batch.pos_items + setup.dataset.num_users
  size = users.shape[0]
  expected = {}
  for kind, nodes, node_groups, first in (
      ("user", users, setup.user_groups[batch.users], batch.user_first),
      ("item", pos, setup.item_groups[batch.pos_items], batch.item_first)):
    if not groups:  # Plain InfoNCE: every other node is an easy negative at tau.
      node_groups = np.arange(size)
    expected[f"cl_{kind}"] = config.cl_weight * reference_group_infonce(
        anchor_view[nodes], candidate_view[nodes], np.arange(size), node_groups, node_groups,
        first, first > 0, first.sum(), config.tau_positive,
        config.tau_easy if groups else config.tau_positive, config.tau_hard, config.hard_weight)
  return expected


@pytest.mark.parametrize("model,groups,group_losses", [
    ("xsimgcl", False, "both"), ("xsimgcl", True, "both"), ("xsimgcl", True, "infonce"),
    ("xsimgcl", True, "bpr"), ("lightgcn", False, "both"), ("lightgcn", True, "both")])
def test_train_step_losses_match_numpy_reference(paths, model, groups, group_losses):
  """eps=0: the step's loss terms equal BPR + L2 (+ InfoNCE) computed from a dense LightGCN.

  XSimGCL: readout over layers 1..L, L2 on the propagated user and positive rows. LightGCN
  (He et al. 2020): readout over layers 0..L, L2 = 0.5 ||.||^2 of the layer-0 user, positive and
  negative rows per batch row, no contrastive term (even with --cl_weight > 0). --group_losses
  picks the losses that see the groups (BPR: the weighted hard negative; InfoNCE: hard negatives).
  """
  faithful = dict(readout="layers_0_to_L", reg_form="ego") if model == "lightgcn" else {}
  config = synthetic.tiny_config(paths, groups=groups, eps=0.0, tau=0.5, cl_weight=0.3,
                                 reg=0.01, model=model, group_losses=group_losses, **faithful)
  setup, state, batch, terms = one_step_terms(config)
  # Repeated users and items: only first occurrences are anchors and candidates.
  assert batch.user_first.sum() < batch.row_weights.sum()
  assert batch.item_first.sum() < batch.row_weights.sum()

  num_users = setup.dataset.num_users
  adjacency = graph_lib.to_csr(setup.graph).toarray().astype(np.float64)
  layers = [np.concatenate([np.asarray(state.params["user_embedding"]),
                            np.asarray(state.params["item_embedding"])]).astype(np.float64)]
  for _ in range(config.num_layers):
    layers.append(adjacency @ layers[-1])
  final = np.mean(layers if model == "lightgcn" else layers[1:], axis=0)
  users, pos, neg = batch.users, batch.pos_items + num_users, batch.neg_items + num_users
  rows = batch.row_weights.sum()
  neg_weights = [1.0, config.hard_weight] if groups and group_losses != "infonce" else [1.0]
  if model == "lightgcn":
    ego = layers[0]
    reg = sum(w * 0.5 * (ego[u] @ ego[u] + ego[p] @ ego[p] + sum(ego[n] @ ego[n] for n in ns))
              for u, p, ns, w in zip(users, pos, neg, batch.row_weights)) / rows
  else:
    reg = sum(w * (final[u] @ final[u] + final[p] @ final[p])
              for u, p, w in zip(users, pos, batch.row_weights)) / rows
  expected = {"bpr": reference_bpr(final[users], final[pos], final[neg], neg_weights,
                                   batch.row_weights, rows),
              "reg": config.reg * reg}
  if model == "xsimgcl":
    expected.update(reference_contrast(config, setup, batch, final, layers[config.cl_layer],
                                       groups and group_losses != "bpr"))
  expected["loss"] = sum(expected.values())
  assert set(terms) == set(expected)
  for name, value in expected.items():
    assert terms[name] == pytest.approx(value, rel=2e-5), name


def test_step_sums_add_in_step_order_from_the_resumed_sums():
  """Device arrays ([devices] replicated, as pmap returns) and floats, added to the partial sums
  a resumed epoch starts from, in float64; reading the totals twice does not count twice."""
  rng = np.random.default_rng(0)
  values = rng.normal(size=(5, 2)).astype(np.float32)
  sums = train.StepSums({"bpr": 0.25})
  for step in range(5):
    sums.add({"bpr": jnp.full((1,), values[step, 0]), "rate": float(values[step, 1])})
    if step == 2:
      assert sums.totals()["bpr"] == ((0.25 + float(values[0, 0])) + float(values[1, 0])
                                      + float(values[2, 0]))
  totals = sums.totals()
  expected = 0.25
  for value in values[:, 0]:
    expected += float(value)
  assert totals == {"bpr": expected, "rate": sum(float(v) for v in values[:, 1])}
  assert sums.totals() == totals


def test_simgcl_contrasts_two_extra_noisy_passes_and_trains_on_the_clean_one(paths):
  """SimGCL (Yu et al. 2022): BPR on the noise-free pass; InfoNCE between the final embeddings of
  two further passes with independent noise; the contrastive gradient reaches the parameters."""
  config = synthetic.tiny_config(paths, groups=False, model="simgcl", eps=0.3, tau=0.5,
                                 cl_weight=0.3, reg=0.01)
  setup, state, batch, terms = one_step_terms(config)
  apply = lambda key: np.asarray(setup.model.apply({"params": state.params}, setup.graph, key)[0],
                                 np.float64)
  clean = apply(None)
  assert int(state.step) == 0  # The step's noise key folds in the state's step.
  noise_key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 0)
  view_1, view_2 = (apply(key) for key in jax.random.split(noise_key))
  assert np.abs(view_1 - view_2).max() > 1e-3 and np.abs(view_1 - clean).max() > 1e-3
  num_users = setup.dataset.num_users
  users, pos = batch.users, batch.pos_items + num_users
  rows = batch.row_weights.sum()
  expected = {"bpr": reference_bpr(clean[users], clean[pos],
                                   clean[batch.neg_items + num_users], [1.0],
                                   batch.row_weights, rows),
              "reg": config.reg * sum(w * (clean[u] @ clean[u] + clean[p] @ clean[p])
                                      for u, p, w in zip(users, pos, batch.row_weights)) / rows,
              **reference_contrast(config, setup, batch, view_1, view_2, groups=False)}
  expected["loss"] = sum(expected.values())
  assert set(terms) == set(expected)
  for name, value in expected.items():
    assert terms[name] == pytest.approx(value, rel=2e-5), name

  # The contrastive term's gradient flows: one step with and without it moves params apart.
  def one_step_params(cl_weight):
    step_setup = train.create_model(config.replace(cl_weight=cl_weight), setup.dataset)
    devices = jax.local_devices()[:1]
    arrays, counts = train.shard_batch(batch, 1)
    new_state, _ = train.pmap_train_step(step_setup, devices)(
        train.replicate(train.create_train_state(step_setup), devices), step_setup.graph,
        jnp.asarray(step_setup.user_groups), jnp.asarray(step_setup.item_groups), arrays, counts)
    return np.asarray(train.unreplicate(new_state).params["user_embedding"])
  assert np.abs(one_step_params(0.3) - one_step_params(0.0)).max() > 1e-5


def test_cl_warmup_scales_lambda_linearly_from_the_first_step(paths):
  """With --cl_warmup_steps=4 the first step (step 0) weighs the InfoNCE terms by 1/4."""
  config = synthetic.tiny_config(paths, groups=True, eps=0.0, cl_weight=0.3)
  full = one_step_terms(config)[3]
  warm = one_step_terms(config.replace(cl_warmup_steps=4))[3]
  assert warm["bpr"] == full["bpr"]
  for name in ("cl_user", "cl_item"):
    assert warm[name] == pytest.approx(full[name] / 4, rel=1e-6), name


@pytest.mark.parametrize("init,std", [("normal", 0.1), ("xavier", None)])
def test_embedding_initialisation(paths, init, std):
  config = synthetic.tiny_config(paths, groups=False, init=init, embedding_dim=32)
  setup = train.create_model(config, data_lib.load_dataset(config))
  params = train.create_train_state(setup).params
  users = np.asarray(params["user_embedding"])
  if std is None:  # Xavier uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    bound = np.sqrt(6 / sum(users.shape))
    assert np.abs(users).max() <= bound and np.abs(users).max() > 0.9 * bound
  else:
    assert np.std(users) == pytest.approx(std, rel=0.1) and np.abs(users).max() > 2 * std


# --- Model selection: --min_epochs. ---------------------------------------------------------------


@pytest.mark.parametrize("min_epochs,best_epoch,epochs_run,stopped",
                         [(0, 1, 3, True), (3, 3, 5, True), (5, 5, 5, False)])
def test_min_epochs_no_selection_or_patience_before_it(paths, tmp_path, monkeypatch, min_epochs,
                                                       best_epoch, epochs_run, stopped):
  """Validation NDCG@20 per epoch 0.9, 0.1, 0.2, 0.15, 0.1, 0.3 with patience 2: without
  --min_epochs epoch 1 wins and the run stops after epoch 3; with it, epochs before min_epochs are
  neither selected nor counted towards patience."""
  curve = iter([0.9, 0.1, 0.2, 0.15, 0.1, 0.3])
  monkeypatch.setattr(train, "evaluate_params",
                      lambda setup, params, splits: {"valid/ndcg@20": next(curve)})
  config = synthetic.tiny_config(paths, groups=False, num_epochs=5, patience=2,
                                 min_epochs=min_epochs)
  progress = train._fit(train.create_model(config, data_lib.load_dataset(config)),
                        str(tmp_path))
  assert progress["best_epoch"] == best_epoch
  assert len(progress["history"]) == epochs_run
  assert progress["stopped_early"] == stopped
  assert restore(config, tmp_path, "best")[1]["best_epoch"] == best_epoch


# --- Determinism and resuming. --------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(paths, tmp_path_factory):
  """A 3-epoch LAGCL run (groups from files), never interrupted: (config, workdir, final)."""
  config = synthetic.tiny_config(paths, groups=True, num_epochs=3)
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_same_seed_gives_identical_params(uninterrupted, tmp_path):
  config, workdir, final = uninterrupted
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again == final
  assert_trees_equal(restore(config, tmp_path)[0], restore(config, workdir)[0])
  assert [r["train/loss"] for r in history(tmp_path)] == [r["train/loss"] for r in
                                                          history(workdir)]


def test_resume_after_kill_mid_epoch_matches_uninterrupted(uninterrupted, tmp_path,
                                                           monkeypatch):
  reference_config, reference_dir, reference_final = uninterrupted
  config = reference_config.replace(checkpoint_every_steps=1)
  steps = steps_per_epoch(config)
  assert steps >= 4
  kill_after = steps + 2  # Two steps into the second epoch.
  original_epoch = sampler_lib.BatchSampler.epoch
  taken = []

  def epoch_then_kill(self, *args, **kwargs):
    for batch in original_epoch(self, *args, **kwargs):
      if len(taken) == kill_after:
        raise Interrupted()
      taken.append(1)
      yield batch

  monkeypatch.setattr(sampler_lib.BatchSampler, "epoch", epoch_then_kill)
  with pytest.raises(Interrupted):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  _, progress = restore(config, tmp_path)
  assert (progress["epoch"], progress["step_in_epoch"]) == (1, 2)
  assert progress["global_step"] == kill_after

  final = train.train_and_evaluate(config, str(tmp_path))  # Same workdir: resumes.
  params = restore(config, tmp_path)[0]
  assert_trees_equal(params, restore(reference_config, reference_dir)[0])
  assert_trees_equal(restore(config, tmp_path, "best")[0],
                     restore(reference_config, reference_dir, "best")[0])
  assert final == reference_final
  resumed, reference = history(tmp_path), history(reference_dir)
  assert [r["epoch"] for r in resumed] == [1, 2, 3]  # No epoch twice.
  for got, expected in zip(resumed, reference):
    for name, value in expected.items():
      if not name.endswith("/seconds"):
        assert got[name] == pytest.approx(value, rel=1e-6), name

  # A finished run rerun in its workdir trains no further.
  assert train.train_and_evaluate(config, str(tmp_path)) == final
  assert_trees_equal(restore(config, tmp_path)[0], params)
  assert len(history(tmp_path)) == 3


def test_resume_after_kill_between_best_and_latest_saves(uninterrupted, tmp_path, monkeypatch):
  """Killed after epoch 1's `best` was written but before its `latest`: the resumed run redoes
  the epoch and must be able to write `best` at the same step again."""
  config, reference_dir, reference_final = uninterrupted
  steps = steps_per_epoch(config)
  original_save = checkpointing.RunCheckpoints.save

  def save_then_kill(self, name, step, state, progress):
    if name == "latest" and step == steps:
      raise Interrupted()
    original_save(self, name, step, state, progress)

  monkeypatch.setattr(checkpointing.RunCheckpoints, "save", save_then_kill)
  with pytest.raises(Interrupted):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  assert restore(config, tmp_path, "best")[1]["global_step"] == steps
  assert train.train_and_evaluate(config, str(tmp_path)) == reference_final
  assert_trees_equal(restore(config, tmp_path)[0], restore(config, reference_dir)[0])


def test_kill_9_loop_ends_bit_identical_to_an_uninterrupted_run(uninterrupted, tmp_path):
  """launch/train.py killed with SIGKILL 6 times (every other kill in the middle of an Orbax
  save, checkpoints after every step), rerun each time: the end is the uninterrupted run's."""
  reference_config, reference_dir, reference_final = uninterrupted
  config = reference_config.replace(checkpoint_every_steps=1)
  workdir = tmp_path / "run"
  latest = workdir / "checkpoints" / "latest"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  command = [sys.executable, "launch/train.py", *synthetic.flag_args(config),
             f"--workdir={workdir}"]

  def steps():
    return {p.name for p in latest.iterdir()} if latest.is_dir() else set()

  kills, mid_save = 0, 0
  while kills < 6:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    start = steps()
    while process.poll() is None:  # Kill once this process has saved a new step...
      now = steps()
      saved = {s for s in now - start if s.isdigit()}
      saving = any(not s.isdigit() for s in now)  # Orbax's temporary folder of a save.
      if saved and (kills % 2 == 0 or saving):  # ...every other time in the middle of a save.
        process.kill()
        kills += 1
        mid_save += saving
        break
      time.sleep(0.002)
    process.wait(timeout=300)
    assert process.returncode in (0, -signal.SIGKILL), process.returncode
    if process.returncode == 0:
      break
  assert kills == 6 and mid_save >= 3, (kills, mid_save)
  subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
  assert_trees_equal(restore(config, workdir)[0], restore(reference_config, reference_dir)[0])
  assert_trees_equal(restore(config, workdir, "best")[0],
                     restore(reference_config, reference_dir, "best")[0])
  assert json.loads((workdir / "final_metrics.json").read_text()) == reference_final
  assert [r["epoch"] for r in history(workdir)] == [1, 2, 3]


@pytest.mark.parametrize("select_metric", ["valid/ndcg@50", "test/ndcg@20", "valid/ndcg20"])
def test_unknown_or_test_select_metric_is_an_error(paths, tmp_path, select_metric):
  """A selection metric that validation does not compute must not silently pick the last epoch."""
  config = synthetic.tiny_config(paths, groups=True, num_epochs=1, select_metric=select_metric)
  with pytest.raises(ValueError, match="select_metric"):
    train.train_and_evaluate(config, str(tmp_path))


# --- Divergence. ----------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint_every_steps", [0, 1])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(paths, tmp_path, monkeypatch,
                                                             checkpoint_every_steps):
  config = synthetic.tiny_config(paths, groups=True, num_epochs=3,
                                 checkpoint_every_steps=checkpoint_every_steps)
  steps = steps_per_epoch(config)
  poison_step = steps + 2  # The third step of the second epoch produces NaN.
  original_step = train.train_step

  def diverging_step(state, *args, **kwargs):
    """From `poison_step` on, the loss and the updated parameters are NaN."""
    new_state, terms = original_step(state, *args, **kwargs)
    bad = state.step >= poison_step
    poison = lambda x: jnp.where(bad, jnp.nan, x)
    return (new_state.replace(params=jax.tree.map(poison, new_state.params)),
            jax.tree.map(poison, terms))

  monkeypatch.setattr(train, "train_step", diverging_step)
  with pytest.raises(train.TrainingDiverged, match=r"not finite in epoch 2.*checkpoint"):
    train.train_and_evaluate(config, str(tmp_path))
  params, progress = restore(config, tmp_path)
  for leaf in jax.tree.leaves(params):
    assert np.all(np.isfinite(np.asarray(leaf))), "the latest checkpoint holds NaN parameters"
  # The newest good state: after the poisoned step's predecessor, or the end of epoch 1.
  assert progress["global_step"] == (poison_step if checkpoint_every_steps else steps)


# --- Multi-device. --------------------------------------------------------------------------------

# (groups, kernel, --shard_propagation): each loss (plain and group InfoNCE) and each kernel
# sharded, and the whole graph propagated on every device.
MULTI_DEVICE_CASES = (("none", "segment_sum", True), ("files", "scipy", True),
                      ("files", "scipy", False), ("files", "bcoo", True))


def compare_device_counts(directory: str) -> dict:
  """Trains each case on 2 devices and on 1 (once per groups and kernel); returns the max |param
  difference| per case, and whether the 2-device run sharded the propagation."""
  os.makedirs(directory, exist_ok=True)
  paths = synthetic.write_paper_files(directory)
  results = {"local_devices": jax.local_device_count()}
  max_diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  runs = {}  # The params of each run, by name: a 1-device run serves two cases.
  for groups, kernel, shard in MULTI_DEVICE_CASES:
    params = {}
    for num_devices in (1, 2):
      config = synthetic.tiny_config(paths, groups=groups == "files", num_epochs=1,
                                     propagation_kernel=kernel, num_devices=num_devices,
                                     shard_propagation=shard)
      name = f"{groups}-{kernel}" + (f"-{shard}" if num_devices > 1 else "")
      if name not in runs:
        workdir = os.path.join(directory, f"{name}-{num_devices}")
        train.train_and_evaluate(config, workdir)
        runs[name] = restore(config, workdir)[0]
      params[num_devices] = runs[name]
    setup = train.create_model(config, data_lib.load_dataset(config))
    initial = train.create_train_state(setup).params
    results[f"{groups}/{kernel}/{'sharded' if shard else 'whole'}"] = {
        "difference": max_diff(params[1], params[2]), "moved": max_diff(params[1], initial),
        "sharded": train.shards_propagation(config, train.training_devices(config))}
  return results


def run_python(args, extra_env=None, cache_dir=None):
  """Runs `python args...` from the repo root; returns stdout, failing with stderr's tail."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **(extra_env or {}))
  if cache_dir:  # Identical programs (e.g. per-run recompiles) then compile once.
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  result = subprocess.run([sys.executable] + list(map(str, args)), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, f"{args[0]} failed:\n{result.stderr[-4000:]}"
  return result.stdout


def test_two_devices_match_one_device(tmp_path):
  # NPROC=16: XLA's CPU thread pool needs 8 threads per device for the scipy kernel's host
  # callbacks (see graph.host_callbacks_can_deadlock).
  stdout = run_python([__file__, "--compare_devices", tmp_path / "runs"],
                      {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "NPROC": "16"},
                      cache_dir=tmp_path / "cache")
  results = json.loads(stdout.strip().splitlines()[-1])
  assert results.pop("local_devices") == 2
  assert set(results) == {f"{g}/{k}/{'sharded' if s else 'whole'}"
                          for g, k, s in MULTI_DEVICE_CASES}
  for case, result in results.items():
    assert result["sharded"] == case.endswith("/sharded"), case
    assert result["moved"] > 1e-3, case  # Training did change the parameters.
    assert result["difference"] < 1e-5, case


# --- Launch scripts, artefacts, retraining on train + valid. --------------------------------------


def test_launch_train_writes_artefacts_and_evaluate_reproduces(paths, tmp_path):
  config = synthetic.tiny_config(paths, groups=True, num_epochs=2)
  workdir = tmp_path / "run"
  cache = tmp_path / "cache"
  run_python(["launch/train.py", *synthetic.flag_args(config), f"--workdir={workdir}"],
             cache_dir=cache)
  for name in ("flags.txt", "config.json", "metrics.jsonl", "final_metrics.json",
               "recommendations.tsv", "training_curve.png", "per_user_test.npz"):
    assert (workdir / name).is_file(), name
  for name in ("latest", "best"):
    assert any((workdir / "checkpoints" / name).iterdir()), name
  # flags.txt: a flagfile with every Config field; config.json: the same config.
  flag_lines = (workdir / "flags.txt").read_text().splitlines()
  flag_names = {line[2:].split("=")[0] if "=" in line else line[2:].removeprefix("no")
                for line in flag_lines}  # --name=value, or --name / --noname for booleans.
  assert flag_names == {field.name for field in dataclasses.fields(config_lib.Config)}
  for arg in synthetic.flag_args(config):
    assert arg in flag_lines, arg
  assert config_lib.config_from_dict(json.loads((workdir / "config.json").read_text())) == config
  assert [r["epoch"] for r in history(workdir)] == [1, 2]
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["model_dir"] == "." and final["best_epoch"] in (1, 2)
  for name in ("valid/recall@20", "valid/ndcg@20", "test/recall@10", "test/ndcg@20",
               "test/precision@20", "test/hit@20", "test/num_users"):
    assert name in final, name

  # Recommendations: 20 per user, ranked, never a train or valid item.
  dataset = data_lib.load_dataset(config)
  known = {(str(dataset.user_ids[u]), str(dataset.item_ids[i]))
           for part in (dataset.train, dataset.valid) for u, i in zip(part.users, part.items)}
  lines = (workdir / "recommendations.tsv").read_text().splitlines()
  assert lines[0].split("\t") == ["user", "rank", "item", "score"]
  rows = [line.split("\t") for line in lines[1:]]
  assert len(rows) == 20 * dataset.num_users
  assert not known & {(user, item) for user, _, item, _ in rows}

  # Per-user test metrics: raw ids of the evaluated users; their means are the reported metrics.
  with np.load(workdir / "per_user_test.npz") as per_user:
    test_users = np.unique(dataset.test.users[dataset.test.labels > 0])
    np.testing.assert_array_equal(per_user["user_ids"], dataset.user_ids[test_users])
    assert set(per_user.files) == {"user_ids"} | {
        name[len("test/"):] for name in final if name.startswith("test/") and
        name != "test/num_users"}
    for name in per_user.files[1:]:
      assert float(np.mean(per_user[name])) == pytest.approx(final[f"test/{name}"], rel=1e-12)

  output = tmp_path / "evaluated.json"
  stdout = run_python(["launch/evaluate.py", f"--workdir={workdir}", f"--output={output}"],
                      cache_dir=cache)
  evaluated = json.loads(output.read_text())
  assert evaluated == json.loads(stdout)
  reported = {k: v for k, v in final.items() if k.startswith(("valid/", "test/"))}
  assert evaluated == reported


def test_mostpop_ranks_by_train_popularity_through_the_same_pipeline(paths, tmp_path):
  config = synthetic.tiny_config(paths, groups=False, model="mostpop")
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final["best_epoch"] == 0 and final["model_dir"] == "."
  for name in ("final_metrics.json", "recommendations.tsv", "per_user_test.npz"):
    assert (tmp_path / name).is_file(), name
  # Every user's recommendations: the most popular items (train positives) it has not seen.
  dataset = data_lib.load_dataset(config)
  popularity = np.bincount(dataset.train.positives.items, minlength=dataset.num_items)
  known = {(u, i) for part in (dataset.train, dataset.valid) for u, i in zip(part.users, part.items)}
  rows = [line.split("\t") for line in (tmp_path / "recommendations.tsv").read_text().splitlines()[1:]]
  item_index = {str(raw): i for i, raw in enumerate(dataset.item_ids)}
  for user in range(0, dataset.num_users, 7):
    unseen = [i for i in range(dataset.num_items) if (user, i) not in known]
    expected = sorted(unseen, key=lambda i: (-popularity[i], i))[:config.num_recommendations]
    got = [item_index[item] for raw_user, _, item, _ in rows
           if raw_user == str(dataset.user_ids[user])]
    assert got == expected, user
  # The metrics are those of ranking by popularity in the shared evaluation.
  expected = evaluation.evaluate(np.ones((dataset.num_users, 1), np.float32),
                                 popularity[:, None].astype(np.float32), dataset, "test",
                                 config.top_k)
  assert {k: v for k, v in final.items() if k.startswith("test/")} == {
      f"test/{k}": v for k, v in expected.items()}
  run = inference.load_run(str(tmp_path))  # launch/evaluate.py's path restores it too.
  assert train.evaluate_params(run.setup, run.params) == {
      k: v for k, v in final.items() if k.startswith(("valid/", "test/"))}


def test_retrain_on_full_writes_full_model(paths, tmp_path):
  config = synthetic.tiny_config(paths, groups=True, num_epochs=2, retrain_on_full=True)
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final["model_dir"] == "full"
  assert json.loads((tmp_path / "final_metrics.json").read_text()) == final
  assert any((tmp_path / "full" / "checkpoints" / "best").iterdir())
  assert len(history(tmp_path / "full")) == final["best_epoch"]

  run = inference.load_run(str(tmp_path))
  dataset = data_lib.load_dataset(config)
  assert len(run.dataset.valid) == 0
  assert len(run.dataset.train) == len(dataset.train) + len(dataset.valid)
  assert train.evaluate_params(run.setup, run.params) == {
      k: v for k, v in final.items() if k.startswith("test/")}
  selected, _ = restore(config, tmp_path, "best")
  assert not np.allclose(run.params["user_embedding"], selected["user_embedding"])


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--compare_devices":
    print(json.dumps(compare_device_counts(sys.argv[2])))
  else:
    sys.exit(f"usage: {sys.argv[0]} --compare_devices DIRECTORY")

"""Tests for tools/benchmark.py: the synthetic generator, the measurements and a tiny run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lagcl_jax import data as data_lib
from lagcl_jax import train
from lagcl_jax.config import Config
from tests import synthetic
from tools import benchmark


def test_power_law_interactions_are_exact_distinct_and_in_range():
  users, items = benchmark.power_law_interactions(500, 300, 20_000, seed=3)
  assert users.shape == items.shape == (20_000,)
  assert users.dtype == items.dtype == np.int32
  assert users.min() >= 0 and users.max() < 500 and items.min() >= 0 and items.max() < 300
  keys = users.astype(np.int64) * 300 + items
  assert np.all(np.diff(keys) > 0)  # Sorted by (user, item), no duplicate.
  again = benchmark.power_law_interactions(500, 300, 20_000, seed=3)
  np.testing.assert_array_equal(again[0], users)
  np.testing.assert_array_equal(again[1], items)
  with pytest.raises(ValueError, match="too dense"):
    benchmark.power_law_interactions(10, 10, 60)


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_item_degrees_follow_the_power_law(exponent):
  """log(degree) against log(rank) has slope -exponent (sparse enough to dedupe little)."""
  _, items = benchmark.power_law_interactions(20_000, 1_000, 50_000, user_exponent=0.3,
                                              item_exponent=exponent, seed=0)
  degrees = np.sort(np.bincount(items, minlength=1_000))[::-1]
  ranks = np.arange(1, 1_001)
  middle = slice(5, 500)  # The head saturates a little, the tail is Poisson noise.
  slope = np.polyfit(np.log(ranks[middle]), np.log(degrees[middle]), 1)[0]
  assert slope == pytest.approx(-exponent, abs=0.12)
  uniform_slope = np.polyfit(
      np.log(ranks[middle]),
      np.log(np.sort(np.bincount(np.random.default_rng(0).integers(0, 1_000, 50_000)))[::-1][
          middle]), 1)[0]
  assert abs(uniform_slope) < 0.15  # The fit tells a power law from uniform draws.


def test_synthetic_dataset_holds_out_one_interaction_per_test_user():
  dataset = benchmark.synthetic_dataset(300, 200, 6_000, num_test_users=50, seed=1)
  assert dataset.num_users == 300 and dataset.num_items == 200
  assert len(dataset.train) + len(dataset.test) == 6_000 and len(dataset.valid) == 0
  assert len(dataset.test) == 50 and np.unique(dataset.test.users).size == 50
  train_keys = set(zip(dataset.train.users.tolist(), dataset.train.items.tolist()))
  assert not train_keys & set(zip(dataset.test.users.tolist(), dataset.test.items.tolist()))
  assert set(dataset.test.users.tolist()) <= set(dataset.train.users.tolist())
  assert np.all(dataset.train.labels == 1) and np.all(dataset.test.labels == 1)


def test_measure_reports_the_median_after_the_warmup(monkeypatch):
  """A fake clock: each call advances wall and CPU time by its own amount."""
  durations = iter([(5.0, 5.0), (0.3, 0.2), (0.0, 0.0), (0.1, 0.05)])  # Warm-up, then 3 calls.
  clock = {"wall": 0.0, "cpu": 0.0}

  def call():
    wall, cpu = next(durations)
    clock["wall"] += wall
    clock["cpu"] += cpu

  monkeypatch.setattr(benchmark.time, "perf_counter", lambda: clock["wall"])
  monkeypatch.setattr(benchmark.time, "process_time", lambda: clock["cpu"])
  times = benchmark.measure(call, repeats=3)
  assert times == {"seconds": pytest.approx(0.1), "cpu_seconds": pytest.approx(0.05)}


def test_memory_reports():
  host = benchmark.host_memory()
  assert set(host) == {"peak_rss_bytes", "current_rss_bytes"}
  assert host["peak_rss_bytes"] >= host["current_rss_bytes"]
  devices = benchmark.device_memory()
  assert devices and all("peak_bytes_in_use" in d for d in devices)


def test_scale_test_at_small_size():
  config = Config(embedding_dim=8, batch_size=64, eval_batch_size=32,
                  propagation_kernel="segment_sum")
  options = benchmark.Options(scale_users=400, scale_items=150, scale_interactions=5_000)
  result = benchmark.scale_test(config, options)
  assert result["num_edges"] == 2 * (5_000 - 32)  # Train pairs, both directions.
  assert result["evaluated_users"] == 32
  for name in ("first_step_seconds", "step_seconds", "fits_24_gib", "memory"):
    assert name in result, name


def test_step_breakdown_takes_out_each_part(tmp_path):
  """The stand-in kernels keep shapes and the step trains; each variant is timed."""
  paths = synthetic.write_paper_files(str(tmp_path))
  config = synthetic.tiny_config(paths, groups=True, propagation_kernel="scipy")
  setup = train.create_model(config, data_lib.load_dataset(config))
  x = jnp.ones((7, 3))
  rows = jnp.asarray([0, 2, 2])
  assert benchmark._zero_products(None, x).shape == (7, 3)
  assert benchmark._zero_products(None, x, rows).shape == (3, 3)
  grad = jax.grad(lambda x: benchmark._zero_products(None, x, rows).sum())(x)
  assert grad.shape == x.shape and not np.any(np.asarray(grad))
  np.testing.assert_array_equal(benchmark._no_products(None, x, rows), np.full((3, 3), 0.5))
  times = benchmark.step_breakdown(setup, train.training_devices(config), steps=2, repeats=1)
  assert list(times) == ["step", "without_host_products", "without_callbacks",
                         "without_callbacks_and_noise"]
  assert all(seconds > 0 for seconds in times.values())


def test_tiny_benchmark_run_has_every_figure(tmp_path):
  paths = synthetic.write_paper_files(str(tmp_path))
  config = synthetic.tiny_config(paths, groups=True, num_devices=0)
  options = benchmark.Options(max_steps=2, repeats=1, phase_repeats=1, eval_repeats=1,
                              device_steps=2)
  result = benchmark.run(config, options)
  json.loads(json.dumps(result))  # Plain JSON.
  epoch = result["epoch"]
  assert epoch["extrapolated"] == (epoch["num_batches"] > 2) and epoch["steps_timed"] <= 2
  for name in ("lagcl", "xsimgcl"):
    assert epoch[name]["seconds"] == pytest.approx(
        epoch[name]["seconds_per_step"] * epoch["num_batches"])
    phases = result["phases_per_step"][name]
    for phase in ("negative_sampling", "host_device_transfer", "propagation_fwd_bwd",
                  "of_which_noise", "losses_fwd_bwd", "optimizer", "device_step",
                  "loop_overhead"):
      assert set(phases[phase]) == {"seconds", "cpu_seconds"}
  limit = result["limit"]
  assert limit["products"] == 4
  assert limit["kernel"] == min(limit["kernels"], key=lambda k: limit["kernels"][k]["seconds"])
  # One repeat: the ratios of its times.
  assert result["limit_ratio"] == pytest.approx(
      epoch["lagcl"]["seconds"] / (epoch["num_batches"] * limit["seconds"]))
  assert result["limit_ratio_cpu"] == pytest.approx(
      epoch["lagcl"]["cpu_seconds"] / (epoch["num_batches"] * limit["cpu_seconds"]))
  assert result["group_overhead_ratio"] == pytest.approx(
      epoch["lagcl"]["seconds"] / epoch["xsimgcl"]["seconds"])
  assert result["evaluation"]["num_users"] > 0 and "seconds" in result["evaluation"]
  assert set(result["goals"]) == {"epoch_within_1.3x_limit", "evaluation_under_2s",
                                  "group_overhead_at_most_10pct"}
  devices = result["devices"]
  assert "error" not in devices, devices.get("error")
  assert devices["max_param_difference"] < 1e-5  # 1, 2 and 4 devices: the same update.
  for name in ("1_device", "2_devices", "4_devices"):
    entry = devices[name]
    assert entry["rows_per_second"] > 0 and entry["propagation_fwd_bwd"]["seconds"] > 0, name
    assert entry["propagation_fwd_bwd"]["cpu_seconds"] > 0, name
    assert entry["sharded_propagation"] == (name != "1_device")  # --shard_propagation's default.
    if name != "1_device":
      assert entry["speedup"] > 0 and entry["propagation_speedup"] > 0, name
      assert entry["max_param_difference"] < 1e-5, name
  table = benchmark.format_table(result)
  assert "limit_ratio" in table and "propagation fwd+bwd" in table and "4 (sharded)" in table

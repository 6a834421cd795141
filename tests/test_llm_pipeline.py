"""The LLM stages end to end on a small data set with a tiny random-weight model: outputs parse
and feed training's readers, reruns make no LLM call, shards merge, and the launch script prints
the summary line."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lagcl_jax import data as data_lib
from lagcl_jax import groups as groups_lib
from lagcl_jax.config import Config
from lagcl_jax.llm import stages
from lagcl_jax.llm.options import LLMOptions
import llm_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  model = llm_testing.build_tiny_model(str(root / "tiny"))
  files = llm_testing.write_movie_files(str(root / "data"), llm_testing.movie_dataset())
  config = Config(dataset="lagcl", train_file=files["train.txt"], test_file=files["test.txt"],
                  metadata_dir=str(root / "data"), valid_fraction=0.25, top_k=(5, 10),
                  select_metric="valid/ndcg@10")
  options = LLMOptions(
      llm_model=model, llm_dtype="float32", llm_device="cpu", llm_batch_size=4,
      llm_max_new_tokens=4, group_max_new_tokens=8, llm_dir=str(root / "out"), max_users=6,
      top_candidates=3, random_candidates=3, k_augment=1, num_user_groups=2,
      num_item_groups=3, rerank_top_n=10, rerank_alphas=(0.0, 0.5, 1.0))
  return config, options


def _twice(stage, config, options):
  """Runs a stage twice; the second run must find everything in the cache."""
  first = stage(config, options)
  second = stage(config, options)
  assert (second.llm_calls, second.cache_hits) == (0, first.prompts), second.summary_line()
  assert first.llm_calls > 0 and first.llm_calls + first.cache_hits == first.prompts
  return first


def test_profiles_augment_groups(setup):
  config, options = setup
  out = options.llm_dir
  _twice(stages.run_profiles, config, options)
  with open(os.path.join(out, "profiles.json")) as f:
    profiles = json.load(f)
  assert [u["user_id"] for u in profiles["users"]] == [f"u{i:02d}" for i in range(6)]
  assert profiles["provenance"]["model_identity"].endswith("|float32")

  stats = _twice(stages.run_augment, config, options)
  assert stats.prompts == 6 * 6
  with open(os.path.join(out, "augment.provenance.json")) as f:
    provenance = json.load(f)
  augmented = data_lib.load_dataset(config.replace(augment_file=os.path.join(out, "augment.txt")))
  # Candidates avoid train and valid only; loading drops the rows that are test pairs.
  assert augmented.summary["augment_overlap_rows"] == provenance["test_pair_rows"]
  assert augmented.summary["augmented_positives"] == 6 - provenance["test_pair_positives"]
  assert augmented.summary["augmented_negatives"] == 6 - provenance["test_pair_negatives"]

  _twice(stages.run_groups, config, options)
  dataset = data_lib.load_dataset(config)
  for kind, raw_ids, count in (("user", dataset.user_ids[:6], 2), ("item", None, 3)):
    with open(os.path.join(out, f"{kind}_group.json")) as f:
      groups = json.load(f)
    assert len(groups) == count
    members = [m for g in groups for m in g["members"]]
    ids = np.array(members) if raw_ids is None else raw_ids
    _, report = groups_lib.load_group_file(os.path.join(out, f"{kind}_group.txt"), ids, kind)
    assert report["coverage"] == 1.0 and report["num_groups"] == count


def test_rerank_stage(setup, monkeypatch):
  config, options = setup
  dataset = data_lib.load_dataset(config)
  rng = np.random.default_rng(0)
  run = type("Run", (), dict(
      dataset=dataset, config=config,
      user_embeddings=rng.normal(size=(dataset.num_users, 4)).astype(np.float32),
      item_embeddings=rng.normal(size=(dataset.num_items, 4)).astype(np.float32)))
  monkeypatch.setattr(stages, "_load_run", lambda _: run)
  options = options.replace(backbone_workdir="trained-run")
  _twice(stages.run_rerank, config, options)
  with open(os.path.join(options.llm_dir, "rerank.json")) as f:
    metrics = json.load(f)
  assert metrics["alpha"] in (0.0, 0.5, 1.0) and metrics["select_metric"] == "valid/ndcg@10"
  assert set(metrics["test"]) == {"cf", "reranked"}
  assert metrics["test"]["cf"]["num_users"] == metrics["test"]["reranked"]["num_users"] <= 6


def test_shards_merge_into_the_unsharded_output(setup, tmp_path):
  config, options = setup
  merged = tmp_path / "merged_cache"
  merged.mkdir()
  for shard in range(2):
    sharded = options.replace(llm_dir=str(tmp_path / f"machine{shard}"), shard_index=shard,
                              num_shards=2)
    stats = stages.run_profiles(config, sharded)
    assert stats.prompts == 3 and not os.path.exists(os.path.join(sharded.llm_dir,
                                                                  "profiles.json"))
    for path in glob.glob(os.path.join(sharded.prompt_cache_dir, "*.jsonl")):
      shutil.copy(path, merged)
  final = options.replace(llm_dir=str(tmp_path / "final"), cache_dir=str(merged))
  stats = stages.run_profiles(config, final)
  assert (stats.llm_calls, stats.cache_hits) == (0, 6)
  with open(os.path.join(final.llm_dir, "profiles.json")) as f:
    merged_users = json.load(f)["users"]
  with open(os.path.join(options.llm_dir, "profiles.json")) as f:
    assert merged_users == json.load(f)["users"]
  with pytest.raises(ValueError, match="shard_index"):
    stages.run_profiles(config, options.replace(shard_index=2, num_shards=2))


def test_launch_script_prints_the_summary_line(setup, tmp_path):
  config, options = setup
  command = [sys.executable, os.path.join(REPO, "launch", "llm.py"), "--stage=profiles",
             "--dataset=lagcl", f"--train_file={config.train_file}",
             f"--test_file={config.test_file}", f"--metadata_dir={config.metadata_dir}",
             f"--llm_model={options.llm_model}", "--llm_dtype=float32", "--llm_device=cpu",
             "--llm_max_new_tokens=4", "--max_users=3", f"--llm_dir={tmp_path}"]
  lines = []
  for _ in range(2):
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True,
                            env=dict(os.environ, PYTHONPATH=REPO))  # Also without pip install -e.
    lines.append([l for l in result.stdout.splitlines() if l.startswith("prompts:")])
  assert lines == [["prompts: 3, cache hits: 0, LLM calls: 3, parse failures: 0"],
                   ["prompts: 3, cache hits: 3, LLM calls: 0, parse failures: 0"]]

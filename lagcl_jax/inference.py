"""Loading a finished (or interrupted) run back: config, data, model and embeddings."""

import dataclasses
import json
import os

import numpy as np

from lagcl_jax import config as config_lib
from lagcl_jax import data as data_lib
from lagcl_jax import train
from lagcl_jax.data_types import Dataset


@dataclasses.dataclass
class TrainedRun:
  """A restored run. Scores are `user_embeddings @ item_embeddings.T`."""
  config: config_lib.Config
  dataset: Dataset
  setup: train.Setup
  params: dict
  user_embeddings: np.ndarray
  item_embeddings: np.ndarray
  progress: dict


def load_run(workdir: str, which: str = "best", **overrides) -> TrainedRun:
  """Restores checkpoint `which` of the run in `workdir` (its final model when it retrained).

  `overrides` replace config fields, e.g. data paths on another machine.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: --workdir must be a training run's folder.")
  with open(config_path) as f:
    config = config_lib.config_from_dict(json.load(f)).replace(**overrides)
  model_dir = "."
  final_path = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(final_path):
    with open(final_path) as f:
      model_dir = json.load(f).get("model_dir", ".")
  dataset = data_lib.load_dataset(config)
  if model_dir != ".":
    dataset = train.merge_validation(dataset)
  setup = train.create_model(config, dataset)
  params, progress = train.restore_params(setup, os.path.join(workdir, model_dir), which)
  user_emb, item_emb = train.compute_embeddings(setup, params)
  return TrainedRun(config, dataset, setup, params, user_emb, item_emb, progress)

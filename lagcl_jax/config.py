"""The run configuration: one flat, frozen dataclass.

Every field is also an absl flag of the same name (see `lagcl_jax.flags`), so a flagfile in
`configs/` is simply a list of `--field=value` lines.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of a run. Defaults follow the LAGCL4Rec paper's code."""

  # --- Data ---------------------------------------------------------------------------------
  dataset: str = "ml-100k"  # ml-100k | ml-1m | lagcl (the paper's `user item label` files)
  data_dir: str = "../shared/data/ml-100k"  # raw MovieLens files (or where to download them)
  train_file: str = ""  # lagcl format: train interactions
  test_file: str = ""  # lagcl format: test interactions
  metadata_dir: str = ""  # lagcl format: folder with movies.dat/users.dat or u.item/u.user
  augment_file: str = ""  # LLM-augmented train interactions (paper format), added to train
  like_threshold: int = 4  # raw MovieLens: rating >= this is +1, below is -1
  test_fraction: float = 0.2  # raw MovieLens: per user, ceil(fraction * ratings) go to test
  valid_fraction: float = 0.1  # per user, carved from train for model selection
  split_seed: int = 0
  skip_bad_rows: bool = False  # count and skip malformed rows instead of failing
  download: bool = True  # fetch missing raw MovieLens archives from GroupLens
  groups: str = "none"  # none | files | metadata
  user_group_file: str = ""  # `id,group` lines (groups=files)
  item_group_file: str = ""
  graph_edges: str = "all"  # all: every rated train item is an edge; positive: +1 only

  # --- Model --------------------------------------------------------------------------------
  embedding_dim: int = 64
  num_layers: int = 2
  cl_layer: int = 1  # l*: the layer whose output is the contrastive view
  eps: float = 0.2  # XSimGCL noise magnitude; 0 turns perturbation off (LightGCN)
  cl_weight: float = 0.17  # lambda; 0 turns contrastive learning off
  tau: float = 1.0  # positive temperature; tau_easy/tau_hard derive from it
  tau_easy_scale: float = 0.25
  tau_hard_scale: float = 0.1
  tau_floor: float = 0.1
  hard_weight: float = 2.0  # w_hard for both the BPR hard negative and InfoNCE hard negatives
  hard_negatives_from_dislikes: bool = False  # draw BPR hard negatives from the user's -1 items
  propagation_kernel: str = "auto"  # auto | segment_sum | scipy

  # --- Training -----------------------------------------------------------------------------
  seed: int = 0
  learning_rate: float = 0.0035
  batch_size: int = 1024
  reg: float = 1e-4
  num_epochs: int = 20
  patience: int = 5  # epochs without validation improvement before stopping; 0 disables
  select_metric: str = "valid/ndcg@20"
  retrain_on_full: bool = False  # after selection, retrain on train+valid for the best #epochs
  checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends only
  num_devices: int = 0  # 0: all local devices

  # --- Evaluation ---------------------------------------------------------------------------
  top_k: tuple[int, ...] = (10, 20)
  eval_batch_size: int = 1024
  num_recommendations: int = 20  # top-K written to recommendations.tsv

  @property
  def tau_easy(self) -> float:
    return max(self.tau * self.tau_easy_scale, self.tau_floor)

  @property
  def tau_hard(self) -> float:
    return max(self.tau * self.tau_hard_scale, self.tau_floor)

  @property
  def tau_positive(self) -> float:
    return max(self.tau, self.tau_floor)

  @property
  def uses_groups(self) -> bool:
    return self.groups != "none"

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)


def config_from_dict(values: dict, base: Optional[Config] = None) -> Config:
  """Builds a Config from a dict (e.g. a saved config.json), ignoring unknown keys."""
  base = base or Config()
  names = {f.name for f in dataclasses.fields(Config)}
  clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
  return dataclasses.replace(base, **clean)

"""The run configuration: one flat, frozen dataclass.

Every field is also an absl flag of the same name (see `lagcl_jax.flags`), so a flagfile in
`configs/` is simply a list of `--field=value` lines.
"""

import dataclasses
from typing import Optional


MODELS = ("lightgcn", "simgcl", "xsimgcl", "mostpop")
READOUTS = ("layers_1_to_L", "layers_0_to_L")


def setting(default, help_text: str):
  """A dataclass field with the help text of its absl flag (see `lagcl_jax.flags`)."""
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Config:
  """All settings of a run. Defaults follow the LAGCL4Rec paper's code."""

  # --- Data ---------------------------------------------------------------------------------
  dataset: str = setting("ml-100k", "ml-100k | ml-1m | lagcl (the paper's `user item label` files)")
  data_dir: str = setting(
      "../shared/data/ml-100k", "raw MovieLens files (or where to download them)")
  train_file: str = setting("", "lagcl format: train interactions")
  test_file: str = setting("", "lagcl format: test interactions")
  metadata_dir: str = setting("", "lagcl format: folder with movies.dat/users.dat or u.item/u.user")
  augment_file: str = setting("", "LLM-augmented train interactions (paper format), added to train")
  like_threshold: int = setting(4, "raw MovieLens: rating >= this is +1, below is -1")
  test_fraction: float = setting(
      0.2, "raw MovieLens: per user, ceil(fraction * ratings) go to test")
  valid_fraction: float = setting(0.1, "per user, carved from train for model selection")
  split_seed: int = setting(0, "seed of the per-user random test/validation split")
  skip_bad_rows: bool = setting(False, "count and skip malformed rows instead of failing")
  download: bool = setting(True, "fetch missing raw MovieLens archives from GroupLens")
  groups: str = setting("none", "none | files | metadata")
  user_group_file: str = setting("", "`id,group` lines or grouping JSON for users (groups=files)")
  item_group_file: str = setting("", "`id,group` lines or grouping JSON for items (groups=files)")
  graph_edges: str = setting(
      "positive", "positive: +1 train items are edges; all: every rated train item (+1 and -1)")

  # --- Model --------------------------------------------------------------------------------
  model: str = setting(
      "xsimgcl",
      "lightgcn (He et al. 2020: no noise, no contrast; --eps/--cl_weight unused) | simgcl (Yu et "
      "al. 2022: InfoNCE between two extra noisy passes) | xsimgcl (Yu et al. 2023: noisy pass, "
      "contrast with its layer l*; LAGCL with --groups) | mostpop (item popularity, no training)")
  readout: str = setting(
      "layers_1_to_L", "final embedding = mean of layers 1..L (XSimGCL, SimGCL) or of layers "
      "0..L (layers_0_to_L: LightGCN, ego embedding included)")
  init: str = setting("xavier", "embedding initialisation: xavier (uniform) | normal (std 0.1, "
                      "LightGCN's PyTorch reference)")
  embedding_dim: int = setting(64, "embedding size d")
  num_layers: int = setting(2, "number of propagation layers")
  cl_layer: int = setting(1, "l*: the layer whose output is the contrastive view")
  eps: float = setting(0.2, "SimGCL/XSimGCL noise magnitude; 0 turns perturbation off")
  cl_weight: float = setting(0.17, "lambda; 0 turns contrastive learning off")
  cl_warmup_steps: int = setting(
      0, "lambda rises linearly from 0 to --cl_weight over this many training steps (0: none); "
      "lets BPR grow the embeddings before the cosine InfoNCE, whose gradient scales with "
      "1/(tau |e|), can dominate (the paper's sharp group temperatures collapse without it)")
  tau: float = setting(1.0, "positive temperature; tau_easy/tau_hard derive from it")
  tau_easy_scale: float = setting(
      0.25, "tau_easy = max(tau * this, tau_floor): temperature of other-group negatives")
  tau_hard_scale: float = setting(
      0.1, "tau_hard = max(tau * this, tau_floor): temperature of same-group negatives")
  tau_floor: float = setting(0.1, "lower bound of every InfoNCE temperature")
  hard_weight: float = setting(
      2.0, "w_hard for both the BPR hard negative and InfoNCE hard negatives")
  hard_negatives_from_dislikes: bool = setting(
      False, "draw BPR hard negatives from the user's -1 items")
  propagation_kernel: str = setting("auto", "auto | segment_sum | scipy")

  # --- Training -----------------------------------------------------------------------------
  seed: int = setting(0, "seed of initialisation, noise and negative sampling")
  learning_rate: float = setting(0.0035, "Adam learning rate")
  batch_size: int = setting(
      1024, "training rows (positive interactions) per step, over all devices")
  reg: float = setting(1e-4, "L2 regularisation weight on the batch embeddings")
  reg_form: str = setting(
      "propagated", "propagated: reg * Σ ||.||² of the final user and positive embeddings / B "
      "(XSimGCL's code); ego: reg * 0.5 * Σ ||.||² of the layer-0 user, positive and negative "
      "embeddings / B (LightGCN)")
  num_epochs: int = setting(20, "maximum number of training epochs")
  patience: int = setting(5, "epochs without validation improvement before stopping; 0 disables")
  min_epochs: int = setting(
      0, "epochs before this one are never selected and do not count towards --patience (lets "
      "contrastive models pass their early validation dip)")
  select_metric: str = setting(
      "valid/ndcg@20", "validation metric that picks the best epoch (never a test metric)")
  retrain_on_full: bool = setting(
      False, "after selection, retrain on train+valid for the best #epochs")
  checkpoint_every_steps: int = setting(0, "0: checkpoint at epoch ends only")
  num_devices: int = setting(0, "0: all local devices")

  # --- Evaluation ---------------------------------------------------------------------------
  top_k: tuple[int, ...] = setting((10, 20), "cut-offs K of the ranking metrics")
  test_mask_valid: bool = setting(
      True, "at test, mask train and valid items; False (LightGCN++ protocol): mask only train "
      "items, validation items are then neither masked nor relevant")
  eval_batch_size: int = setting(1024, "users scored per evaluation batch (bounds memory)")
  num_recommendations: int = setting(20, "top-K written to recommendations.tsv")

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

  @property
  def contrastive(self) -> bool:
    """Whether training adds the InfoNCE term (SimGCL or XSimGCL with lambda > 0)."""
    return self.model in ("simgcl", "xsimgcl") and self.cl_weight > 0

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)


def _check(condition: bool, flag: str, value, expected: str) -> None:
  if not condition:
    raise ValueError(f"--{flag}={value!r}: expected {expected}")


def validate(config: Config) -> None:
  """Every check of a config's values, in one place; run before a run writes anything.

  Raises:
    ValueError naming the flag, its value and what is expected.
  """
  c = config
  _check(c.model in MODELS, "model", c.model, " | ".join(MODELS))
  _check(c.readout in READOUTS, "readout", c.readout, " | ".join(READOUTS))
  _check(c.init in ("xavier", "normal"), "init", c.init, "xavier or normal")
  _check(c.reg_form in ("propagated", "ego"), "reg_form", c.reg_form, "propagated or ego")
  _check(c.graph_edges in ("positive", "all"), "graph_edges", c.graph_edges, "positive or all")
  _check(c.groups in ("none", "files", "metadata"), "groups", c.groups,
         "none, files or metadata")
  _check(c.propagation_kernel in ("auto", "segment_sum", "scipy"), "propagation_kernel",
         c.propagation_kernel, "auto, segment_sum or scipy")
  _check(c.embedding_dim > 0, "embedding_dim", c.embedding_dim, "> 0")
  _check(c.num_layers >= 1, "num_layers", c.num_layers, ">= 1")
  _check(c.model != "xsimgcl" or c.cl_weight == 0 or 1 <= c.cl_layer <= c.num_layers, "cl_layer", c.cl_layer,
         f"1 <= cl_layer <= --num_layers={c.num_layers}")
  _check(c.eps >= 0, "eps", c.eps, ">= 0")
  _check(c.cl_weight >= 0, "cl_weight", c.cl_weight, ">= 0")
  _check(c.cl_warmup_steps >= 0, "cl_warmup_steps", c.cl_warmup_steps, ">= 0")
  for name in ("tau", "tau_easy_scale", "tau_hard_scale", "tau_floor", "hard_weight"):
    _check(getattr(c, name) > 0, name, getattr(c, name), "> 0")
  _check(c.learning_rate > 0, "learning_rate", c.learning_rate, "> 0")
  _check(c.batch_size > 0, "batch_size", c.batch_size, "> 0")
  _check(c.reg >= 0, "reg", c.reg, ">= 0")
  _check(c.num_epochs >= 0, "num_epochs", c.num_epochs, ">= 0")
  _check(c.patience >= 0, "patience", c.patience, ">= 0")
  _check(0 <= c.min_epochs <= max(c.num_epochs, 1), "min_epochs", c.min_epochs,
         f"0 <= min_epochs <= --num_epochs={c.num_epochs}")
  _check(c.checkpoint_every_steps >= 0, "checkpoint_every_steps", c.checkpoint_every_steps,
         ">= 0")
  _check(c.num_devices >= 0, "num_devices", c.num_devices, ">= 0 (0: all local devices)")
  _check(0 <= c.valid_fraction < 1, "valid_fraction", c.valid_fraction, "0 <= fraction < 1")
  _check(0 <= c.test_fraction < 1, "test_fraction", c.test_fraction, "0 <= fraction < 1")
  _check(len(c.top_k) > 0 and all(k > 0 for k in c.top_k), "top_k", c.top_k,
         "positive cut-offs")
  _check(c.eval_batch_size > 0, "eval_batch_size", c.eval_batch_size, "> 0")
  _check(c.num_recommendations > 0, "num_recommendations", c.num_recommendations, "> 0")
  selectable = [f"valid/{name}@{k}" for k in c.top_k
                for name in ("recall", "ndcg", "precision", "hit")]
  _check(c.select_metric in selectable, "select_metric", c.select_metric,
         f"a validation metric at one of --top_k, i.e. one of {selectable}")


def config_from_dict(values: dict, base: Optional[Config] = None) -> Config:
  """Builds a Config from a dict (e.g. a saved config.json), ignoring unknown keys."""
  base = base or Config()
  names = {f.name for f in dataclasses.fields(Config)}
  clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
  return dataclasses.replace(base, **clean)

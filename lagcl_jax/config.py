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
  dataset: str = setting(
      "ml-100k", "ml-100k | ml-1m (raw MovieLens) | lagcl (the paper's `user item label` "
      "files) | ratings (delimited interaction files) | adjacency (`uid iid iid ...` lines) | "
      "recbole (RecBole atomic .inter/.item/.user files)")
  data_dir: str = setting(
      "../shared/data/ml-100k", "raw MovieLens files (or where to download them)")
  train_file: str = setting(
      "", "lagcl/ratings/adjacency/recbole: the train interactions, or every interaction when "
      "there is no --test_file (then split by --split)")
  valid_file: str = setting(
      "", "validation interactions, used as given; empty: carve --valid_fraction from train")
  test_file: str = setting("", "test interactions; empty: split --train_file by --split")
  metadata_dir: str = setting("", "lagcl format: folder with movies.dat/users.dat or u.item/u.user")
  item_file: str = setting(
      "", "item table with a header (ratings, lagcl, adjacency: delimiter sniffed; recbole: "
      "the .item file, default <name>.item beside --train_file); every column but the id "
      "becomes item metadata")
  user_file: str = setting("", "user table with a header, like --item_file (recbole: .user)")
  item_id_col: str = setting("", "--item_file's id column (name or 0-based position; empty: "
                             "recbole item_id, else the first column)")
  user_id_col: str = setting("", "--user_file's id column (empty: recbole user_id, else the "
                             "first column)")
  item_title_col: str = setting(
      "", "--item_file column shown as the item's title (empty: the first column named like a "
      "title or a name, e.g. WineName, name, movie_title)")
  item_genre_col: str = setting(
      "", "--item_file list-valued column used as the item's genres (e.g. for --groups="
      "metadata); empty: a column named genre(s)")
  delimiter: str = setting(
      "", "ratings: field separator (a character, tab, comma, semicolon, pipe, whitespace); "
      "empty: sniffed from the first line (tab, ::, comma, semicolon, pipe, else whitespace)")
  header: str = setting(
      "auto", "ratings: yes | no | auto (a header when a --*_col names a column, or when the "
      "first row has text where the second has numbers)")
  encoding: str = setting("utf-8", "text encoding of ratings/adjacency/recbole/item files")
  user_col: str = setting("", "ratings/recbole: user column, name or 0-based position "
                          "(empty: 0, recbole user_id)")
  item_col: str = setting("", "ratings/recbole: item column (empty: 1, recbole item_id)")
  rating_col: str = setting("", "ratings/recbole: rating column (empty: 2, recbole rating)")
  time_col: str = setting("", "ratings/recbole: time column, numbers or ISO dates (empty: none, "
                          "recbole timestamp); needed by the time --split rules")
  implicit: bool = setting(
      False, "ratings/recbole: no rating, every row is a +1 interaction")
  augment_file: str = setting("", "LLM-augmented train interactions (paper format), added to train")
  like_threshold: float = setting(
      4.0, "MovieLens/ratings/recbole: rating >= this is +1, below is -1")
  split: str = setting(
      "random", "how one file is split into train/test (and validation carved): random | "
      "leave_last_out | temporal_fraction | global_time (see lagcl_jax/splits.py)")
  test_fraction: float = setting(
      0.2, "without --test_file: per user, ceil(fraction * rows) go to test (global_time: of "
      "all rows)")
  valid_fraction: float = setting(
      0.1, "without --valid_file: per user, carved from train for model selection")
  split_seed: int = setting(0, "seed of the per-user random test/validation split")
  skip_bad_rows: bool = setting(False, "count and skip malformed rows instead of failing")
  max_bad_fraction: float = setting(
      0.01, "with --skip_bad_rows: stop when more than this fraction of a file's rows is bad")
  download: bool = setting(True, "fetch missing raw MovieLens archives from GroupLens")
  groups: str = setting("none", "none | files | metadata")
  user_group_file: str = setting("", "`id,group` lines or grouping JSON for users (groups=files)")
  item_group_file: str = setting("", "`id,group` lines or grouping JSON for items (groups=files)")
  min_group_coverage: float = setting(
      0.5, "--groups=files: stop when a group file covers less than this fraction of the "
      "data's users or items")
  allow_degenerate_groups: bool = setting(
      False, "with --groups on, allow a grouping where every user (or item) is in one group")
  group_losses: str = setting(
      "both", "with --groups on, which losses use them: both | infonce (hard in-batch negatives) "
      "| bpr (the extra hard negative)")
  shuffle_groups: bool = setting(
      False, "control: permute the group labels over users and over items (seeded by --seed), "
      "keeping every group's size: random groups of the same sizes")
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
  propagation_kernel: str = setting("auto", "auto | segment_sum | bcoo | scipy")

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
  shard_propagation: bool = setting(
      True, "with more than one training device, each device propagates only its block of the "
      "graph's rows and the blocks are all-gathered (False: every device propagates the whole "
      "graph); one device, and evaluation, always propagate the whole graph")

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
  def groups_in_infonce(self) -> bool:
    """Whether the InfoNCE treats same-group negatives as hard."""
    return self.uses_groups and self.group_losses in ("both", "infonce")

  @property
  def groups_in_bpr(self) -> bool:
    """Whether BPR adds a (weighted) same-group hard negative."""
    return self.uses_groups and self.group_losses in ("both", "bpr")

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
  _validate_data(c)
  _check(c.model in MODELS, "model", c.model, " | ".join(MODELS))
  _check(c.readout in READOUTS, "readout", c.readout, " | ".join(READOUTS))
  _check(c.init in ("xavier", "normal"), "init", c.init, "xavier or normal")
  _check(c.reg_form in ("propagated", "ego"), "reg_form", c.reg_form, "propagated or ego")
  _check(c.group_losses in ("both", "infonce", "bpr"), "group_losses", c.group_losses,
         "both, infonce or bpr")
  _check(not c.shuffle_groups or c.uses_groups, "shuffle_groups", c.shuffle_groups,
         "--groups=files or metadata (there are no groups to shuffle)")
  _check(c.graph_edges in ("positive", "all"), "graph_edges", c.graph_edges, "positive or all")
  _check(c.groups in ("none", "files", "metadata"), "groups", c.groups,
         "none, files or metadata")
  _check(c.propagation_kernel in ("auto", "segment_sum", "bcoo", "scipy"), "propagation_kernel",
         c.propagation_kernel, "auto, segment_sum, bcoo or scipy")
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


DATASETS = ("ml-100k", "ml-1m", "lagcl", "ratings", "adjacency", "recbole")
SPLITS = ("random", "leave_last_out", "temporal_fraction", "global_time")


def _validate_data(c: Config) -> None:
  """The Data section's checks (files are checked when read)."""
  _check(c.dataset in DATASETS, "dataset", c.dataset, f"one of {', '.join(DATASETS)}")
  _check(c.split in SPLITS, "split", c.split, f"one of {', '.join(SPLITS)}")
  _check(c.header in ("auto", "yes", "no"), "header", c.header, "auto, yes or no")
  _check(0 <= c.max_bad_fraction <= 1, "max_bad_fraction", c.max_bad_fraction,
         "0 <= fraction <= 1")
  _check(0 <= c.min_group_coverage <= 1, "min_group_coverage", c.min_group_coverage,
         "0 <= fraction <= 1")
  files = c.dataset in ("lagcl", "ratings", "adjacency", "recbole")
  _check(not files or bool(c.train_file), "train_file", c.train_file,
         f"a file: --dataset={c.dataset} reads --train_file (and --valid_file, --test_file)")
  _check(files or not (c.train_file or c.valid_file or c.test_file), "train_file",
         c.train_file or c.valid_file or c.test_file,
         f"nothing: --dataset={c.dataset} reads --data_dir; use --dataset=ratings to read "
         "your own files")
  _check(not c.implicit or c.dataset in ("ratings", "recbole"), "implicit", c.implicit,
         "False unless --dataset is ratings or recbole")
  if c.split in SPLITS[1:] and not (c.test_file and c.valid_file):
    timed = (c.dataset in ("ml-100k", "ml-1m", "recbole")
             or (c.dataset == "ratings" and bool(c.time_col)))
    _check(timed, "split", c.split,
           "random: the time rules need timestamps"
           + (", so set --time_col" if c.dataset == "ratings"
              else f", and --dataset={c.dataset} has none"))


def config_from_dict(values: dict, base: Optional[Config] = None) -> Config:
  """Builds a Config from a dict (e.g. a saved config.json), ignoring unknown keys."""
  base = base or Config()
  names = {f.name for f in dataclasses.fields(Config)}
  clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
  return dataclasses.replace(base, **clean)

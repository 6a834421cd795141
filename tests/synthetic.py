"""Small synthetic data sets for the model, sampler, evaluation and training tests."""

import os
from typing import Optional

import numpy as np

from lagcl_jax.config import Config
from lagcl_jax.data_types import Dataset, Interactions

NUM_ITEM_GROUPS = 3
NUM_USER_GROUPS = 2


def interactions(users, items, labels) -> Interactions:
  return Interactions(np.asarray(users, np.int32), np.asarray(items, np.int32),
                      np.asarray(labels, np.int8))


def random_dataset(num_users: int = 30, num_items: int = 40, per_user: int = 12,
                   seed: int = 0) -> Dataset:
  """Each user rates `per_user` distinct random items (label ±1), split train/valid/test by row.

  About 60% of a user's rows go to train, 15% to valid and 25% to test; every user keeps at
  least one train positive. A few users get no label-1 valid or test item, so evaluation must
  skip them.
  """
  rng = np.random.default_rng(seed)
  parts = {"train": [], "valid": [], "test": []}
  for user in range(num_users):
    items = rng.choice(num_items, per_user, replace=False)
    labels = np.where(rng.random(per_user) < 0.7, 1, -1)
    labels[0] = 1  # A guaranteed train positive.
    split = rng.choice(["train", "valid", "test"], per_user, p=[0.6, 0.15, 0.25])
    split[0] = "train"
    if user % 7 == 3:  # No label-1 item in valid or test for these users.
      labels[split != "train"] = -1
    for name in parts:
      chosen = split == name
      parts[name].append(interactions(np.full(chosen.sum(), user), items[chosen],
                                      labels[chosen]))
  splits = {name: Interactions.concatenate(p) for name, p in parts.items()}
  return Dataset(
      name="synthetic", user_ids=np.array([str(u + 1) for u in range(num_users)]),
      item_ids=np.array([str(i + 1) for i in range(num_items)]), train=splits["train"],
      valid=splits["valid"], test=splits["test"], user_meta=[{}] * num_users,
      item_meta=[{}] * num_items, summary={})


def write_paper_files(directory: str, num_users: int = 40, num_items: int = 50,
                      per_user: int = 14, seed: int = 0) -> dict[str, str]:
  """Writes train.txt / test.txt (`user\\titem\\tlabel`) and `id,group` files for both kinds.

  Users prefer items of "their" group (user % NUM_ITEM_GROUPS == item % NUM_ITEM_GROUPS), so a
  model can learn something. Raw ids are 1-based. Returns the paths by name.
  """
  rng = np.random.default_rng(seed)
  train_lines, test_lines = [], []
  for user in range(num_users):
    liked = np.flatnonzero(np.arange(num_items) % NUM_ITEM_GROUPS == user % NUM_ITEM_GROUPS)
    chosen = np.concatenate([rng.choice(liked, per_user // 2, replace=False),
                             rng.choice(num_items, per_user, replace=False)])
    chosen = np.unique(chosen)
    rng.shuffle(chosen)
    for position, item in enumerate(chosen):
      label = 1 if item in liked or rng.random() < 0.3 else -1
      line = f"{user + 1}\t{item + 1}\t{label}\n"
      (test_lines if position % 4 == 3 else train_lines).append(line)
  paths = {name: os.path.join(directory, name) for name in
           ("train.txt", "test.txt", "user_group.txt", "item_group.txt")}
  with open(paths["train.txt"], "w") as f:
    f.writelines(train_lines)
  with open(paths["test.txt"], "w") as f:
    f.writelines(test_lines)
  with open(paths["user_group.txt"], "w") as f:
    f.writelines(f"{u + 1},{u % NUM_USER_GROUPS}\n" for u in range(num_users))
  with open(paths["item_group.txt"], "w") as f:
    f.writelines(f"{i + 1},{i % NUM_ITEM_GROUPS}\n" for i in range(num_items))
  return paths


def tiny_config(paths: dict[str, str], groups: bool, **overrides) -> Config:
  """A config that trains on `write_paper_files` output in a second or two."""
  group_flags = (dict(groups="files", user_group_file=paths["user_group.txt"],
                      item_group_file=paths["item_group.txt"]) if groups else {})
  config = Config(
      dataset="lagcl", train_file=paths["train.txt"], test_file=paths["test.txt"],
      embedding_dim=8, batch_size=64, eval_batch_size=16, num_epochs=2, patience=0,
      propagation_kernel="segment_sum", num_devices=1, **group_flags)
  return config.replace(**overrides)


def flag_args(config: Config, defaults: Optional[Config] = None) -> list[str]:
  """The `--name=value` flags that differ from `defaults` (for the launch scripts)."""
  defaults = defaults or Config()
  args = []
  for name, value in vars(config).items():
    if value == getattr(defaults, name):
      continue
    if isinstance(value, bool):
      args.append(f"--{'' if value else 'no'}{name}")
    elif isinstance(value, tuple):
      args.append(f"--{name}={','.join(map(str, value))}")
    else:
      args.append(f"--{name}={value}")
  return args

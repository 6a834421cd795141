"""What a run writes and prints: atomic JSON files, the metrics history, recommendations, the
training curve, progress bars and one-line records."""

import json
import logging
import os
import sys
from typing import Any

import numpy as np
import tqdm

from lagcl_jax import files
from lagcl_jax.data_types import Dataset
from lagcl_jax.files import atomic_write_text  # pylint: disable=unused-import (also for llm/)


def write_json(path: str, value: Any) -> None:
  atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=_plain) + "\n")


def write_per_user_metrics(path: str, user_ids: np.ndarray,
                           per_user: dict[str, np.ndarray]) -> None:
  """Per-user metrics as an .npz (e.g. per_user_test.npz): `user_ids` (raw ids, as str) and one
  float array per metric key ("ndcg@20", ...) in the same order; written atomically."""
  with files.atomic_writer(path) as f:
    np.savez(f, user_ids=np.asarray(user_ids).astype(str), **per_user)


def _plain(value):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, (tuple, np.ndarray)):
    return list(value)
  raise TypeError(f"not JSON serialisable: {type(value)}")


def write_history(workdir: str, history: list[dict]) -> None:
  """The per-epoch records as `metrics.jsonl` (rewritten whole, so a resume never duplicates)."""
  atomic_write_text(os.path.join(workdir, "metrics.jsonl"),
                    "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def format_record(record: dict) -> str:
  return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in record.items())


def progress_bar(total: int, description: str, initial: int = 0, unit: str = "it"):
  """A progress bar with throughput on stderr when stderr is a terminal; otherwise (a log file,
  a pipe) nothing, so logs hold only the run's lines (e.g. one record per epoch)."""
  return tqdm.tqdm(total=total, initial=initial, desc=description, unit=unit, leave=False,
                   dynamic_ncols=True, mininterval=1.0, disable=not sys.stderr.isatty())


def write_recommendations(path: str, dataset: Dataset, items: np.ndarray,
                          scores: np.ndarray) -> None:
  """Every user's ranked items ([num_users, k] from `evaluation.top_k_items`) as a
  `user, rank, item, score` TSV with raw ids; masked (-inf) slots are left out."""
  lines = ["user\trank\titem\tscore\n"]
  for u, uid in enumerate(dataset.user_ids):
    lines.extend(f"{uid}\t{r + 1}\t{dataset.item_ids[i]}\t{s:.6f}\n"
                 for r, (i, s) in enumerate(zip(items[u], scores[u])) if np.isfinite(s))
  atomic_write_text(path, "".join(lines))


def plot_history(workdir: str, history: list[dict], select_metric: str) -> None:
  """`training_curve.png`: training loss and the selection metric per epoch."""
  if not history:
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  epochs = [r["epoch"] for r in history]
  fig, loss_axis = plt.subplots(figsize=(7, 4))
  loss_axis.plot(epochs, [r["train/loss"] for r in history], "b-o", label="train/loss")
  loss_axis.set_xlabel("epoch")
  loss_axis.set_ylabel("train loss", color="b")
  if all(select_metric in r for r in history):
    metric_axis = loss_axis.twinx()
    metric_axis.plot(epochs, [r[select_metric] for r in history], "r-s", label=select_metric)
    metric_axis.set_ylabel(select_metric, color="r")
  fig.tight_layout()
  with files.atomic_writer(os.path.join(workdir, "training_curve.png")) as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


_NOISY_LIBRARIES = ("orbax", "jax", "etils", "matplotlib", "transformers", "huggingface_hub")


class _DropLibraryInfo(logging.Filter):
  """Drops INFO records that libraries (orbax, jax, matplotlib, ...) log through absl."""

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = any(f"{os.sep}{name}{os.sep}" in record.pathname for name in _NOISY_LIBRARIES)
    return record.levelno >= logging.WARNING or not noisy


def quiet_library_logs() -> None:
  """The log policy of every launch script (call it first in `main`): the run's own INFO lines,
  the libraries' warnings and errors only; progress bars only on a terminal (`progress_bar`)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
  logging.getLogger().addFilter(_DropLibraryInfo())

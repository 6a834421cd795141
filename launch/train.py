r"""Trains and evaluates a LAGCL4Rec / XSimGCL / LightGCN model.

  python launch/train.py --flagfile=configs/ml100k_lagcl.cfg --workdir=runs/ml100k_lagcl

Rerunning the same command resumes an interrupted run from its work directory.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lagcl_jax import flags as config_flags  # pylint: disable=g-import-not-at-top
from lagcl_jax import reporting  # pylint: disable=g-import-not-at-top
from lagcl_jax import train  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (checkpoints, metrics).",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  reporting.quiet_library_logs()
  config = config_flags.config_from_flags()
  os.makedirs(_WORKDIR.value, exist_ok=True)
  reporting.atomic_write_text(os.path.join(_WORKDIR.value, "flags.txt"),
                              config_flags.flags_as_flagfile())
  logging.info("Config: %s", config)
  train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)

r"""Restores a run's selected checkpoint and recomputes its validation and test metrics.

  python launch/evaluate.py --workdir=runs/ml100k_lagcl
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lagcl_jax import inference  # pylint: disable=g-import-not-at-top
from lagcl_jax import reporting  # pylint: disable=g-import-not-at-top
from lagcl_jax import train  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a training run.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the run's --data_dir.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the metrics JSON here as well.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  overrides = {"data_dir": _DATA_DIR.value} if _DATA_DIR.value else {}
  run = inference.load_run(_WORKDIR.value, **overrides)
  metrics = train.evaluate_params(run.setup, run.params)
  print(json.dumps(metrics, indent=2, sort_keys=True))
  if _OUTPUT.value:
    reporting.write_json(_OUTPUT.value, metrics)


if __name__ == "__main__":
  app.run(main)

r"""Trains and evaluates a LAGCL4Rec / XSimGCL / SimGCL / LightGCN model, or MostPop (--model).

  python launch/train.py --flagfile=configs/ml100k_lagcl.cfg --workdir=runs/ml100k_lagcl

Rerunning the same command resumes an interrupted run from its work directory. Several hosts:
run it on each with --coordinator_address=HOST:PORT (process 0's), --num_processes and
--process_id (see jax.distributed.initialize).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lagcl_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from lagcl_jax import flags as config_flags  # pylint: disable=g-import-not-at-top
from lagcl_jax import reporting  # pylint: disable=g-import-not-at-top
from lagcl_jax import train  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (checkpoints, metrics).",
                               required=True)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host: HOST:PORT of process 0; with it, jax.distributed.initialize runs first.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _COORDINATOR_ADDRESS.value:  # Before anything touches a JAX backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPU: NCCL.
    jax.distributed.initialize(coordinator_address=_COORDINATOR_ADDRESS.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None:
    raise app.UsageError("--num_processes/--process_id need --coordinator_address.")
  reporting.quiet_library_logs()
  config = config_flags.config_from_flags()
  try:
    config_lib.validate(config)  # Before anything is written.
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  os.makedirs(_WORKDIR.value, exist_ok=True)
  if jax.process_index() == 0:  # Several processes share the work directory.
    reporting.atomic_write_text(os.path.join(_WORKDIR.value, "flags.txt"),
                                config_flags.flags_as_flagfile())
  logging.info("Config: %s", config)
  train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)

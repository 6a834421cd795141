r"""Benchmarks training and evaluation speed and memory; writes JSON and prints a table.

  python launch/benchmark.py --flagfile=configs/ml1m_lagcl.cfg --output=bench.json
  python launch/benchmark.py --flagfile=configs/ml1m_lagcl.cfg --output=bench.json --scale

See tools/benchmark.py for what each figure means; every `benchmark.Options` field is a flag.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from lagcl_jax import flags as config_flags
from lagcl_jax import reporting

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import benchmark  # pylint: disable=g-import-not-at-top

config_flags.define_flags(benchmark.Options)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON result.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  reporting.quiet_library_logs()
  options = config_flags.from_flags(benchmark.Options)
  result = benchmark.run(config_flags.config_from_flags(), options, log=logging.info)
  result["flags"] = config_flags.flags_as_flagfile()
  reporting.write_json(_OUTPUT.value, result)
  print(benchmark.format_table(result))


if __name__ == "__main__":
  app.run(main)

r"""Restores a run's selected checkpoint and recomputes its validation and test metrics.

Config flags given here (e.g. --data_dir, or a --flagfile) override the run's saved config.

  python launch/evaluate.py --workdir=runs/ml100k_lagcl
  python launch/evaluate.py --workdir=runs/ml100k_lagcl --rerank --llm_dir=runs/llm_ml100k \
      --max_users=50

With --rerank, the LLM also rescores the top-N (see launch/llm.py and its flags) and metrics
are reported without and with reranking, alpha chosen on validation.
"""

import json

from absl import app
from absl import flags

from lagcl_jax import config as config_lib
from lagcl_jax import flags as config_flags
from lagcl_jax import inference
from lagcl_jax import reporting
from lagcl_jax import train
from lagcl_jax.llm import flags as llm_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a training run.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Write the metrics JSON here as well.")
_RERANK = flags.DEFINE_boolean("rerank", False, "Also rerank the top-N with the LLM.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  reporting.quiet_library_logs()
  # Config flags given explicitly (e.g. data paths on another machine) override the run's.
  run = inference.load_run(_WORKDIR.value, **config_flags.overrides_from_flags(config_lib.Config))
  metrics = train.evaluate_params(run.setup, run.params)
  if _RERANK.value:
    from lagcl_jax.llm import stages  # pylint: disable=g-import-not-at-top
    result, stats = stages.rerank_for_run(run, llm_flags.options_from_flags())
    if result is not None:
      metrics["rerank"] = result.metrics
      print(stages.format_rerank(result.metrics))
    print(stats.summary_line())
  print(json.dumps(metrics, indent=2, sort_keys=True))
  if _OUTPUT.value:
    reporting.write_json(_OUTPUT.value, metrics)


if __name__ == "__main__":
  app.run(main)

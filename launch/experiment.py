r"""Runs an experiment (model configs x seeds, each with launch/train.py, reranked by the LLM
where a row says so) and writes its tables.

  python launch/experiment.py --flagfile=configs/experiments/ml100k.cfg
  python launch/experiment.py --flagfile=configs/experiments/ml100k.cfg --dry_run
  python launch/experiment.py --flagfile=configs/experiments/ml1m.cfg --shard_index=0 --num_shards=4
  python launch/experiment.py --flagfile=configs/experiments/ml1m.cfg --report_only
  python launch/experiment.py --flagfile=configs/experiments/ml100k_llm.cfg  # with LLM reranks

The config format, the folder layout and what results.md / results.json hold are described in
tools/experiments.py. Rerunning skips finished runs and resumes interrupted ones; the exit status
is the number of failed runs.
"""

import os
import sys
from typing import Optional

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import experiments  # pylint: disable=g-import-not-at-top

_ROWS = flags.DEFINE_multi_string(
    "row", [], "NAME: ARGS, one per row: model flagfiles and launch/train.py flags; the token "
    "--llm_rerank makes the row's runs reranked by the LLM.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds of every row (--seed of launch/train.py).")
_BASELINES = flags.DEFINE_list("baselines", [], "Rows the others are tested against.")
_NAME = flags.DEFINE_string("name", None, "Experiment name; default: the config file's name.")
_EXPERIMENT_DIR = flags.DEFINE_string("experiment_dir", None,
                                      "Experiment folder; default runs/experiments/NAME.")
_RUN_FLAGS = flags.DEFINE_multi_string(
    "run_flags", [], "launch/train.py flags appended to every run (after the row's own).")
_LLM_FLAGS = flags.DEFINE_multi_string(
    "llm_flags", [], "launch/llm.py flags of the reranked rows' reranks (e.g. "
    "--flagfile=configs/llm_ml100k.cfg); the runner adds --stage=rerank, --backbone_workdir and "
    "--rerank_dir.")
_LLM_BACKBONE = flags.DEFINE_string(
    "llm_backbone", None, "Row whose first-seed run the LLM stages (launch/llm.py --stage=all "
    "with --llm_flags) use as backbone to make the LLM outputs, before the first run needing "
    "them; rows name those outputs as {llm_dir}/augment.txt etc.")
_REUSE_RUNS_FROM = flags.DEFINE_list(
    "reuse_runs_from", [], "Other experiments' folders whose finished runs with the same "
    "launch/train.py arguments are used instead of training them again.")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "This machine's share of the runs.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Machines the runs are split over.")
_DRY_RUN = flags.DEFINE_boolean("dry_run", False, "List the runs with their state; train nothing.")
_REPORT_ONLY = flags.DEFINE_boolean(
    "report_only", False, "Train nothing; write the tables from the finished runs.")
_METRICS = flags.DEFINE_list("metrics", ["valid/ndcg@20", "test/recall@20", "test/ndcg@20"],
                             "Metrics of the main table of results.md.")
_SIGNIFICANCE_METRICS = flags.DEFINE_list(
    "significance_metrics", ["ndcg@20", "recall@20"],
    "Per-user test metrics (arrays of per_user_test.npz) tested against the baselines.")
_PLOT_METRIC = flags.DEFINE_string("plot_metric", "test/ndcg@20", "Metric of results.png.")
_PUBLISHED = flags.DEFINE_string(
    "published", None, "JSON of published numbers to show beside ours (see "
    "configs/experiments/lastfm_published.json).")
_HEATMAP = flags.DEFINE_list(
    "heatmap", [], "X_FLAG,Y_FLAG: heatmap.png of --heatmap_metric over two flags of the rows.")
_HEATMAP_METRIC = flags.DEFINE_string("heatmap_metric", "valid/ndcg@20", "Metric of heatmap.png.")


def config_name(argv: list[str]) -> Optional[str]:
  """The name of the last --flagfile on the command line, without folder and extension."""
  name = None
  for i, arg in enumerate(argv):
    if arg.startswith("--flagfile="):
      name = arg.split("=", 1)[1]
    elif arg == "--flagfile" and i + 1 < len(argv):
      name = argv[i + 1]
  return None if name is None else os.path.splitext(os.path.basename(name))[0]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    rows = [experiments.parse_row(spec) for spec in _ROWS.value]
    run_flags = [arg for text in _RUN_FLAGS.value
                 for arg in experiments.parse_args(text, f"--run_flags={text!r}")]
    llm_flags = [arg for text in _LLM_FLAGS.value
                 for arg in experiments.parse_args(text, f"--llm_flags={text!r}")]
    rows, llm_flags = experiments.resolve_llm_dir(rows, llm_flags)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    seeds = [int(seed) for seed in _SEEDS.value]
  except ValueError as e:
    raise app.UsageError(f"--seeds={','.join(_SEEDS.value)}: expected distinct integers") from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise app.UsageError(f"--seeds={','.join(_SEEDS.value)}: expected distinct integers")
  if len(_HEATMAP.value) not in (0, 2):
    raise app.UsageError(f"--heatmap={','.join(_HEATMAP.value)}: expected X_FLAG,Y_FLAG")
  name = _NAME.value or config_name(sys.argv) or (
      _EXPERIMENT_DIR.value and os.path.basename(os.path.normpath(_EXPERIMENT_DIR.value)))
  if not name:
    raise app.UsageError("Give --name or --experiment_dir when no --flagfile names the experiment.")
  experiment_dir = _EXPERIMENT_DIR.value or os.path.join("runs", "experiments", name)
  for folder in _REUSE_RUNS_FROM.value:
    if not os.path.isdir(folder):
      print(f"--reuse_runs_from={folder}: no such folder, no run reused from it.")
  reusable = experiments.finished_runs(_REUSE_RUNS_FROM.value)
  runs = experiments.plan_runs(rows, seeds, experiment_dir, run_flags, llm_flags, reusable)
  try:
    mine = experiments.shard(runs, _SHARD_INDEX.value, _NUM_SHARDS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  problems = (experiments.check_rows(rows, _BASELINES.value, run_flags, llm_flags,
                                     _LLM_BACKBONE.value)
              + experiments.changed_runs(mine))
  llm_outputs = (experiments.plan_llm_outputs(runs, _LLM_BACKBONE.value, experiment_dir, llm_flags)
                 if _LLM_BACKBONE.value and not problems else None)
  if _PUBLISHED.value and not os.path.isfile(_PUBLISHED.value):
    problems.append(f"--published={_PUBLISHED.value}: file not found")

  if _DRY_RUN.value:
    print(f"Experiment {name} in {experiment_dir}: {len(mine)} of {len(runs)} runs "
          f"(shard {_SHARD_INDEX.value} of {_NUM_SHARDS.value}).")
    if llm_outputs is not None:
      print(f"  LLM outputs (before the first run needing them, if any has work left): "
            f"launch/llm.py {' '.join(llm_outputs.args)}")
    for run in mine:
      print(f"  {experiments.status(run):11s} {run.row} seed {run.seed}: "
            f"launch/train.py {' '.join(run.args)}")
      if run.rerank_dir is not None:
        print(f"    {experiments.rerank_status(run):11s} rerank: "
              f"launch/llm.py {' '.join(run.rerank_args)}")
    for problem in problems:
      print(f"  PROBLEM: {problem}")
    return 0
  if problems:
    raise app.UsageError("\n".join(problems))

  failed = [] if _REPORT_ONLY.value else experiments.run_all(mine, llm_outputs=llm_outputs)
  heatmap = (*_HEATMAP.value, _HEATMAP_METRIC.value) if _HEATMAP.value else None
  experiments.write_report(name, experiment_dir, rows, runs, _BASELINES.value, _METRICS.value,
                           _SIGNIFICANCE_METRICS.value, _PLOT_METRIC.value, _PUBLISHED.value,
                           heatmap)
  print(f"Tables: {os.path.join(experiment_dir, 'results.md')}"
        + (f"; {len(failed)} run(s) failed: " + ", ".join(f"{r.row}/seed_{r.seed}" for r in failed)
           if failed else ""))
  return min(len(failed), 125)


if __name__ == "__main__":
  app.run(main)

r"""Runs one LLM stage of LAGCL4Rec (profiles, augmentation, semantic groups, reranking).

  python launch/llm.py --flagfile=configs/llm_ml100k.cfg --stage=profiles --max_users=50
  python launch/llm.py --flagfile=configs/llm_ml100k.cfg --stage=augment --max_users=50
  python launch/llm.py --flagfile=configs/llm_ml100k.cfg --stage=groups --max_users=50
  python launch/llm.py --flagfile=configs/llm_ml100k.cfg --stage=rerank --max_users=50
  python launch/llm.py --flagfile=configs/llm_ml100k.cfg --stage=throughput
  python launch/llm.py --flagfile=configs/llm_ml100k.cfg --stage=all

--stage=all runs profiles, augment and groups, then reranks --backbone_workdir when given.
Every LLM result is cached in --cache_dir: rerunning a stage makes no LLM call for work already
done, and an interrupted stage resumes. The data flags are those of launch/train.py.
"""

import time

from absl import app
from absl import flags

from lagcl_jax import flags as config_flags
from lagcl_jax import reporting
from lagcl_jax.llm import flags as llm_flags
from lagcl_jax.llm import stages

_STAGES = {"profiles": stages.run_profiles, "augment": stages.run_augment,
           "groups": stages.run_groups, "rerank": stages.run_rerank,
           "throughput": stages.run_throughput, "all": stages.run_all}
_STAGE = flags.DEFINE_enum("stage", None, list(_STAGES), "The LLM stage to run.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  reporting.quiet_library_logs()
  start = time.perf_counter()
  result = _STAGES[_STAGE.value](config_flags.config_from_flags(), llm_flags.options_from_flags())
  print(result if isinstance(result, str) else result.summary_line())
  print(f"{_STAGE.value}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  app.run(main)

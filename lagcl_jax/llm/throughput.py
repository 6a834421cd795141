"""Measured LLM throughput of the driver, without the cache: prompts per second for scoring
(Yes/No) and for greedy generation, per dtype and batch size, on the stages' own prompts."""

import time
from typing import Any

import numpy as np

from lagcl_jax.llm import driver as driver_lib
from lagcl_jax.llm import prompts


def measure(model: str, device: str, dtypes: tuple[str, ...], batch_sizes: tuple[int, ...],
            shared_prompts: list[str], distinct_prompts: list[str],
            generate_prompts: list[str], max_new_tokens: int,
            model_cache_dir: str, system_prompt: str) -> list[dict[str, Any]]:
  """One row per (operation, dtype, batch size): prompts, seconds, prompts/s, mean prompt
  tokens. Scoring is measured on prompts that share a user profile in runs (as in augment and
  rerank) and on prompts with nothing shared. The model is warmed up before timing."""
  rows = []
  for dtype in dtypes:
    driver = driver_lib.Driver(model, dtype, device, 1, system_prompt, model_cache_dir)
    score = lambda p: driver.score(p, [prompts.YES, prompts.NO])
    score(shared_prompts[:1])
    work = {
        "score (profile shared by 16)": (shared_prompts, score),
        "score (nothing shared)": (distinct_prompts, score),
        f"generate ({max_new_tokens} new tokens max)":
            (generate_prompts, lambda p: driver.generate(p, max_new_tokens)),
    }
    for operation, (texts, run) in work.items():
      mean_tokens = float(np.mean(driver.prompt_lengths(texts)))
      for batch_size in batch_sizes:
        driver.batch_size = batch_size
        start = time.perf_counter()
        run(texts)
        seconds = time.perf_counter() - start
        rows.append({"operation": operation, "dtype": driver.dtype, "device": driver.device,
                     "batch_size": batch_size, "prompts": len(texts),
                     "mean_prompt_tokens": mean_tokens, "seconds": seconds,
                     "prompts_per_s": len(texts) / seconds})
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  """The rows as a markdown table."""
  lines = ["| operation | dtype | device | batch size | prompts | mean prompt tokens | seconds | "
           "prompts/s |", "|---|---|---|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['operation']} | {r['dtype']} | {r['device']} | {r['batch_size']} | "
            f"{r['prompts']} | {r['mean_prompt_tokens']:.0f} | {r['seconds']:.1f} | "
            f"{r['prompts_per_s']:.2f} |" for r in rows]
  return "\n".join(lines)

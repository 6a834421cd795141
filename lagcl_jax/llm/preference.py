"""The LLM's preference of a user for an item: log P(Yes) - log P(No) after a prompt holding the
user's and the item's profiles. Shared by augmentation (choosing liked and disliked items) and
reranking (rescoring the CF top-N)."""

import numpy as np

from lagcl_jax.llm import cached_llm
from lagcl_jax.llm import profiles as profiles_lib
from lagcl_jax.llm import prompts


def preference_margins(llm: cached_llm.CachedLLM, profiles: profiles_lib.Profiles,
                       users: np.ndarray, items: np.ndarray, description: str) -> np.ndarray:
  """float64 [n] margins of the (users[j], items[j]) pairs; NaN (and a counted parse failure)
  where the model gave a non-finite log-probability."""
  texts = [prompts.preference_prompt(profiles.user_text[u], profiles.item_text[i],
                                     profiles.noun)
           for u, i in zip(users.tolist(), items.tolist())]
  log_probs = llm.score(texts, [prompts.YES, prompts.NO], description).astype(np.float64)
  margins = log_probs[:, 0] - log_probs[:, 1]
  failed = ~np.isfinite(margins)
  llm.stats.parse_failures += int(failed.sum())
  margins[failed] = np.nan
  return margins

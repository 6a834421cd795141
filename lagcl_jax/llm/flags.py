"""absl flags for every `LLMOptions` field (see `lagcl_jax.flags`).

Scripts that run LLM stages (launch/llm.py, launch/evaluate.py --rerank) import this module,
which defines the flags, and call `options_from_flags()`.
"""

from lagcl_jax import flags as flags_lib
from lagcl_jax.llm import options as options_lib

flags_lib.define_flags(options_lib.LLMOptions)


def options_from_flags() -> options_lib.LLMOptions:
  """The LLMOptions from the parsed absl flags."""
  return flags_lib.from_flags(options_lib.LLMOptions)

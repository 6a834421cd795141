"""absl flags for every `LLMOptions` field, generated from the dataclass.

Scripts that run LLM stages (launch/llm.py, launch/evaluate.py --rerank) import this module,
which defines the flags, and call `options_from_flags()`.
"""

import dataclasses
import typing

from absl import flags

from lagcl_jax.llm import options as options_lib

FLAGS = flags.FLAGS
_TYPES = typing.get_type_hints(options_lib.LLMOptions)


def _define(field: dataclasses.Field) -> None:
  help_text = field.metadata["help"]
  kind = _TYPES[field.name]
  if kind is bool:
    flags.DEFINE_boolean(field.name, field.default, help_text)
  elif kind is int:
    flags.DEFINE_integer(field.name, field.default, help_text)
  elif kind is float:
    flags.DEFINE_float(field.name, field.default, help_text)
  elif kind is str:
    flags.DEFINE_string(field.name, field.default, help_text)
  elif typing.get_origin(kind) is tuple:
    flags.DEFINE_list(field.name, [str(v) for v in field.default], help_text)
  else:
    raise TypeError(f"LLMOptions.{field.name}: no flag type for {kind}")


for _field in dataclasses.fields(options_lib.LLMOptions):
  _define(_field)


def options_from_flags() -> options_lib.LLMOptions:
  """Builds the LLMOptions from the parsed absl flags."""
  values = {}
  for field in dataclasses.fields(options_lib.LLMOptions):
    value = FLAGS[field.name].value
    if isinstance(value, list):
      element = typing.get_args(_TYPES[field.name])[0]
      try:
        value = tuple(element(v) for v in value)
      except ValueError as e:
        raise flags.ValidationError(
            f"--{field.name}: expected {element.__name__} values, got {value}") from e
    values[field.name] = value
  return options_lib.LLMOptions(**values)

"""absl flags generated from settings dataclasses (one mechanism, no copies).

Every field of `Config` (and of `lagcl_jax.llm.options.LLMOptions`, in `lagcl_jax.llm.flags`)
is a flag of the same name, typed from the annotation, with the field's `help` metadata. Launch
scripts import this module (which defines the Config flags) and call `config_from_flags()`.
"""

import dataclasses
import typing
from typing import Any, TypeVar

from absl import flags

from lagcl_jax import config as config_lib

FLAGS = flags.FLAGS
T = TypeVar("T")


def define_flags(cls: type) -> None:
  """Defines one absl flag per field of the dataclass `cls`."""
  types = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    help_text = field.metadata.get("help", field.name)
    kind = types[field.name]
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
      raise TypeError(f"{cls.__name__}.{field.name}: no flag type for {kind}")


def _flag_value(cls: type, name: str) -> Any:
  value = FLAGS[name].value
  if isinstance(value, list):
    element = typing.get_args(typing.get_type_hints(cls)[name])[0]
    try:
      value = tuple(element(v) for v in value)
    except ValueError as e:
      raise flags.ValidationError(
          f"--{name}: expected {element.__name__} values, got {value}") from e
  return value


def from_flags(cls: type[T]) -> T:
  """An instance of the dataclass `cls` from the parsed flags."""
  return cls(**{f.name: _flag_value(cls, f.name) for f in dataclasses.fields(cls)})


def overrides_from_flags(cls: type) -> dict[str, Any]:
  """The fields of `cls` whose flags were given explicitly (command line or flagfile)."""
  return {f.name: _flag_value(cls, f.name) for f in dataclasses.fields(cls)
          if FLAGS[f.name].present}


def flags_as_flagfile(cls: type = config_lib.Config) -> str:
  """The values of the flags of `cls`, as a flagfile that reproduces the run."""
  lines = []
  for field in dataclasses.fields(cls):
    value = FLAGS[field.name].value
    if isinstance(value, bool):
      lines.append(f"--{'' if value else 'no'}{field.name}")
    else:
      lines.append(f"--{field.name}={','.join(value) if isinstance(value, list) else value}")
  return "\n".join(lines) + "\n"


def config_from_flags() -> config_lib.Config:
  """The run's Config from the parsed flags."""
  return from_flags(config_lib.Config)


define_flags(config_lib.Config)

"""absl flags for every `Config` field, generated from the dataclass (one mechanism, no copies).

Launch scripts import this module (which defines the flags) and call `config_from_flags()`.
"""

import dataclasses
import typing

from absl import flags

from lagcl_jax import config as config_lib

FLAGS = flags.FLAGS


def _define(field: dataclasses.Field) -> None:
  help_text = field.metadata.get("help", field.name)
  kind = typing.get_type_hints(config_lib.Config)[field.name]
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
    raise TypeError(f"Config.{field.name}: no flag type for {kind}")


for _field in dataclasses.fields(config_lib.Config):
  _define(_field)


def config_from_flags() -> config_lib.Config:
  """Builds the run's Config from the parsed absl flags."""
  values = {}
  for field in dataclasses.fields(config_lib.Config):
    value = FLAGS[field.name].value
    if isinstance(value, list):
      try:
        value = tuple(int(v) for v in value)
      except ValueError as e:
        raise flags.ValidationError(f"--{field.name}: expected integers, got {value}") from e
    values[field.name] = value
  return config_lib.Config(**values)


def flags_as_flagfile() -> str:
  """The values of all Config flags, as a flagfile that reproduces the run."""
  lines = []
  for field in dataclasses.fields(config_lib.Config):
    value = FLAGS[field.name].value
    if isinstance(value, list):
      value = ",".join(value)
    elif isinstance(value, bool):
      lines.append(f"--{'' if value else 'no'}{field.name}")
      continue
    lines.append(f"--{field.name}={value}")
  return "\n".join(lines) + "\n"

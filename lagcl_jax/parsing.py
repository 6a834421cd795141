"""Low-level parsing shared by every reader: splitting rows into fields, numbers, bad rows.

Every reader reports a malformed row through `BadRows`, which fails at once naming the file and
1-based line, or (with `--skip_bad_rows`) counts it and keeps a few examples. Skipping never
turns a file into something else: `BadRows.check_file` stops when more than
`--max_bad_fraction` of a file's rows were skipped, or when a file has no rows at all.
"""

import collections
import dataclasses
from typing import Optional

import numpy as np

_MAX_EXAMPLES = 5


class BadRows:
  """Fails on the first malformed row, or (skip mode) counts and remembers a few of them."""

  def __init__(self, skip: bool, max_fraction: float = 0.01):
    self.skip = skip
    self.max_fraction = max_fraction
    self.count = 0
    self.examples: list[str] = []
    self._per_file: collections.Counter = collections.Counter()
    self._file_examples: dict[str, list[str]] = collections.defaultdict(list)

  def report(self, file_name: str, line: int, reason: str) -> None:
    message = f"{file_name}, line {line}: {reason}"
    if not self.skip:
      raise ValueError(message + " (pass --skip_bad_rows to skip and count such rows)")
    self.count += 1
    self._per_file[file_name] += 1
    if len(self.examples) < _MAX_EXAMPLES:
      self.examples.append(message)
    if len(self._file_examples[file_name]) < _MAX_EXAMPLES:
      self._file_examples[file_name].append(message)

  def check_file(self, file_name: str, kept_rows: int) -> None:
    """Stops when the file had no rows, or more than max_fraction of its rows were skipped.

    Raises:
      ValueError: naming the file, the counts and the first bad lines.
    """
    skipped = self._per_file[file_name]
    total = kept_rows + skipped
    if total == 0:
      raise ValueError(f"{file_name}: no data rows (an empty file, or a header only).")
    if skipped > self.max_fraction * total:
      examples = "\n  ".join(self._file_examples[file_name])
      raise ValueError(
          f"{file_name}: {skipped:,} of {total:,} rows ({skipped / total:.1%}) are malformed, "
          f"more than --max_bad_fraction={self.max_fraction}; this file is probably in another "
          f"format than the one being read. First bad lines:\n  {examples}")


@dataclasses.dataclass
class RawRows:
  """Rows of one file with raw string ids. `lines` are 1-based line numbers.

  `times` (float64 seconds or any increasing number) is None when the file has no time column.
  """
  file_name: str
  users: np.ndarray
  items: np.ndarray
  labels: np.ndarray
  lines: np.ndarray
  times: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return int(self.users.shape[0])

  def select(self, mask: np.ndarray) -> "RawRows":
    return RawRows(self.file_name, self.users[mask], self.items[mask], self.labels[mask],
                   self.lines[mask], None if self.times is None else self.times[mask])


def decode(data: bytes, file_name: str, encoding: str) -> str:
  """The file's text; a decoding error names the line and the --encoding flag."""
  try:
    return data.decode(encoding)
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{file_name}, line {line}: not valid {encoding} text "
                     "(set --encoding, e.g. --encoding=latin-1)") from e


_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


def _split_whitespace(data: bytes, file_name: str, encoding: str, num_fields: int,
                      bad_rows: BadRows) -> tuple[list[np.ndarray], np.ndarray]:
  """`split_rows` for fields separated by runs of ASCII whitespace, vectorised."""
  decode(data, file_name, encoding)  # Fails early, with a line number, on bad encoding.
  chars = np.frombuffer(data, np.uint8)
  space = _WHITESPACE[chars]
  token_starts = np.flatnonzero(~space & np.concatenate(([True], space[:-1])))
  newlines = np.flatnonzero(chars == ord("\n"))
  token_lines = np.searchsorted(newlines, token_starts)  # 0-based line of each token
  counts = np.bincount(token_lines, minlength=newlines.size + 1)
  good = counts == num_fields
  for index in np.flatnonzero(~good & (counts > 0)):
    start = newlines[index - 1] + 1 if index else 0
    end = newlines[index] if index < newlines.size else len(data)
    text = data[start:end].decode(encoding).strip()
    bad_rows.report(file_name, int(index) + 1,
                    f"expected {num_fields} fields, found {counts[index]}: {text[:80]!r}")
  tokens = np.array(data.split(), dtype=bytes)
  if not good[token_lines].all():
    tokens = tokens[good[token_lines]]
  tokens = tokens.reshape(-1, num_fields)
  try:
    tokens = tokens.astype(str)
  except UnicodeDecodeError:
    tokens = np.char.decode(tokens, encoding)
  line_numbers = (np.flatnonzero(good) + 1).astype(np.int64)
  return [tokens[:, j] for j in range(num_fields)], line_numbers


def split_rows(data: bytes, file_name: str, encoding: str, sep: Optional[str],
               num_fields: int, bad_rows: BadRows) -> tuple[list[np.ndarray], np.ndarray]:
  """Splits a file into columns of rows with exactly `num_fields` fields; skips blank lines.

  Args:
    data: the whole file.
    file_name: for error messages.
    encoding: the file's text encoding.
    sep: field separator; None splits on runs of whitespace (tabs or spaces).
    num_fields: the required number of fields per row.
    bad_rows: where rows with another number of fields go.

  Returns:
    (columns, lines): `num_fields` string arrays and the 1-based line number of each row.
  """
  if sep is None:
    return _split_whitespace(data, file_name, encoding, num_fields, bad_rows)
  lines = decode(data, file_name, encoding).split("\n")
  fields = [line.strip().split(sep) for line in lines]
  rows = []
  for index, (line, row) in enumerate(zip(lines, fields)):
    if len(row) == num_fields:
      rows.append(index)
    elif line.strip():
      bad_rows.report(file_name, index + 1,
                      f"expected {num_fields} fields, found {len(row)}: {line.strip()[:80]!r}")
  line_numbers = np.array(rows, np.int64) + 1
  if not rows:
    return [np.zeros(0, str) for _ in range(num_fields)], line_numbers
  return [np.array(column) for column in zip(*(fields[i] for i in rows))], line_numbers


def _to_float(token: str) -> float:
  try:
    return float(token)
  except ValueError:
    return float("nan")


def parse_numbers(column: np.ndarray, lines: np.ndarray, file_name: str, what: str,
                  bad_rows: BadRows) -> tuple[np.ndarray, np.ndarray]:
  """Parses a string column as float; returns (values, mask of rows that parsed)."""
  try:
    values = column.astype(np.float64)
  except ValueError:
    values = np.array([_to_float(token) for token in column.tolist()], np.float64)
  ok = np.isfinite(values)
  for index in np.flatnonzero(~ok):
    bad_rows.report(file_name, int(lines[index]), f"non-numeric {what} {str(column[index])!r}")
  return values, ok


def parse_times(column: np.ndarray, lines: np.ndarray, file_name: str,
                bad_rows: BadRows) -> tuple[np.ndarray, np.ndarray]:
  """Parses a time column: numbers (e.g. Unix seconds) or ISO dates ("2016-08-08 00:50:22").

  Returns (float64 values, mask of rows that parsed); dates become Unix seconds.
  """
  try:
    return column.astype(np.float64), np.ones(column.shape, bool)
  except ValueError:
    pass
  try:
    return column.astype("datetime64[s]").astype(np.int64).astype(np.float64), np.ones(
        column.shape, bool)
  except ValueError:
    pass
  values = np.full(column.shape, np.nan)
  for index, token in enumerate(column.tolist()):
    value = _to_float(token)
    if not np.isfinite(value):
      try:
        value = float(np.datetime64(token.strip(), "s").astype(np.int64))
      except ValueError:
        value = float("nan")
    values[index] = value
  ok = np.isfinite(values)
  for index in np.flatnonzero(~ok):
    bad_rows.report(file_name, int(lines[index]),
                    f"time {str(column[index])!r} is neither a number nor an ISO date")
  return values, ok

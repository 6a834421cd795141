"""Readers of interaction files and item/user tables in the formats recommender data comes in.

  * `read_paper_file`: the LAGCL4Rec paper's `user item label` lines (label exactly 1 or -1).
  * `read_delimited`: delimited interaction files (CSV, TSV, `::`, whitespace), with or without a
    header, columns by name or 0-based position; ratings become +1 (>= like_threshold) or -1,
    or every row is +1 (implicit feedback).
  * `read_adjacency`: `uid iid iid ...` lines (the LightGCN / SGL / SimGCL format), every pair +1.
  * `read_recbole_inter`: RecBole atomic `.inter` files (header `name:type`).
  * `read_table`: item or user side information (a delimited table or a RecBole `.item`/`.user`)
    as {raw id: {column: value, ..., "title": ..., "genres": [...]}}.

Every reader returns raw string ids and reports a malformed row to `parsing.BadRows` with the
file and 1-based line. Delimited files: a leading UTF-8 byte order mark is dropped, CRLF line
ends are accepted, blank lines are skipped, and a comma-separated file may quote fields.
"""

import ast
import csv
import dataclasses
from typing import Any, Optional

import numpy as np

from lagcl_jax.parsing import BadRows, RawRows, decode, parse_numbers, parse_times, split_rows

RATINGS_HINT = ("if this is a rating file, read it with --dataset=ratings "
                "--like_threshold=<lowest liked rating>")


# --- The paper's format ----------------------------------------------------------------------


def _parse_labels(column: np.ndarray, lines: np.ndarray, file_name: str,
                  bad_rows: BadRows) -> tuple[np.ndarray, np.ndarray]:
  """Strict labels: 1/-1 (also +1), or 1.0/-1.0-style spellings only if every label uses them."""
  integer_liked = (column == "1") | (column == "+1")
  integer_disliked = column == "-1"
  is_integer = integer_liked | integer_disliked
  values = np.full(column.shape, np.nan)
  if not is_integer.all():
    others = np.flatnonzero(~is_integer)
    for index in others:
      try:
        values[index] = float(column[index])
      except ValueError:
        pass
  float_spelled = ~is_integer & np.isin(values, (1.0, -1.0))
  mixed = float_spelled.any() and is_integer.any()
  for index in np.flatnonzero(~is_integer):
    value = str(column[index])
    if float_spelled[index] and not mixed:
      continue
    if float_spelled[index]:
      reason = (f"label {value!r} mixes float spellings with the file's integer labels "
                "(a label must be exactly 1 or -1)")
    else:
      reason = f"label {value!r} is not 1 or -1"
    bad_rows.report(file_name, int(lines[index]), f"{reason}; {RATINGS_HINT}")
  ok = is_integer | (float_spelled & (not mixed))
  liked = integer_liked | (ok & (values == 1.0))
  return np.where(liked, 1, -1).astype(np.int8), ok


def read_paper_file(data: bytes, file_name: str, bad_rows: BadRows) -> RawRows:
  """Reads the paper's `user item label` format (whitespace-separated, label 1 or -1)."""
  data = data.removeprefix(b"\xef\xbb\xbf")  # A UTF-8 byte order mark is not part of an id.
  (users, items, labels), lines = split_rows(data, file_name, "utf-8", None, 3, bad_rows)
  labels, ok = _parse_labels(labels, lines, file_name, bad_rows)
  return RawRows(file_name, users, items, labels, lines).select(ok)


# --- Delimited tables ------------------------------------------------------------------------


DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
                   "space": None, "whitespace": None}


def delimiter_of(flag_value: str) -> Optional[str]:
  """The --delimiter value as a separator: None splits on runs of whitespace."""
  return DELIMITER_NAMES.get(flag_value.lower(), flag_value)


def sniff_delimiter(first_line: str) -> Optional[str]:
  """Tab, `::`, comma, semicolon or pipe, whichever the line has first in that order; else
  runs of whitespace (None)."""
  for candidate in ("\t", "::", ",", ";", "|"):
    if candidate in first_line:
      return candidate
  return None


@dataclasses.dataclass
class Table:
  """A delimited file's rows as strings. `header` is None when the file has none."""
  file_name: str
  header: Optional[list[str]]
  rows: list[list[str]]
  lines: list[int]

  def column(self, index: int) -> np.ndarray:
    return np.array([row[index] for row in self.rows], dtype=str)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _looks_like_header(first: list[str], second: Optional[list[str]]) -> bool:
  """A first row is a header when some field is not a number where the next row has one."""
  if second is None:
    return not any(_is_number(field) for field in first)
  return any(not _is_number(a) and _is_number(b) for a, b in zip(first, second))


def split_table(data: bytes, file_name: str, delimiter: str, header: str, encoding: str,
                bad_rows: BadRows, needs_header: bool = False) -> Table:
  """Splits a delimited file into string rows, each with as many fields as the first row.

  Args:
    delimiter: the --delimiter flag ("" sniffs it from the first non-blank line).
    header: "yes", "no" or "auto" (a header when `needs_header`, or when the first row has a
      non-number where the second row has a number).
    needs_header: columns are chosen by name, so the first row must be a header.
  """
  text = decode(data.removeprefix(b"\xef\xbb\xbf"), file_name, encoding)
  numbered = [(number, line.rstrip("\r")) for number, line in
              enumerate(text.split("\n"), 1) if line.strip()]
  if not numbered:
    return Table(file_name, None, [], [])
  sep = delimiter_of(delimiter) if delimiter else sniff_delimiter(numbered[0][1])
  if sep == ",":
    split = lambda line: next(csv.reader([line]))
  elif sep is None:
    split = str.split
  else:
    split = lambda line: line.split(sep)
  rows = [[field.strip() for field in split(line)] for _, line in numbered]
  has_header = header == "yes" or (header == "auto" and (
      needs_header or _looks_like_header(rows[0], rows[1] if len(rows) > 1 else None)))
  names = rows[0] if has_header else None
  width = len(rows[0])
  kept, kept_lines = [], []
  for (number, line), row in zip(numbered[1:] if has_header else numbered,
                                 rows[1:] if has_header else rows):
    if len(row) == width:
      kept.append(row)
      kept_lines.append(number)
    else:
      bad_rows.report(file_name, number,
                      f"expected {width} fields, found {len(row)}: {line.strip()[:80]!r}")
  return Table(file_name, names, kept, kept_lines)


def column_index(table: Table, spec: str, flag: str) -> int:
  """The 0-based column named or numbered by a --*_col flag (RecBole `name:type` matches name).

  Raises:
    ValueError naming the flag, the file and its columns.
  """
  if spec.isdigit():
    index = int(spec)
    width = len(table.header or (table.rows[0] if table.rows else []))
    if index >= width:
      raise ValueError(f"--{flag}={spec}: {table.file_name} has only {width} columns "
                       "(positions are 0-based).")
    return index
  if table.header is None:
    raise ValueError(f"--{flag}={spec!r} names a column, but {table.file_name} has no header "
                     "(give a 0-based position, or --header=yes).")
  names = [name.split(":")[0] for name in table.header]
  if spec not in names:
    raise ValueError(f"--{flag}={spec!r}: {table.file_name} has no such column; its columns "
                     f"are {names}.")
  return names.index(spec)


@dataclasses.dataclass(frozen=True)
class Columns:
  """Which columns of an interaction file hold what; rating "" means implicit (every row +1)."""
  user: str
  item: str
  rating: str
  time: str
  like_threshold: float


def rows_from_table(table: Table, columns: Columns, bad_rows: BadRows) -> RawRows:
  """Interactions from a split table: ratings >= like_threshold +1, lower -1 (or all +1)."""
  if table.header is None and not table.rows:
    empty = np.zeros(0, str)
    return RawRows(table.file_name, empty, empty, np.zeros(0, np.int8), np.zeros(0, np.int64))
  user = column_index(table, columns.user, "user_col")
  item = column_index(table, columns.item, "item_col")
  lines = np.array(table.lines, np.int64)
  ok = np.ones(lines.shape, bool)
  labels = np.ones(lines.shape, np.int8)
  if columns.rating:
    values, ok = parse_numbers(table.column(column_index(table, columns.rating, "rating_col")),
                               lines, table.file_name, "rating", bad_rows)
    labels = np.where(values >= columns.like_threshold, 1, -1).astype(np.int8)
  times = None
  if columns.time:
    times, timed = parse_times(table.column(column_index(table, columns.time, "time_col")),
                               lines, table.file_name, bad_rows)
    ok &= timed
  users, items = table.column(user), table.column(item)
  empty = (np.char.str_len(users) == 0) | (np.char.str_len(items) == 0)
  for index in np.flatnonzero(empty & ok):
    bad_rows.report(table.file_name, int(lines[index]), "empty user or item id")
  return RawRows(table.file_name, users, items, labels, lines, times).select(ok & ~empty)


def read_delimited(data: bytes, file_name: str, columns: Columns, delimiter: str, header: str,
                   encoding: str, bad_rows: BadRows) -> RawRows:
  """Reads a delimited interaction file (`--dataset=ratings`)."""
  by_name = any(spec and not spec.isdigit()
                for spec in (columns.user, columns.item, columns.rating, columns.time))
  table = split_table(data, file_name, delimiter, header, encoding, bad_rows,
                      needs_header=by_name)
  return rows_from_table(table, columns, bad_rows)


# --- Adjacency lists -------------------------------------------------------------------------


def read_adjacency(data: bytes, file_name: str, encoding: str, bad_rows: BadRows) -> RawRows:
  """Reads `uid iid iid ...` lines (whitespace-separated); each listed pair is +1.

  A line with a user and no items is allowed (the user has no interactions in this file).
  """
  text = decode(data.removeprefix(b"\xef\xbb\xbf"), file_name, encoding)
  users, items, lines = [], [], []
  for number, line in enumerate(text.split("\n"), 1):
    fields = line.split()
    if not fields:
      continue
    users.extend([fields[0]] * (len(fields) - 1))
    items.extend(fields[1:])
    lines.extend([number] * (len(fields) - 1))
  return RawRows(file_name, np.array(users, dtype=str), np.array(items, dtype=str),
                 np.ones(len(users), np.int8), np.array(lines, np.int64))


# --- RecBole atomic files --------------------------------------------------------------------


def recbole_header(table: Table) -> dict[str, str]:
  """{field name: type} of a RecBole atomic file's `name:type` header."""
  if table.header is None or not all(":" in name for name in table.header):
    raise ValueError(f"{table.file_name}, line 1: expected a RecBole header of `name:type` "
                     f"fields (e.g. user_id:token item_id:token rating:float), got "
                     f"{table.header or (table.rows[0] if table.rows else [])}.")
  return dict(name.split(":", 1) for name in table.header)


def read_recbole_inter(data: bytes, file_name: str, user: str, item: str, rating: str,
                       time: str, implicit: bool, like_threshold: float, encoding: str,
                       bad_rows: BadRows) -> RawRows:
  """Reads a RecBole `.inter` file (tab-separated, `name:type` header).

  Columns: the given names, else RecBole's user_id, item_id, rating and timestamp fields.
  Without a rating field (or with `implicit`) every row is +1.
  """
  table = split_table(data, file_name, "\t", "yes", encoding, bad_rows)
  fields = recbole_header(table)
  rating = "" if implicit else (rating or ("rating" if "rating" in fields else ""))
  time = time or ("timestamp" if "timestamp" in fields else "")
  columns = Columns(user or "user_id", item or "item_id", rating, time, like_threshold)
  return rows_from_table(table, columns, bad_rows)


# --- Side information ------------------------------------------------------------------------


def parse_list(value: str) -> list[str]:
  """A list-valued field: `['a', 'b']` (Python style), `a|b`, `a, b` or a single value."""
  value = value.strip()
  if value.startswith("[") and value.endswith("]"):
    try:
      parsed = ast.literal_eval(value)
      if isinstance(parsed, (list, tuple)):
        return [str(v).strip() for v in parsed if str(v).strip()]
    except (ValueError, SyntaxError):
      value = value[1:-1]
  for sep in ("|", ","):
    if sep in value:
      return [v.strip(" '\"") for v in value.split(sep) if v.strip(" '\"")]
  return [value] if value else []


def _guess_title(names: list[str], skip: int) -> Optional[int]:
  """The first column (other than the id) named like a title or a name."""
  for index, name in enumerate(names):
    lowered = name.lower()
    if index != skip and ("title" in lowered or lowered.endswith("name")):
      return index
  return None


def _guess_genres(names: list[str], skip: int) -> Optional[int]:
  for index, name in enumerate(names):
    if index != skip and name.lower() in ("genre", "genres"):
      return index
  return None


def meta_from_table(table: Table, id_col: str, id_flag: str, title_col: str,
                    genre_col: str) -> dict[str, dict[str, Any]]:
  """{raw id: {column name: value, ...}} from a table read with its header.

  Every column but the id is kept under its name (RecBole `name:type` headers by name;
  `token_seq` fields and `--item_genre_col` as lists). "title" is the `title_col` column, else
  the first column named like a title or a name (e.g. WineName, name, movie_title); "genres" is
  the `genre_col` column (a list), else a column named genre(s); "year" (an int) comes from a
  year or release_year column. title, year and genres are what the LLM profiles show.
  """
  names = [name.split(":")[0] for name in table.header]
  types = [name.split(":", 1)[1] if ":" in name else "" for name in table.header]
  key = column_index(table, id_col or "0", id_flag)
  title = column_index(table, title_col, "item_title_col") if title_col else _guess_title(
      names, key)
  genres = column_index(table, genre_col, "item_genre_col") if genre_col else _guess_genres(
      names, key)
  meta = {}
  for row in table.rows:
    entry = {}
    for index, (name, kind, value) in enumerate(zip(names, types, row)):
      if index == key or not value:
        continue
      entry[name] = value.split() if kind.endswith("_seq") else value
    if title is not None and row[title]:
      entry["title"] = row[title]
    year = next((entry[name] for name in ("year", "release_year") if name in entry), None)
    if isinstance(year, str) and year.isdigit():
      entry["year"] = int(year)
    if genres is not None and row[genres]:
      value = row[genres]
      entry["genres"] = value.split() if types[genres].endswith("_seq") else parse_list(value)
    meta[row[key]] = entry
  return meta


def read_table(data: bytes, file_name: str, id_col: str, id_flag: str, title_col: str,
               genre_col: str, delimiter: str, encoding: str,
               bad_rows: BadRows) -> dict[str, dict[str, Any]]:
  """Reads an item or user table with a header (delimiter sniffed unless given)."""
  table = split_table(data, file_name, delimiter, "yes", encoding, bad_rows)
  bad_rows.check_file(file_name, len(table.rows))
  return meta_from_table(table, id_col, id_flag, title_col, genre_col)

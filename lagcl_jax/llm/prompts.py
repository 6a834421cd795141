"""The prompt texts of every LLM stage. Changing any text here must bump PROMPT_VERSION, which
is recorded in every output's provenance (cache keys hold the full prompt text anyway)."""

PROMPT_VERSION = "1"

SYSTEM_PROMPT = "You are a movie recommendation assistant. Answer briefly."

# The two answers whose log-probabilities make a preference score: log P(Yes) - log P(No).
YES, NO = "Yes", "No"


def summary_prompt(user_facts: str) -> str:
  """Asks for a one-sentence summary of a user's taste (profiles stage)."""
  return (f"Here is what we know about a movie viewer.\n{user_facts}\n\n"
          "In one sentence, describe this viewer's taste in movies.")


def preference_prompt(user_profile: str, item_profile: str) -> str:
  """Asks whether the user would enjoy the item (augmentation and rerank, scored Yes/No)."""
  return (f"Viewer profile:\n{user_profile}\n\nCandidate movie: {item_profile}\n\n"
          f"Would this viewer enjoy the candidate movie? Answer {YES} or {NO}.")


def group_prompt(kind: str, member_profiles: list[str]) -> str:
  """Asks for a name, key characteristics and reasoning of a cluster of users or movies."""
  noun = "movie viewers" if kind == "user" else "movies"
  members = "\n".join(f"- {text}" for text in member_profiles)
  return (f"These {noun} were grouped together because their profiles are similar:\n"
          f"{members}\n\n"
          "Describe the group. Answer in exactly this format:\n"
          "Name: <a short name for the group>\n"
          "Characteristics: <trait>; <trait>; <trait>\n"
          "Reasoning: <one sentence on what they share>")

"""The prompt texts of every LLM stage, for any domain: `noun` names the items ("movie", "wine",
"artist"; `--item_noun`). Changing any text here must bump PROMPT_VERSION, which is recorded in
every output's provenance (cache keys hold the full prompt text anyway)."""

from lagcl_jax.llm.metadata_text import plural

PROMPT_VERSION = "2"

# The two answers whose log-probabilities make a preference score: log P(Yes) - log P(No).
YES, NO = "Yes", "No"


def system_prompt(noun: str) -> str:
  return f"You are a {noun} recommendation assistant. Answer briefly."


def summary_prompt(user_facts: str, noun: str) -> str:
  """Asks for a one-sentence summary of a user's taste (profiles stage)."""
  return (f"Here is what we know about a user.\n{user_facts}\n\n"
          f"In one sentence, describe this user's taste in {plural(noun)}.")


def preference_prompt(user_profile: str, item_profile: str, noun: str) -> str:
  """Asks whether the user would enjoy the item (augmentation and rerank, scored Yes/No).

  The candidate comes last, so the prompts of one user share everything up to it: the driver
  runs that shared part once and only the short candidate tails per candidate.
  """
  return (f"User profile:\n{user_profile}\n\n"
          f"Would this user enjoy the candidate {noun} below? Answer {YES} or {NO}.\n"
          f"Candidate {noun}: {item_profile}")


def group_prompt(kind: str, member_profiles: list[str], noun: str) -> str:
  """Asks for a name, key characteristics and reasoning of a cluster of users or items."""
  members = "\n".join(f"- {text}" for text in member_profiles)
  return (f"These {'users' if kind == 'user' else plural(noun)} were grouped together because "
          f"their profiles are similar:\n{members}\n\n"
          "Describe the group. Answer in exactly this format:\n"
          "Name: <a short name for the group>\n"
          "Characteristics: <trait>; <trait>; <trait>\n"
          "Reasoning: <one sentence on what they share>")

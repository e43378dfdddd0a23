# A test fixture in the official FIRM-Reward file layout: the same constant names and placeholder style as
# generation/flow_grpo/prompt_template.py, with FIRM's own test texts (not the official wording).

MODEL_PROMPT = """Fixture image evaluator.
Check every requirement of the Original Prompt, one by one.

Finish with:
**Final Alignment Rating: [Rating]**
\\boxed{{[Rating]}}
"""


Quality_PROMPT = """Fixture quality evaluator. Rate aesthetics, quality and structure from 1 to 5.

Output STRICTLY as JSON:
{
  "score" : [score1, score2, score3],
  "reasoning" : "..."
}
"""


SCORE = (
    MODEL_PROMPT
    + "\n\n### Original Prompt\n{prompt}\n"
    + "### Additional Requirement (if any)\n{requirement}\n"
)

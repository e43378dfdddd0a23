# A test fixture in the official FIRM-Reward file layout: the same constant names and placeholder style as
# editing/reward_server/prompt_template.py, with FIRM's own test texts (not the official wording).

SCORE_LOGIT = """Two images, an original and an edit. Instruction: {prompt}
Requirement: {requirement}
Answer with one number from 0 to 5."""


SCORE_CONSISTENCY = """
Fixture evaluator. Image one is the original, image two the edit made with this instruction.

Instruction: {prompt}

Count the changes the instruction did not ask for:
- **5**: nothing else changed.
- **1**: everything changed.

Reply as:
{{
"reasoning" : "<WHY>",
"score" : [1/2/3/4/5]
}}
"""


SCORE_EXECUTION = """
Fixture evaluator. Image one is the original, image two the edit made with this instruction.

Instruction: {prompt}

Judge whether the requested change is there:
- **5**: fully done.
- **1**: not done.

Reply as:
{{
"reasoning" : "<WHY>",
"score" : [1/2/3/4/5]
}}
"""

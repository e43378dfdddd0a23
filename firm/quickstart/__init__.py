"""The quickstart (`make quickstart` / `firmctl quickstart`): FIRM's `firm` pipeline on this machine, on tiny models.

- `run` — the orchestration: inputs, the KFP local runner, progress per stage;
- `data` — the synthetic source data, held-out bench and RL prompt files it brings;
- `policy` — the editing base policy: the scene policy warmed up on synthetic edits;
- `teacher` — the curation teacher: an OpenAI-compatible endpoint that measures the synthetic images;
- `report` — `DIR/report/index.html` and `summary.json`.
"""

from firm.quickstart.run import SIZES, QuickstartSize, run_quickstart

__all__ = ["SIZES", "QuickstartSize", "run_quickstart"]

"""FIRM curation stage: critic SFT data.

- `firm.curation.synthetic`: known-answer, learnable edit/gen items (scores readable from the pixels).
- `firm.curation.dataset`: the critic SFT dataset format (`CriticSFTRow`, writer, validating reader).
- `firm.curation.synthetic_sft`: a synthetic SFT dataset (`python -m firm.curation.synthetic_sft OUT ...`).
"""

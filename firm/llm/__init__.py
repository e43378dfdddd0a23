"""Clients for language-model endpoints shared across FIRM stages.

- `firm.llm.openai_client`: the one OpenAI-compatible chat-completions client (bench backends, curation teachers).
"""

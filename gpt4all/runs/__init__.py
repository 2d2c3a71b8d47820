"""Tools over finished runs: list them (gpt4all-runs), diff their configs (gpt4all-diff), report (gpt4all-report)."""

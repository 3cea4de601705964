"""Prompt templates (text files). Loaded with povid_cli.core.templates.load_prompt(name)."""

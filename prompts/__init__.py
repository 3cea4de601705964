"""Prompt templates (text files). Loaded with povid_cli.templates.load_prompt(name)."""

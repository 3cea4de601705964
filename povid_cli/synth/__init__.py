"""The synth job: the whole pipeline under one lock (plan, povid.toml)."""

"""The export job: DATA/pairs -> OUT in a training format (formats, atomic swap, export key)."""

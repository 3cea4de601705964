"""The core: store, fs, runner, executors, stage, schemas, errors, images, templates, coco.

Imports nothing of povid outside core/ (reading the `prompts/` data package aside)."""

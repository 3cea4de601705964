"""The synthetic world: a closed, CPU-sized setting where povid's pairs can be shown to change a model.

Modules:
- `glyphs`: the object types (COCO categories drawn as coloured shapes) and how an image is drawn;
- `scenes`: which objects an image holds, which its caption names, and the caption text;
- `make`: writes the world as COCO-format files (images, captions, instances, trigger/ordinary ids);
- `tokenizer`, `model`: the word-level tokenizer and the tiny LLaVA that transformers loads;
- `sft`: supervised training from scratch (and the control run);
- `evaluate`: greedy captions + CHAIR per subset (the `povid eval` results.json layout);
- `recipes`: what `--recipe` means in `povid synth` / `povid train` flags;
- `figure`: the README figure and table from the runs' JSON.
`benchmarks/world.py` runs the whole loop.
"""

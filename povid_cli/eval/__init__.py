"""The eval job: CHAIR and POPE of a VLM (with or without a LoRA adapter) from COCO annotation files."""

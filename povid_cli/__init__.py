"""povid: hallucination-aware preference data for vision-language models (POVID) and DPO training."""

__version__ = "0.1.0"

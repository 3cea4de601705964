"""povid: hallucination-aware preference data for vision-language models (POVID) and DPO training."""

from povid_cli.core.version import __version__

__all__ = ["__version__"]

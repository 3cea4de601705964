"""`povid hallucinate DATA [--backend rules|openai] ...` (options: stages/hallucinate.py, HallucinateConfig)"""

from __future__ import annotations

from povid_cli.app import reflow, stage_command
from stages.hallucinate import HallucinateStage

HELP = """Write hallucinated (dispreferred) answers into DATA/hallucinated: POVID's first kind of rejected answer.

Each item's correct answer gets a few plausible hallucinations and nothing else changes: an absent object
that often co-occurs with what is there (a fork next to a knife), a wrong count, colour, size or position,
a wrong relation (on/under, holding/throwing); yes/no and reasoning answers get the opposite conclusion
with reasoning that supports it. Every row records its edits (from, to, type).

--backend rules (default) runs offline and is deterministic for a --seed. --backend openai asks any
OpenAI-compatible chat endpoint (OpenAI, a local `vllm serve`, ...): the key comes from the variable named
by --api-key-env (a local server needs none), requests run --concurrency at a time with retries that honour
Retry-After, and every response is cached in DATA/cache/hallucinate, so re-running, resuming or deleting
DATA/hallucinated never pays for the same request twice. Empty answers, refusals and answers identical to
the input go to DATA/failed/hallucinate with a reason. Token usage is in `povid status DATA`.

Examples:

  povid hallucinate data

  povid hallucinate data --backend openai --model gpt-4o-mini --concurrency 32 --rpm 500

  povid hallucinate data --backend openai --api-base http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
"""

stage_command("hallucinate", HallucinateStage, help=reflow(HELP))

"""`povid correct DATA [--backend rules|openai] ...` (options: stages/correct.py, CorrectConfig)"""

from __future__ import annotations

from povid_cli.app import reflow, stage_command
from stages.correct import CorrectStage

HELP = """Correct the target model's own answers minimally -> DATA/corrected (OPA-DPO, RLAIF-V-style pairs).

The rejected answer of an on-policy pair is what the model itself said about the clean image (`povid
sample DATA --clean`); the chosen one is that same answer with only its hallucinations taken out, so
the pair differs exactly where the model was wrong. `povid filter DATA --kinds text,image,corrected`
then makes `corrected` pairs (chosen = the correction, rejected = the original).

--backend rules (default) runs offline: it removes the sentences, or the trailing clauses, that name a
COCO object the item does not have (its `objects` and the objects its chosen answer names) and leaves
every other character as it was; negated mentions ("there is no dog") stay. --backend openai asks any
OpenAI-compatible chat endpoint for a minimal correction given the ground truth (the chosen answer and
the objects; --send-image adds the image for a VLM), with the shared client (--concurrency, retries,
the response cache in DATA/cache/correct). Each row records what was removed or changed, and why.
Empty replies and refusals go to DATA/failed/correct with a reason.

By default only the answers on the clean image are corrected; --variants all corrects the answers on
distorted images too.

Examples:

  povid sample data --model Qwen/Qwen2-VL-2B-Instruct --clean
  povid correct data
  povid filter data --kinds text,image,corrected

  povid correct data --backend openai --model gpt-4o-mini --send-image

  povid correct data --backend openai --api-base http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
"""

stage_command("correct", CorrectStage, help=reflow(HELP))

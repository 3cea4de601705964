"""`povid sample DATA --model M` (options: stages/sample.py, SampleConfig)"""

from __future__ import annotations

from povid_cli.app import reflow, stage_command
from stages.sample import SampleStage

HELP = """Let the target VLM answer each prompt while looking at each distorted image -> DATA/sampled.

With the image degraded (`povid distort`), what the model says comes from its language prior:
its own, on-policy hallucinations, which `povid filter` turns into dispreferred answers. One row
per (item, distorted variant) with --n answers, their finish reasons ("stop" | "length") and the
sampling settings. With --clean the model also answers on the clean image (variant `clean`; without
distorted images, only there): its own answers for `povid correct` (OPA-DPO pairs). The model family must be one of: LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3; its own
chat template builds the prompt. With --backend openai every response is cached in DATA/cache/sample.
Finished shards are kept: run it again to resume.

Examples:

  povid sample data --model llava-hf/llava-1.5-7b-hf --n 2

  povid sample data --model Qwen/Qwen2-VL-7B-Instruct --backend vllm --tp 2 --logprobs

  vllm serve Qwen/Qwen2-VL-2B-Instruct &
  povid sample data --backend openai --api-base http://127.0.0.1:8000/v1 --model Qwen/Qwen2-VL-2B-Instruct

  povid sample data --model ./tiny-vlm --backend transformers --limit 4 -t 0

  povid sample data --model Qwen/Qwen2-VL-2B-Instruct --clean
"""

stage_command("sample", SampleStage, help=reflow(HELP), run_flags=("limit", "retry_failed"))

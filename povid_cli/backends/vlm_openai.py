"""`openai` VLM backend: any OpenAI-compatible VLM server (`vllm serve MODEL`, hosted APIs).

Each request is one user turn with the image as a data: URL and the prompt text; the server applies
the model's chat template. Concurrency, rate limits, retries (honouring Retry-After) and the on-disk
response cache come from the shared `ChatClient` (povid_cli/backends/openai_client.py), so a re-run
after a crash does not pay twice. Token log-probs under the clean image are not available here.
"""

from __future__ import annotations

from typing import Any

from povid_cli.core.errors import RowError, UsageError
from povid_cli.core.images import data_url
from povid_cli.backends.openai_client import APIConfig, ChatClient, ChatRequest, ChatResponse, usage_of
from povid_cli.backends.vlm import Sampling, VLMOutput, VLMRequest


class OpenAIBackend:
    local = False  # a server: any model it serves, no GPU here
    whole_shards = True  # many requests in flight at once
    can_score = False
    name = "openai"

    def __init__(self, model: str, sampling: Sampling, *, api: APIConfig | None = None, **_: Any):
        self.model_name = model
        self.sampling = sampling
        self.client = ChatClient(api or APIConfig(), model)
        self.usage: dict[str, float] = {}

    def _params(self) -> dict:
        s = self.sampling
        # greedy: ask once and repeat the answer n times (vLLM refuses n > 1 with temperature 0)
        p: dict[str, Any] = {"n": 1 if s.greedy else s.n, "max_tokens": s.max_tokens, "temperature": max(0.0, s.temperature)}
        if not s.greedy:
            p["top_p"] = s.top_p
        if s.seed is not None:
            p["seed"] = s.seed
        return p

    def generate(self, requests: list[VLMRequest]) -> list[VLMOutput | RowError]:
        params = self._params()
        chats = []
        for r in requests:
            content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in r.images]
            content.append({"type": "text", "text": r.prompt})
            chats.append(ChatRequest([{"role": "user", "content": content}], params))
        before = dict(self.client.usage)
        got = self.client.run(chats)
        self.usage = usage_of(self.client, before)
        out: list[VLMOutput | RowError] = []
        for req, res in zip(chats, got):
            if not isinstance(res, ChatResponse):
                out.append(res)
                continue
            asked = req.params["n"]
            if len(res.texts) != asked:
                self.client.forget(req)
                out.append(RowError(f"the server returned {len(res.texts)} answers, {asked} asked "
                                    "(does it support n > 1?)", kind="bad_response"))
                continue
            reps = self.sampling.n // asked
            out.append(VLMOutput([(t or "").strip() for t in res.texts] * reps,
                                 ["length" if f == "length" else "stop" for f in res.finish_reasons] * reps,
                                 usage=dict(res.usage)))
        return out

    def score(self, requests, outputs):
        raise UsageError("--logprobs needs the vllm or transformers backend (an OpenAI-compatible server "
                         "cannot score a given answer under another image)")

    def close(self) -> None:
        pass

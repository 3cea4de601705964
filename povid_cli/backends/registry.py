"""Backends by name: one registry for every job that talks to a model, imported only when used.

    registry.load("llm", "openai")          # a chat LLM client class (hallucinate, filter's judge, correct)
    registry.load("vlm", "transformers")    # a VLM that answers prompts about images (sample, eval)
    registry.names("vlm")                   # ("vllm", "transformers", "openai", ...)

Kinds and their interfaces:
- "llm": `cls(api: APIConfig, model: str)` with `run(list[ChatRequest]) -> list[ChatResponse | RowError]`,
  `usage`, `forget(request)`, `scrub(text)` (backends/openai_client.py: ChatClient).
- "vlm": `cls(model=..., sampling=Sampling(...), **options)` with `generate(list[VLMRequest])`,
  `score(...)`, `close()` (backends/vlm.py).
- "hallucinate", "correct": local rewriters that need no model, registered by the stage modules that
  hold them (`register("hallucinate", "rules", "stages.hallucinate_rules:RulesHallucinator")`).
Plug-ins add their own with `register(kind, name, "module:Class")` or an entry point in the group
`povid.backends` named `KIND.NAME` (e.g. `llm.anthropic = "my_pkg.llm:Client"`).
"""

from __future__ import annotations

import importlib
from typing import Any

from povid_cli.core.errors import PovidError, UsageError

_REGISTRY: dict[str, dict[str, str]] = {
    "llm": {"openai": "povid_cli.backends.openai_client:ChatClient"},
    "vlm": {
        "vllm": "povid_cli.backends.vlm_vllm:VLLMBackend",
        "transformers": "povid_cli.backends.vlm_transformers:TransformersBackend",
        "openai": "povid_cli.backends.vlm_openai:OpenAIBackend",
    },
}
_plugins_loaded = False


def register(kind: str, name: str, ref: str) -> None:
    """Add (or replace) backend `name` of `kind`: `ref` is "module:attribute", imported when first used."""
    _REGISTRY.setdefault(kind, {})[name] = ref


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="povid.backends"):
        kind, _, name = ep.name.partition(".")
        if name:
            register(kind, name, ep.value)


def names(kind: str) -> tuple[str, ...]:
    _load_plugins()
    return tuple(_REGISTRY.get(kind, {}))


def load(kind: str, name: str) -> Any:
    """The backend class (or factory) `name` of `kind`; its module is imported now, not before."""
    _load_plugins()
    table = _REGISTRY.get(kind, {})
    if name not in table:
        raise UsageError(f"unknown {kind} backend {name!r}; choose one of {', '.join(table) or '(none)'}")
    module, _, attr = table[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise PovidError(f"the {kind} backend {name!r} cannot be loaded: {e}") from e
    except AttributeError:
        raise PovidError(f"the {kind} backend {name!r}: {module} has no {attr}") from None

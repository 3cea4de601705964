"""What the chat-LLM backends of a stage share (hallucinate_llm.py, correct_llm.py): the client looked up by
name in the backend registry, and one process with many requests in flight rather than many processes."""

from __future__ import annotations

from povid_cli.core.errors import RowError
from povid_cli.core.schemas import item_images
from povid_cli.core.templates import prompt_hash


def user_content(text: str, row: dict, send_image: bool) -> str | list:
    """The user message's content: the text, followed by the row's images as data URLs with --send-image
    (a row without image bytes is then an invalid row, not a request without its image)."""
    if not send_image:
        return text
    from povid_cli.core.images import data_url

    images = [im.get("bytes") for im in item_images(row) if im]
    if not images or not all(images):
        raise RowError("--send-image: the item has no image bytes", kind="invalid")
    return [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": data_url(b)}} for b in images]


class ChatStep:
    """Base of a stage backend that asks a chat LLM through an OpenAI-compatible client (`config.backend`,
    `config.api`, `config.model`); subclasses name their `prompts` and format and parse the requests."""

    prompts: tuple[str, ...] = ()
    batch_size = None  # the whole shard goes to the async client: concurrency comes from requests in flight
    max_workers = 1
    uses_api = True

    def __init__(self, config, default_model: str):
        from povid_cli.backends import registry

        self.config = config
        self.model = config.model or default_model
        self.client_cls = registry.load("llm", config.backend)
        self.client = None

    def prompts_version(self, name: str) -> str:
        """`name@` and the hashes of the prompt templates: part of the stage's config hash."""
        return f"{name}@" + "+".join(prompt_hash(p)[:8] for p in self.prompts)

    def setup(self) -> None:
        self.client = self.client_cls(self.config.api, self.model)

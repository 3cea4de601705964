"""The world model's word-level tokenizer, built offline.

Its vocabulary covers every word the world's captions use AND every word povid's `rules` hallucinator
can write into them (the templates, the 80 COCO names, the swaps), so rejected answers tokenize without
<unk>. Text is lower-cased and split into words and punctuation (`\\w+|[^\\w\\s]+`, tokenizers' Whitespace
pre-tokenizer); decoding joins tokens with spaces ("there is a zebra . a giraffe sits near the zebra .").

    tok = build_tokenizer()           # a transformers PreTrainedTokenizerFast with the chat template
    words = vocabulary()              # the sorted word list
"""

from __future__ import annotations

import random
import re

from benchmarks.world.glyphs import LONERS, PAIRS

SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
EOS, PAD, UNK, IMAGE = "<|im_end|>", "<|endoftext|>", "<unk>", "<image>"
# ChatML, with LLaVA's "<image>\n" for an image part (string content works too)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] in ['image', 'image_url'] %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORD = re.compile(r"\w+|[^\w\s]+")


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _table_texts() -> list[str]:
    """Every string the rules hallucinator can splice in (stages/hallucinate_rules.py, stages/cooccurrence.py)."""
    from povid_cli.core import coco
    from stages import cooccurrence as co
    from stages import hallucinate_rules as hr

    out = ["user assistant system", "Describe this image in detail.", "can be seen in the background ."]
    for cat, names in coco.categories():
        out += [co.display(cat), co.pluralize(co.display(cat)), co.with_article(co.display(cat)), *names]
    for templates in co.TEMPLATES.values():
        out += [t.replace("{X}", "").replace("{x}", "").replace("{a}", "") for t in templates]
    out += [r for _, r in hr.RELATIONS] + [r for _, r in hr.FLIPS]
    out += hr.COLORS + list(hr.ISH) + list(hr.ISH.values()) + hr.NUMBERS
    out += list(hr.SIZE_STATE) + list(hr.SIZE_STATE.values()) + list(hr.POSITION) + list(hr.QUANTITIES)
    out += list(hr.QUANTITIES.values()) + list(hr.PERSON_SWAP) + list(hr.PERSON_SWAP.values())
    out += [x for vals in co.SCENE.values() for x in vals]
    return out


def _harvested(n_scenes: int = 600, n_seeds: int = 4) -> list[str]:
    """What the rules backend writes for sampled world captions (catches any splice the tables miss)."""
    from benchmarks.world.scenes import train_scene
    from stages.hallucinate_rules import hallucinate

    rng = random.Random("vocab")
    out = []
    for i in range(n_scenes):
        s = train_scene(rng, len(PAIRS), 0.9, 0.3)
        out += [s.caption, s.sft_caption]
        for j in range(n_seeds):
            text, _ = hallucinate(s.caption, task="caption", prompt="Describe this image in detail.",
                                  objects=s.drawn, rng=random.Random(f"{j}:{i}"), p_object=1.0)
            out.append(text)
    return out


def vocabulary() -> list[str]:
    """The sorted word list (specials excluded); the same on every call."""
    words = {w for text in _table_texts() + _harvested() for w in words_of(text)}
    words |= {w for p in PAIRS for x in p for w in words_of(x)} | {w for x in LONERS for w in words_of(x)}
    words |= set("0123456789") | set(".,;:!?'\"-()")
    return sorted(words)


def build_tokenizer(words: list[str] | None = None):
    """A PreTrainedTokenizerFast (WordLevel) over SPECIALS + `words`, with the chat template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = words if words is not None else vocabulary()
    vocab = {t: i for i, t in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token=EOS, pad_token=PAD, unk_token=UNK, bos_token=None,
        additional_special_tokens=["<|im_start|>", IMAGE], chat_template=CHAT_TEMPLATE, model_max_length=512,
        clean_up_tokenization_spaces=False,
    )

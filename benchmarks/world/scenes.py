"""What an image of the world holds and what its captions say.

A scene is a list of units; a unit is one object or an (anchor, partner) pair. Training scenes:
1-3 objects; picking a pair member brings its partner along `p_cooccur` of the time; in a pair, the
partner is *named but not drawn* `p_unseen` of the time (the SFT caption only: the true caption names
what is drawn). That label noise is what makes the model hallucinate the partner next to a lone anchor.

Captions use the sentences povid's `rules` hallucinator writes (stages/cooccurrence.py TEMPLATES, one
drawn at random, as the rules backend does), so the rejected answers povid makes say the hallucination
exactly the way the SFT captions taught it; a DPO margin can then only be won on the hallucination
itself, not on unfamiliar wording:

    There is a zebra. A giraffe sits near the zebra. There is a bird.

Val scenes: `trigger` = an anchor without its partner (plus at most one loner); `ordinary` = a training
scene with every anchor's partner drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from benchmarks.world.glyphs import LONERS, PAIRS, TYPES
from stages.cooccurrence import TEMPLATES, display, kind, with_article


@dataclass
class Scene:
    drawn: list[str] = field(default_factory=list)        # objects in the image, caption order
    unseen: list[str] = field(default_factory=list)       # partners named by the SFT caption, not drawn
    sentences_true: list[str] = field(default_factory=list)
    sentences_sft: list[str] = field(default_factory=list)

    @property
    def caption(self) -> str:
        return " ".join(self.sentences_true)

    @property
    def sft_caption(self) -> str:
        return " ".join(self.sentences_sft)


def there_is(name: str) -> str:
    return f"There is {with_article(display(name))}."


def next_to(partner: str, anchor: str, rng: random.Random) -> str:
    """The partner sentence, in one of the `rules` templates for the partner's kind."""
    phrase = with_article(display(partner))
    template = rng.choice(TEMPLATES[kind(partner)])
    return template.format(X=phrase[0].upper() + phrase[1:], x=phrase, a=display(anchor))


def pairs_used(n_pairs: int) -> tuple[tuple[str, str], ...]:
    if not 1 <= n_pairs <= len(PAIRS):
        raise ValueError(f"--pairs must be in 1..{len(PAIRS)}")
    return PAIRS[:n_pairs]


def world_types(n_pairs: int) -> list[str]:
    """The type names in play, in caption order: pairs first (anchor, partner), then loners."""
    return [x for p in pairs_used(n_pairs) for x in p] + list(LONERS)


def _compose(units: list[tuple[str, ...]], unseen: set[str], order: list[str], rng: random.Random) -> Scene:
    scene = Scene()
    for unit in sorted(units, key=lambda u: order.index(u[0])):
        first = unit[0]
        scene.drawn.append(first)
        scene.sentences_true.append(there_is(first))
        scene.sentences_sft.append(there_is(first))
        if len(unit) == 2:
            partner = unit[1]
            sentence = next_to(partner, first, rng)
            scene.sentences_sft.append(sentence)
            if partner in unseen:
                scene.unseen.append(partner)
            else:
                scene.drawn.append(partner)
                scene.sentences_true.append(sentence)
    return scene


def train_scene(rng: random.Random, n_pairs: int, p_cooccur: float, p_unseen: float, max_objects: int = 3) -> Scene:
    """A training scene (see the module docstring)."""
    pairs = pairs_used(n_pairs)
    partner_of = {a: (a, b) for a, b in pairs} | {b: (a, b) for a, b in pairs}
    order = world_types(n_pairs)
    target = rng.randint(1, max_objects)
    units: list[tuple[str, ...]] = []
    used: set[str] = set()
    unseen: set[str] = set()
    slots = 0
    for _ in range(100):
        if slots >= target:
            break
        t = rng.choice([x for x in order if x not in used])
        if t in partner_of:
            a, b = partner_of[t]
            if rng.random() < p_cooccur:
                hidden = rng.random() < p_unseen
                if slots + (1 if hidden else 2) > target:
                    continue  # no room for the pair: pick another unit
                units.append((a, b))
                used |= {a, b}
                slots += 1 if hidden else 2
                if hidden:
                    unseen.add(b)
                continue
            used |= {a, b}  # a lone member: its partner must not join later as a unit of its own
        else:
            used.add(t)
        units.append((t,))
        slots += 1
    return _compose(units, unseen, order, rng)


def trigger_scene(rng: random.Random, n_pairs: int) -> Scene:
    """An anchor without its partner, and at most one loner."""
    pairs = pairs_used(n_pairs)
    anchor = rng.choice(pairs)[0]
    units: list[tuple[str, ...]] = [(anchor,)]
    if rng.random() < 0.5:
        units.append((rng.choice(LONERS),))
    return _compose(units, set(), world_types(n_pairs), rng)


def ordinary_scene(rng: random.Random, n_pairs: int, p_cooccur: float) -> Scene:
    """A training-like scene with no trigger: every anchor drawn has its partner drawn too."""
    anchors = {a for a, _ in pairs_used(n_pairs)}
    while True:
        s = train_scene(rng, n_pairs, p_cooccur, 0.0)
        lone = [a for a in anchors if a in s.drawn and dict(pairs_used(n_pairs))[a] not in s.drawn]
        if not lone:
            return s


def type_ids() -> dict[str, int]:
    return {t.name: t.coco_id for t in TYPES}

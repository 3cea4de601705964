"""What `benchmarks/world.py --recipe NAME` runs: the `povid synth` config and the `povid train` flags.

Every recipe starts from the same SFT model and trains all weights (`--full`) for the same number of
steps at the same learning rate, batch and beta; they differ only in the loss and the pairs:

| recipe           | pairs                         | loss                                                  |
|------------------|-------------------------------|-------------------------------------------------------|
| sigmoid          | text (rules hallucinate)      | DPO                                                   |
| sigmoid+sft      | text                          | DPO + next-word loss on the chosen answer (RPO)       |
| povid+sft        | text                          | POVID's loss (+ noised-image argmax rejected) + RPO   |
| mdpo+sft         | text                          | mDPO (+ conditional term on a random crop, anchor) + RPO |
| sigmoid+sft+img  | text + image (sampled by the SFT model on diffusion-noised images) | DPO + RPO |
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    name: str
    loss: str = "sigmoid"
    sft_weight: float = 0.0
    image_pairs: bool = False          # sample the SFT model on the distorted images (synth --vlm)
    extra: tuple[str, ...] = field(default=())

    def train_flags(self) -> list[str]:
        flags = ["--loss", self.loss, "--sft-weight", str(self.sft_weight),
                 "--schedule", "mixed", "--kind", "all" if self.image_pairs else "text"]
        return flags + list(self.extra)


SFT_WEIGHT = 1.0  # TRL's recommended rpo_alpha
RECIPES = {r.name: r for r in (
    Recipe("sigmoid"),
    Recipe("sigmoid+sft", sft_weight=SFT_WEIGHT),
    Recipe("povid+sft", loss="povid", sft_weight=SFT_WEIGHT),
    Recipe("mdpo+sft", loss="mdpo", sft_weight=SFT_WEIGHT),
    Recipe("sigmoid+sft+img", sft_weight=SFT_WEIGHT, image_pairs=True),
)}
DEFAULT = "sigmoid+sft"


def synth_toml(n_rejected: int, sample: bool = False) -> str:
    """povid.toml for `povid synth` on the world (each line says why it differs from the default)."""
    return f"""# povid synth settings for the synthetic world (benchmarks/world.py)
[hallucinate]
# several rejected answers per caption: the rules backend picks the inserted object among 3-4 co-occurring
# ones, so more draws give more pairs that insert the partner (the hallucination the world teaches)
n = {n_rejected}
# every rejected answer inserts an object (the default 0.8 leaves some with only a relation edit)
p_object = 1.0

[distort]
# the world's images are 64 px: keep that size (the default upsizes to LLaVA-1.5's 336)
size = 0

[filter]
# the world's captions repeat by design ("There is a zebra."): dedup would keep one pair per caption text
# across the whole dataset, though every image differs
dedup = false
# a one-sentence caption plus one inserted sentence is below the default 0.45 word similarity
min_similarity = 0.0
""" + ("""
[sample]
# captions are short; 100 images per generate call
max_tokens = 48
batch_size = 100
""" if sample else "")

"""Multi-image items (MIA-DPO, LLaVA-interleave) end to end: ingest -> hallucinate -> distort (every image) ->
sample (all images in one prompt) -> filter (text, image and contrast pairs) -> export (`images` and
`rejected_images` lists) -> one DPO step with a processor that takes several images (tiny Qwen2-VL)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import materialised
from test_ingest_records import turn

from povid_cli.core.store import Dataset

pytestmark = pytest.mark.train


def read(data, output) -> list[dict]:
    t = Dataset.open(str(data)).read_all(output)
    return t.to_pylist() if t is not None else []


@pytest.mark.slow
def test_a_multi_image_item_goes_from_ingest_to_one_dpo_step(cli, sample_dir, tmp_path, tiny_vlm):
    recs = [{"id": "pair", "image": ["images/horse.png", "images/rocket.jpg"],
             "conversations": turn("<image>\n<image>\nWhat do the two pictures show?",
                                   "The first picture shows a brown horse in a field and the second a white rocket.")},
            {"id": "one", "image": "images/chelsea.png", "conversations": turn("What animal?", "A tabby cat.")}]
    ann = tmp_path / "interleave.json"
    ann.write_text(json.dumps(recs))
    data, model = tmp_path / "data", tiny_vlm("qwen2_vl")
    assert cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"]).exit_code == 0
    assert cli(["hallucinate", data, "-w", "1"]).exit_code == 0
    r = cli(["distort", data, "--size", "56", "-w", "1"])
    assert r.exit_code == 0, r.output
    multi = next(d for d in materialised(data) if d["extra_images"])  # the pixels rebuilt from the recipe
    assert multi["image_indices"] is None and len(multi["extra_images"]) == 1  # both images distorted, in order

    r = cli(["sample", data, "--model", model, "--backend", "transformers", "--n", "1", "--max-tokens", "6",
             "-t", "0", "--logprobs"])
    assert r.exit_code == 0, r.output
    sampled = {s["item_id"]: s for s in read(data, "sampled")}
    assert len(sampled) == 2 and all(s["logprobs"][0] < 0 for s in sampled.values())  # both prompts ran

    # the sampler saw both images: a direct two-image generate gives its answer, and scoring that answer under
    # the two clean images gives its log-prob (one image alone gives another)
    from povid_cli.backends.vlm import Sampling, VLMRequest, load_backend

    backend = load_backend("transformers", model=str(model), sampling=Sampling(n=1, temperature=0, max_tokens=6))
    item = next(i for i in read(data, "items") if i["extra_images"])
    ims = [multi["image"]["bytes"], multi["extra_images"][0]["bytes"]]
    [two] = backend.generate([VLMRequest(item["prompt"], ims[0], ims[1:])])
    assert sampled[item["id"]]["responses"] == two.texts
    clean = [item["image"]["bytes"], item["extra_images"][0]["bytes"]]
    [[both]] = backend.score([VLMRequest(item["prompt"], clean[0], clean[1:])], [two])
    [[first]] = backend.score([VLMRequest(item["prompt"], clean[0])], [two])
    assert sampled[item["id"]]["logprobs"][0] == pytest.approx(both, abs=1e-4) and abs(both - first) > 1e-4

    r = cli(["filter", data, "--kinds", "text,image,contrast", "--no-hallucination-check", "--keep-same-content",
             "--min-words", "0", "--min-length-ratio", "0", "--max-repetition", "1", "--keep-truncated"])
    assert r.exit_code == 0, r.output
    pairs = [p for p in read(data, "pairs") if p["item_id"] == item["id"]]
    kinds = {p["kind"] for p in pairs}
    assert {"text", "contrast"} <= kinds, kinds
    contrast = next(p for p in pairs if p["kind"] == "contrast")
    assert contrast["rejected_id"] == multi["id"]  # the pair refers to the distorted row; export rebuilds its images

    out = tmp_path / "trl"
    assert cli(["export", data, "-o", out, "--format", "trl"]).exit_code == 0
    rows = [x for f in out.glob("*.parquet") for x in pq.read_table(f).to_pylist() if x["item_id"] == item["id"]]
    assert all(len(x["images"]) == 2 for x in rows)
    [rejected] = [x["rejected_images"] for x in rows if x["kind"] == "contrast"]
    assert [x["bytes"] for x in rejected] == ims  # both distorted images, in order, as sample saw them

    for i, src in enumerate((data, out)):  # the dataset's pairs and the TRL export both train
        o = tmp_path / f"out{i}"
        r = cli(["train", src, "--model", model, "-o", o, "--schedule", "mixed", "--max-steps", "1", "--batch-size",
                 "8", "--eval-fraction", "0", "--lora-r", "4", "--lora-alpha", "8", "--max-length", "512"])
        assert r.exit_code == 0, r.output
        assert (o / "final" / "adapter_model.safetensors").exists()
        args = json.loads((o / "train_args.json").read_text())
        assert args["stages"][0]["rows"] == len(read(data, "pairs"))  # every pair fit, the multi-image ones too


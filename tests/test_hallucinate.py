"""`povid hallucinate` with the offline rules backend, on the bundled sample and on small made-up items."""

from __future__ import annotations

import random
import re

import pyarrow.parquet as pq
import pytest

from povid_cli.core.store import Dataset
from stages.hallucinate import HallucinateConfig, HallucinateStage
from stages.hallucinate_llm import diff_edits
from stages.hallucinate_rules import hallucinate


def rows_of(data, output="hallucinated") -> list[dict]:
    return Dataset.open(str(data)).read_all(output).to_pylist()


def items_of(data) -> dict[str, dict]:
    return {r["id"]: r for r in Dataset.open(str(data)).read_all("items").to_pylist()}


def test_every_sample_item_gets_a_different_rejected_answer(cli, sample_data):
    r = cli(["hallucinate", sample_data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    items, rows = items_of(sample_data), rows_of(sample_data)
    assert len(rows) == len(items) == 22
    assert {row["item_id"] for row in rows} == set(items)
    for row in rows:
        chosen = items[row["item_id"]]["chosen"]
        assert row["id"] == f"{row['item_id']}-h0" and row["backend"] == "rules" and row["prompt_version"] == "rules-v1"
        assert row["rejected"] != chosen and 1 <= len(row["edits"]) <= 6
        assert set(row["hallucination_types"]) <= {"object", "attribute", "relation", "reasoning"}
        assert row["hallucination_types"] == sorted({e["type"] for e in row["edits"]})
        for e in row["edits"]:  # every edit is really in the rejected answer
            assert e["to"] in row["rejected"]
    with_object = [r for r in rows if "object" in r["hallucination_types"]]
    assert len(with_object) > len(rows) / 2  # most carry an injected object ...
    others = [r for r in rows if "object" not in r["hallucination_types"]]
    assert all(set(r["hallucination_types"]) & {"attribute", "relation", "reasoning"} for r in others)  # ... the rest another kind


def test_deterministic_per_seed_and_independent_of_workers(cli, sample_data, tmp_path):
    assert cli(["hallucinate", sample_data, "--workers", "1"]).exit_code == 0
    first = {r["id"]: r["rejected"] for r in rows_of(sample_data)}
    other = tmp_path / "other"
    assert cli(["ingest", _sample_json(), "-o", other, "-w", "1"]).exit_code == 0
    assert cli(["hallucinate", other, "--workers", "2"]).exit_code == 0
    assert {r["id"]: r["rejected"] for r in rows_of(other)} == first
    third = tmp_path / "third"
    assert cli(["ingest", _sample_json(), "-o", third, "-w", "1"]).exit_code == 0
    assert cli(["hallucinate", third, "--seed", "7", "-w", "1"]).exit_code == 0
    changed = sum(first[k] != v for k, v in ((r["id"], r["rejected"]) for r in rows_of(third)))
    assert changed >= 5  # another seed, other edits


def _sample_json():
    from conftest import SAMPLE

    return SAMPLE / "llava.json"


def test_rerun_is_a_no_op_and_n_variants(cli, sample_data):
    assert cli(["hallucinate", sample_data, "-w", "1"]).exit_code == 0
    r = cli(["hallucinate", sample_data, "-w", "1"])
    assert r.exit_code == 0 and "0 shard(s) run" in r.output + (r.stderr or "")
    r = cli(["hallucinate", sample_data, "-w", "1", "--n", "3", "--limit", "4"])
    assert r.exit_code == 0, r.output
    rows = rows_of(sample_data)
    assert sorted({row["id"][-3:] for row in rows}) == ["-h0", "-h1", "-h2"]


def test_items_without_an_answer_fail_with_a_reason(cli, make_items):
    data = make_items([{"chosen": "A red cup sits on a table."}, {"chosen": "", "has_answer": False, "prompt": "Q?"}])
    r = cli(["hallucinate", data, "-w", "1"])
    assert r.exit_code == 1 and "no answer" in r.output + (r.stderr or "")
    failed = pq.read_table(str(data / "failed" / "hallucinate")).to_pylist()
    assert len(failed) == 1 and failed[0]["kind"] == "no_answer" and not failed[0]["retryable"]
    assert len(rows_of(data)) == 1


def run_rules(text, prompt="Describe this image in detail.", task="caption", seed=0):
    return hallucinate(text, task=task, prompt=prompt, rng=random.Random(f"{seed}:x"))


def test_yes_no_answers_flip_and_the_reasoning_follows():
    rej, edits = run_rules("No, the photograph is black and white.", "Is the photograph in color?", "vqa")
    assert rej == "Yes, the photograph is in color."
    assert {e.type for e in edits} == {"reasoning"}
    rej, _ = run_rules("No, it is dusk or night: the sky is dark blue and the launch pad lights are on.",
                       "Is it daytime in the image?", "vqa")
    assert rej.startswith("Yes, it is daytime") and "dark" not in rej
    rej, _ = run_rules("Yes, there is a dog on the sofa.", "Is there a dog?", "vqa")
    assert rej.startswith("No, there is not a dog"), rej
    assert "beside the dog" not in rej and "next to the dog" not in rej  # nothing next to what it now denies


def test_reasoning_conclusion_flips():
    text = "The pier is narrow and has no railings, so you should watch your footing."
    rej, edits = run_rules(text, "What should I be careful about?", "reasoning")
    assert "reasoning" in {e.type for e in edits}
    assert "you do not need to" in rej or "has railings" in rej or "wide" in rej


@pytest.mark.parametrize("seed", range(12))
def test_fluency_articles_and_agreement(seed):
    texts = ["There is one helmet, which the astronaut holds in her arms.",
             "An orange cat sleeps on a wooden bench next to an umbrella.",
             "A knife and an apple lie on the left side of a small table."]
    for t in texts:
        rej, _ = run_rules(t, "How many helmets are there?" if "helmet" in t else "Describe.", "vqa", seed)
        assert not re.search(r"\ba [aeiou]", rej, re.IGNORECASE), rej
        assert not re.search(r"\ban [bcdfgjklmnpqrstvwxz]", rej, re.IGNORECASE), rej
        assert not re.search(r"\bthere is (two|three|four|five|six)\b", rej, re.IGNORECASE), rej
        assert not re.search(r"\b(two|three|four|five|six) helmet\b", rej), rej
        assert "  " not in rej and rej[0].isupper() and rej.endswith(".")


def test_count_change_keeps_agreement():
    rej, edits = run_rules("There is one helmet, which she holds.", "How many helmets are there?", "vqa")
    assert re.match(r"There are (two|three|four) helmets, which", rej), rej
    assert edits[0].type == "attribute" and edits[0].src == "There is one helmet"


def test_co_occurring_object_is_absent_and_named_in_an_edit():
    rej, edits = hallucinate("A knife lies on a cutting board.", task="caption", prompt="Describe.",
                             rng=random.Random("1:y"), p_object=1.0)
    obj = [e for e in edits if e.type == "object"]
    assert obj and obj[0].src == "" and obj[0].dst in rej
    assert re.search(r"\b(fork|spoon|bowl|sandwich)\b", obj[0].dst)


def test_scene_without_coco_objects_still_gets_an_object():
    rej, edits = hallucinate("A deep field image of space with many galaxies.", task="caption", prompt="Describe.",
                             rng=random.Random("2:z"), p_object=1.0)
    assert any(e.type == "object" for e in edits) and rej != "A deep field image of space with many galaxies."


def test_config_hash_ignores_speed_settings_and_rules_ignore_prompts():
    from povid_cli.backends.api_config import APIConfig

    a = HallucinateStage(HallucinateConfig(backend="openai", api=APIConfig(api_base="http://a/v1", concurrency=4, timeout=5)))
    b = HallucinateStage(HallucinateConfig(backend="openai", api=APIConfig(
        api_base="http://b/v1", concurrency=64, rpm=100, cache_dir="/tmp/x", api_key_env="OTHER", max_retries=1)))
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != HallucinateStage(HallucinateConfig(backend="openai", model="other")).config_hash()
    assert HallucinateStage(HallucinateConfig()).prompts == ()


def test_bad_backend_is_one_clear_line(cli, sample_data):
    r = cli(["hallucinate", sample_data, "--backend", "nope"])
    assert r.exit_code == 2 and "--backend must be one of rules, openai, got 'nope'" in r.output + (r.stderr or "")


def test_diff_edits_classifies_free_text_changes():
    edits = diff_edits("A red cup on a table.", "A blue cup under a table. A fork lies next to it.")
    kinds = {e["type"] for e in edits}
    assert {"attribute", "relation", "object"} <= kinds


def test_the_asked_attribute_is_the_one_changed():
    rej, edits = run_rules("The motorcycle is red, with a black seat.", "What color is the motorcycle?", "vqa")
    assert rej.startswith("The motorcycle is ") and not rej.startswith("The motorcycle is red") and edits[0].src == "red"
    rej, _ = run_rules("The horse is facing to the right.", "Which direction is the horse facing?", "vqa")
    assert "to the left" in rej
    rej, edits = run_rules("The image shows a tabby cat.", "What animal is in the image?", "vqa")
    assert edits[0].type == "object" and edits[0].src == "cat" and "cat" not in rej

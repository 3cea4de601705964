"""On-policy corrections (OPA-DPO / RLAIF-V): `sample --clean`, `correct --backend rules|openai` and
`filter --kinds ...,corrected`, against the fake OpenAI-compatible server (tests/fake_openai.py) playing
the target model (and, for `correct --backend openai`, the corrector).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from fake_openai import FakeOpenAI, last_user_text
from povid_cli.core.stage import Batch
from povid_cli.core.store import Dataset
from stages.correct import CorrectConfig, CorrectStage
from stages.correct_llm import parse_response
from stages.correct_rules import correct, ground_truth

# What the target model says about every image: two true sentences around a hallucinated dog (and, asked
# what animal it sees, one sentence about a man on a horse: on the cat's photo nothing of it is true).
ANSWER = "A man rides a brown horse along the beach.\nA small dog runs beside the horse!  The sky is clear and blue."
TRUE_PART = "A man rides a brown horse along the beach.\nThe sky is clear and blue."
ANIMAL = "It is a horse with a man on it."


def target_model(body: dict) -> str:
    return ANIMAL if "What animal" in last_user_text(body) else ANSWER
ITEMS = [  # COCO-style: ground-truth objects, and a chosen answer
    {"prompt": "Describe this image in detail.", "chosen": "A person riding a horse on a beach.", "objects": ["person", "horse"]},
    {"prompt": "What is happening here?", "chosen": "A rider and a dog on a beach.", "objects": ["person", "horse", "dog"]},
    {"prompt": "What animal is this?", "chosen": "A cat sleeping on a sofa.", "objects": ["cat", "couch"]},
]


def read(data, output):
    ds = Dataset.open(str(data))
    t = ds.read_all(output)
    return [] if t is None else t.to_pylist()


def failed_rows(data, stage):
    d = data / "failed" / stage
    return pq.read_table(str(d)).to_pylist() if d.exists() and any(d.iterdir()) else []


@pytest.fixture
def model_server():
    with FakeOpenAI(reply=target_model) as srv:
        yield srv


@pytest.fixture
def answered(make_items, cli, model_server):
    """3 items whose clean images the target model answered (no distort: `sample --clean` alone)."""
    data = make_items(ITEMS)
    r = cli(["sample", data, "--backend", "openai", "--api-base", model_server.url, "--model", "target", "--clean"])
    assert r.exit_code == 0, r.output
    return data


# -- the rules corrector, pure --------------------------------------------------------------------------
TRUTH = {"person", "horse"}


@pytest.mark.parametrize("text, want, cut", [
    (ANSWER, TRUE_PART, ["A small dog runs beside the horse!"]),
    ("A man rides a horse, and a dog runs beside them. The sky is blue.", "A man rides a horse. The sky is blue.",
     [", and a dog runs beside them"]),
    ("A man rides a horse; a cat sleeps nearby.", "A man rides a horse.", ["; a cat sleeps nearby"]),
    ("A man rides a horse, and a dog chases a cat, which is black. Done.", "A man rides a horse. Done.",
     [", and a dog chases a cat", ", which is black"]),  # the attached clause goes with the one it hangs on
    ("There are a horse, a man, and a fork.", "", ["There are a horse, a man, and a fork."]),  # a list: unsure
    ("A dog sleeps. A man rides a horse.", "A man rides a horse.", ["A dog sleeps."]),
    ("  A man rides a horse.  A fork lies there.  ", "  A man rides a horse.  ", ["A fork lies there."]),
    ("1. A man rides a horse.\n2. A dog barks.\n", "1. A man rides a horse.\n", ["2. A dog barks."]),
])
def test_rules_cut_absent_objects_and_keep_every_other_character(text, want, cut):
    got, changes = correct(text, TRUTH)
    assert got == want
    assert [c["from"] for c in changes] == cut and all(c["to"] == "" for c in changes)
    assert all(c["reason"].startswith("names") or c["reason"] == "attached to a cut clause" for c in changes)


def test_rules_leave_true_and_negated_mentions_alone():
    for text in ("There is no dog in the picture. A man rides a horse.", "A man without a cat rides a horse.",
                 "A person on a horse, which is brown."):
        assert correct(text, TRUTH) == (text, [])


def test_ground_truth_is_the_objects_and_what_the_chosen_answer_names():
    assert ground_truth({"objects": ["people", "horse"], "chosen": "A rider and a dog."}) == {"person", "horse", "dog"}
    assert ground_truth({"objects": None, "chosen": "A cat on a sofa."}) == {"cat", "couch"}
    assert ground_truth({"objects": None, "chosen": "", "has_answer": False}) is None


# -- the stage, pure ------------------------------------------------------------------------------------
def _sampled(item_id, variant, *responses):
    return {"id": f"{item_id}-{variant}", "item_id": item_id, "variant": variant, "responses": list(responses),
            "finish_reasons": ["stop"] * len(responses), "model": "target"}


def test_stage_corrects_clean_answers_by_default_and_all_variants_when_asked():
    items = [{"id": "a", "prompt": "p", "chosen": "A man on a horse.", "objects": ["person", "horse"]},
             {"id": "b", "prompt": "p", "chosen": "", "has_answer": False, "objects": None}]
    sampled = [_sampled("a", "clean", ANSWER, ""), _sampled("a", "diffusion", "A dog. A horse."),
               _sampled("b", "clean", "A dog.")]
    res = CorrectStage(CorrectConfig()).process(Batch(items, {"sampled": sampled}))
    rows = {r["id"]: r for r in res.outputs["corrected"]}
    assert set(rows) == {"a-clean#0", "a-clean#1"}
    r = rows["a-clean#0"]
    assert (r["item_id"], r["sampled_id"], r["response_index"], r["variant"]) == ("a", "a-clean", 0, "clean")
    assert (r["original"], r["corrected"], r["removed_objects"]) == (ANSWER, TRUE_PART, ["dog"])
    assert r["changes"] == [{"from": "A small dog runs beside the horse!", "to": "",
                             "reason": "names an absent object: dog"}]
    assert (r["backend"], r["model"], r["prompt_version"]) == ("rules", None, "correct-rules-v1")
    assert rows["a-clean#1"]["corrected"] == "" and rows["a-clean#1"]["changes"] == []  # empty stays empty
    assert [(f["id"], f["kind"], f["retryable"]) for f in res.failed] == [("b-clean#0", "no_truth", False)]
    assert res.usage["answers"] == 2 and res.usage["corrected"] == 1

    every = CorrectStage(CorrectConfig(variants="all")).process(Batch(items[:1], {"sampled": sampled[:2]}))
    got = {r["id"]: r["corrected"] for r in every.outputs["corrected"]}
    assert got == {"a-clean#0": TRUE_PART, "a-clean#1": "", "a-diffusion#0": "A horse."}


def test_llm_replies_become_corrections_or_failed_rows_with_reasons():
    corrected, changes = parse_response("Corrected answer: A man rides a brown horse. The sky is clear.",
                                        "A man rides a brown horse. A dog barks. The sky is clear.", TRUTH)
    assert corrected == "A man rides a brown horse. The sky is clear."
    assert changes == [{"from": "A dog barks.", "to": "", "reason": "names an absent object: dog"}]
    assert parse_response("NONE", "A dog.", TRUTH) == ("", [{"from": "A dog.", "to": "", "reason": "names an absent object: dog"}])
    assert parse_response("A horse.", "A horse.", TRUTH) == ("A horse.", [])
    from povid_cli.core.errors import RowError

    for reply, kind, retryable in (("", "empty", True), ("I'm sorry, but I can't help with that.", "refusal", False)):
        with pytest.raises(RowError) as e:
            parse_response(reply, "A dog.", TRUTH)
        assert (e.value.kind, e.value.retryable) == (kind, retryable)


# -- end to end: sample --clean -> correct -> filter --kinds ...,corrected ------------------------------------
def test_sample_clean_answers_the_clean_image_without_distort(answered, model_server):
    rows = read(answered, "sampled")
    items = {i["id"]: i for i in read(answered, "items")}
    assert sorted(r["id"] for r in rows) == sorted(f"{i}-clean" for i in items)
    assert all(r["variant"] == "clean" and r["responses"] in ([ANSWER], [ANIMAL]) for r in rows)
    body = model_server.bodies[0]
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_rules_correct_and_filter_make_corrected_pairs_with_the_right_drops(answered, cli):
    r = cli(["correct", answered])
    assert r.exit_code == 0, r.output
    corrected = {row["item_id"]: row for row in read(answered, "corrected")}
    items = {i["chosen"]: i["id"] for i in read(answered, "items")}
    horse, dog, cat = (items[it["chosen"]] for it in ITEMS)
    assert corrected[horse]["corrected"] == TRUE_PART  # the dog sentence gone, the others verbatim
    assert corrected[dog]["corrected"] == ANSWER and corrected[dog]["changes"] == []  # the dog is there
    assert corrected[cat]["corrected"] == "" and corrected[cat]["removed_objects"] == ["horse", "person"]

    r = cli(["filter", answered, "--kinds", "text,image,corrected"])
    assert r.exit_code == 0, r.output
    [pair] = read(answered, "pairs")
    assert (pair["kind"], pair["item_id"], pair["variant"]) == ("corrected", horse, "clean")
    assert (pair["chosen"], pair["rejected"]) == (TRUE_PART, ANSWER)
    assert (pair["rejected_source"], pair["rejected_id"], pair["model"]) == ("sampled", f"{horse}-clean#0", "target")
    assert pair["hallucinated_objects"] == ["dog"] and pair["hallucination_types"] == ["object"]
    assert pair["finish_reason"] == "stop"  # from the sampled row the answer came from
    drops = {d["item_id"]: d["drop_reason"] for d in read(answered, "dropped")}
    assert drops == {dog: "no_hallucination", cat: "empty"}

    # The default kinds make no pair of the clean answers (they are no image pairs): nothing to keep.
    r = cli(["filter", answered])
    assert r.exit_code == 0, r.output
    assert read(answered, "pairs") == []


def test_openai_corrector_against_the_fake_server_with_a_refusal(answered, cli):
    items = {i["chosen"]: i for i in read(answered, "items")}
    with FakeOpenAI(reply=lambda body: TRUE_PART) as srv:
        srv.fault("refusal", times=1, match="cat, couch")  # the cat item's request: a refusal, not a correction
        r = cli(["correct", answered, "--backend", "openai", "--api-base", srv.url, "--model", "fixer",
                 "--send-image"])
        assert r.exit_code == 1 and "1 row(s) failed" in r.output
        assert srv.count == 3
        [body] = [b for b in srv.bodies if "Objects in the image: person, horse\n" in last_user_text(b)]
        text = last_user_text(body)
        assert "Model answer: " + ANSWER in text and "Reference answer: " + ITEMS[0]["chosen"] in text
        assert any(p.get("type") == "image_url" for p in body["messages"][0]["content"])
        assert (body["model"], body["temperature"]) == ("fixer", 0.0)
    rows = {row["item_id"]: row for row in read(answered, "corrected")}
    horse = items[ITEMS[0]["chosen"]]["id"]
    cat = items[ITEMS[2]["chosen"]]["id"]
    assert set(rows) == {horse, items[ITEMS[1]["chosen"]]["id"]}
    assert rows[horse]["corrected"] == TRUE_PART and rows[horse]["backend"] == "openai"
    assert rows[horse]["model"] == "fixer" and rows[horse]["prompt_version"].startswith("correct@")
    assert rows[horse]["changes"] == [{"from": "A small dog runs beside the horse!", "to": "",
                                       "reason": "names an absent object: dog"}]
    [f] = failed_rows(answered, "correct")
    assert (f["id"], f["kind"], f["retryable"]) == (f"{cat}-clean#0", "refusal", False)
    usage = json.loads((answered / "manifest.json").read_text())["stages"]["correct"]["usage"]
    assert usage["requests"] >= 3 and usage["answers"] == 3


def test_correct_and_filter_kinds_say_what_to_run_first(make_items, cli, model_server, tmp_path):
    data = make_items(ITEMS)
    r = cli(["correct", data])
    assert r.exit_code == 1 and "run `povid sample" in r.output and "--clean" in r.output
    r = cli(["filter", data, "--kinds", "corrected"])
    assert r.exit_code == 2 and "run `povid sample" in r.output and "povid correct" in r.output
    r = cli(["filter", data, "--kinds", "text,bogus"])
    assert r.exit_code == 2 and "bogus" in r.output
    # Answers on distorted images only: correct says where the clean ones come from.
    assert cli(["distort", data, "--size", "32", "--workers", "1"]).exit_code == 0
    assert cli(["sample", data, "--backend", "openai", "--api-base", model_server.url, "--model", "m"]).exit_code == 0
    r = cli(["correct", data])
    assert r.exit_code == 1 and "no answers on the clean images" in r.output and "--variants all" in r.output
    assert cli(["correct", data, "--variants", "all"]).exit_code == 0


# -- sample --clean beside distorted images; hashes of existing datasets ----------------------------------
def test_sample_clean_needs_no_distorted_images():
    """(A multi-image item's clean images all go into one prompt since issue 15: tests/test_multi_image.py.)"""
    from stages.sample import SampleConfig, SampleStage

    stage = SampleStage(SampleConfig(model="m", backend="openai", clean=True))
    assert stage.reads == ("items",) and stage.optional_reads == ("distorted",)
    assert SampleStage(SampleConfig(model="m", backend="openai")).reads == ("items", "distorted")


def test_sample_clean_beside_distorted_variants_and_plain_sample_is_unchanged(make_items, cli, model_server):
    data = make_items(ITEMS[:2])
    assert cli(["distort", data, "--size", "32", "--workers", "1"]).exit_code == 0
    base = ["sample", data, "--backend", "openai", "--api-base", model_server.url, "--model", "m"]
    assert cli(base).exit_code == 0
    assert {r["variant"] for r in read(data, "sampled")} == {"diffusion"}
    r = cli(base + ["--clean"])
    assert r.exit_code == 0, r.output
    rows = read(data, "sampled")
    assert sorted(r["variant"] for r in rows) == ["clean", "clean", "diffusion", "diffusion"]
    assert {r["id"] for r in rows if r["variant"] == "clean"} == {f"{i['id']}-clean" for i in read(data, "items")}


def test_default_configs_keep_the_hashes_of_existing_datasets():
    """Adding sample's `clean` and filter's `kinds` must not re-run what users already have: these are the
    hashes of the default configs before the options existed (main at 69a815f). Change them only on purpose."""
    from stages.filter import FilterConfig, FilterStage
    from stages.sample import SampleConfig, SampleStage

    assert FilterStage(FilterConfig()).config_hash() == "c803af145a77e4b2"
    assert FilterStage(FilterConfig(kinds=("image", "text"))).config_hash() == "c803af145a77e4b2"
    assert FilterStage(FilterConfig(kinds=("text", "image", "corrected"))).config_hash() != "c803af145a77e4b2"
    assert SampleStage(SampleConfig(model="m", backend="openai")).config_hash() == "b2a76f5d020e80ed"
    assert SampleStage(SampleConfig(model="m", backend="openai", clean=True)).config_hash() != "b2a76f5d020e80ed"


def test_filter_scores_corrected_candidates():
    from stages.filter import FilterConfig, FilterStage

    item = {"id": "a", "prompt": "Describe.", "chosen": "A man on a horse.", "objects": ["person", "horse"],
            "image": None}
    corr = [{"id": f"a-clean#{i}", "item_id": "a", "sampled_id": "a-clean", "response_index": i, "variant": "clean",
             "original": o, "corrected": c, "changes": ch, "removed_objects": []}
            for i, (o, c, ch) in enumerate([
                (ANSWER, TRUE_PART, [{"from": "A small dog runs beside the horse!", "to": "", "reason": "x"}]),
                ("A man rides a horse near the sea.", "A man rides a horse near the sea.", []),
                ("A dog.", "", [{"from": "A dog.", "to": "", "reason": "x"}])])]
    sampled = [_sampled("a", "clean", ANSWER, "A man rides a horse near the sea.", "A dog.")]
    res = FilterStage(FilterConfig(kinds=("corrected",))).process(Batch([item], {"sampled": sampled, "corrected": corr}))
    [kept] = res.outputs["pairs"]
    assert (kept["kind"], kept["chosen"], kept["rejected"], kept["rejected_id"]) == ("corrected", TRUE_PART, ANSWER,
                                                                                     "a-clean#0")
    assert kept["hallucinated_objects"] == ["dog"] and kept["similarity"] < 1
    assert sorted((d["rejected_id"], d["drop_reason"]) for d in res.outputs["dropped"]) == [
        ("a-clean#1", "no_hallucination"), ("a-clean#2", "empty")]
    # Without the kind, the same rows make nothing (the clean answers are no image pairs either).
    none = FilterStage(FilterConfig()).process(Batch([item], {"sampled": sampled, "corrected": corr}))
    assert none.outputs["pairs"] == [] and none.outputs["dropped"] == []


# -- synth: corrected pairs only when asked for -------------------------------------------------------------
def _photos(root, n=2):
    from conftest import png_bytes

    root.mkdir()
    for i in range(n):
        (root / f"img{i}.png").write_bytes(png_bytes((40 * i, 90, 30), size=(32 + i, 24)))
        (root / f"img{i}.txt").write_text("A man riding a brown horse on a beach.")
    return root


def test_synth_kinds_corrected_answers_the_clean_images_and_runs_correct(cli, model_server, tmp_path):
    src, data = _photos(tmp_path / "photos"), tmp_path / "data"
    args = ["synth", src, "-o", data, "--workers", "1", "--vlm", "target", "--sample-backend", "openai",
            "--api-base", model_server.url]
    r = cli(args + ["--kinds", "text,image,corrected"])
    assert r.exit_code == 0, r.output
    m = json.loads((data / "manifest.json").read_text())
    assert m["synth"]["config"]["sample"]["clean"] is True and m["synth"]["config"]["filter"]["kinds"] == [
        "text", "image", "corrected"]
    assert {r["variant"] for r in read(data, "sampled")} == {"clean", "diffusion"}
    assert [c["corrected"] for c in read(data, "corrected")] == [TRUE_PART, TRUE_PART]
    kinds = [p["kind"] for p in read(data, "pairs")]
    assert kinds.count("corrected") == 1 and "text" in kinds  # the second is a duplicate of the first
    assert "correct" in r.stdout and "corrected 1" in r.stdout
    export = [r for f in sorted((data / "export" / "trl").glob("train-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(e["kind"] for e in export) == sorted(kinds)

    r = cli(["synth", src, "-o", tmp_path / "other", "--kinds", "corrected"])
    assert r.exit_code == 2 and "--vlm" in r.output
    r = cli(["synth", src, "-o", tmp_path / "other", "--kinds", "text,bogus"])
    assert r.exit_code == 2 and "--kinds must be one of text, image, contrast, corrected, got 'bogus'" in r.output
    assert not (tmp_path / "other").exists()


def test_povid_toml_configures_correct_and_filter_kinds(tmp_path):
    from povid_cli.synth import config_file
    from povid_cli.synth.plan import resolve

    assert "[correct]" in config_file.example_toml() and "# kinds = [\"text\", \"image\"]" in config_file.example_toml()
    toml = {"filter": {"kinds": ["text", "corrected"]}, "correct": {"variants": "all"}, "sample": {"model": "m",
                                                                                                 "backend": "openai"}}
    plan = resolve(toml, ["src"], {})
    stages = dict(plan.stages)
    assert [n for n, _ in plan.stages] == ["hallucinate", "distort", "sample", "correct", "filter"]
    assert stages["correct"].config.variants == "all" and stages["sample"].config.clean is True
    assert stages["filter"].config.kinds == ("text", "corrected")
    plain = resolve({"sample": {"model": "m", "backend": "openai"}}, ["src"], {})
    assert "correct" not in dict(plain.stages) and dict(plain.stages)["sample"].config.clean is False

"""`povid ingest` reads preference datasets in their own layouts, recognised from their columns, with no flag.

Each test builds a small file in one public dataset's layout from the bundled sample and checks that every
record is accounted for (records = items + skipped + failed) and that `povid export` before `filter`
holds every given pair (given pairs out = given pairs in); then that ingesting it again adds nothing.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest_helpers import again_adds_nothing, check_counts, image_bytes, image_struct, sample_rows
from povid_cli.core.schemas import IMAGE
from povid_cli.core.store import Dataset

TEMPLATE = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: <image>\n{q} ASSISTANT:")


def test_rlaif_v_hub_folder_keeps_three_pairs_on_one_image_and_question(cli, tmp_path):
    """openbmb/RLAIF-V-Dataset: data/*.parquet with ds_name, image{bytes,path}, question, chosen, rejected, ..."""
    rows = sample_rows()[:6]
    q = rows[0]["question"]
    table = [  # three pairs on one (image, question): two share their chosen answer, one has its own
        (rows[0], q, rows[0]["answer"], "A man irons a dog on a red bus."),
        (rows[0], q, rows[0]["answer"], "Two men play chess on the roof of a taxi."),
        (rows[0], q, "A man ironing on a taxi.", "A woman ironing in a kitchen."),
    ] + [(r, r["question"], r["answer"], r["answer"].replace("a", "the", 1) + " There is a cat.") for r in rows[1:]]
    recs = [{"ds_name": "sample", "image": image_struct(r["image"]), "question": qq, "chosen": c, "rejected": rej,
             "origin_dataset": "povid", "origin_split": "{}", "idx": str(i), "image_path": r["image"]}
            for i, (r, qq, c, rej) in enumerate(table)]
    schema = pa.schema([("ds_name", pa.string()), ("image", IMAGE), ("question", pa.string()), ("chosen", pa.string()),
                        ("rejected", pa.string()), ("origin_dataset", pa.string()), ("origin_split", pa.string()),
                        ("idx", pa.string()), ("image_path", pa.string())])
    src = tmp_path / "RLAIF-V-Dataset"
    (src / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(recs[:4], schema=schema), src / "data/train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(recs[4:], schema=schema), src / "data/train-00001-of-00002.parquet")
    data = tmp_path / "data"
    r = cli(["ingest", src, "-o", data, "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "8 records -> 7 new items, 1 already present; 8 given pairs (8 new)" in r.output
    pairs = [(qq, c, rej) for _, qq, c, rej in table]
    check_counts(cli, data, tmp_path / "out", records=8, items=8, pairs=pairs)
    items = Dataset.open(str(data)).read_all("items").to_pylist()
    assert {i["source"] for i in items} == {"data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"}
    assert sorted(i["source_id"] for i in items) == ["0", "2", "3", "4", "5", "6", "7"]
    assert next(i for i in items if i["source_id"] == "0")["image"]["bytes"] == image_bytes(rows[0]["image"])
    again_adds_nothing(cli, ["ingest", src, "-o", data, "--workers", "1"], data)


def test_trl_explicit_prompt_rlaif_v_formatted_with_a_multi_image_row(cli, tmp_path):
    """HuggingFaceH4/rlaif-v_formatted (TRL's layout): images (list), prompt / chosen / rejected as messages."""
    rows = sample_rows()[:3]
    msg = lambda role, text, n=0: [{"role": role, "content": [{"type": "image", "text": None}] * n  # noqa: E731
                                     + [{"type": "text", "text": text}]}]
    recs = [{"chosen": msg("assistant", r["answer"]), "rejected": msg("assistant", "Nothing but a fork."),
             "images": [image_struct(r["image"])], "prompt": msg("user", r["question"], 1)} for r in rows]
    recs.append({"chosen": msg("assistant", "Both show space."), "rejected": msg("assistant", "Both show horses."),
                 "images": [image_struct("images/astronaut.png"), image_struct("images/rocket.jpg")],
                 "prompt": msg("user", "What do the two pictures share?", 2)})
    f = tmp_path / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(recs), f)
    data = tmp_path / "data"
    r = cli(["ingest", f, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    pairs = [(r["question"], r["answer"], "Nothing but a fork.") for r in rows]
    pairs.append(("What do the two pictures share?", "Both show space.", "Both show horses."))
    check_counts(cli, data, tmp_path / "out", records=4, items=4, pairs=pairs)
    multi = next(i for i in Dataset.open(str(data)).read_all("items").to_pylist() if i["extra_images"])
    assert multi["image"]["bytes"] == image_bytes("images/astronaut.png")
    assert [im["bytes"] for im in multi["extra_images"]] == [image_bytes("images/rocket.jpg")]
    again_adds_nothing(cli, ["ingest", f, "-o", data, "--workers", "1"], data)


def test_trl_implicit_prompt_jsonl(cli, tmp_path):
    rows = sample_rows()[:3]
    recs = [{"image": r["image"],
             "chosen": [{"role": "user", "content": "<image>\n" + r["question"]}, {"role": "assistant", "content": r["answer"]}],
             "rejected": [{"role": "user", "content": "<image>\n" + r["question"]}, {"role": "assistant", "content": "A zebra."}]}
            for r in rows]
    f = tmp_path / "implicit.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in recs))
    data = tmp_path / "data"
    r = cli(["ingest", f, "--image-root", str(tmp_path.parent / "nowhere"), "-o", data, "--workers", "1"])
    assert r.exit_code == 1 and "image cannot be read" in r.output  # paths resolve against --image-root
    data = tmp_path / "data2"
    from ingest_helpers import SAMPLE

    r = cli(["ingest", f, "--image-root", SAMPLE, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    check_counts(cli, data, tmp_path / "out", records=3, items=3,
                 pairs=[(r["question"], r["answer"], "A zebra.") for r in rows])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_vlfeedback_best_worst_all_pairs_and_ties(cli, tmp_path, fmt):
    """MMInstruction/VLFeedback: id, prompt, models, completions[{model, response, annotations{aspect{Rating,
    Rationale}}}], img_path (JSONL) or image (the Hub's Parquet, where `datasets` stores the completions as a
    dict of lists); ratings are strings, "N/A" does not count."""
    import shutil

    from ingest_helpers import SAMPLE

    shutil.copytree(SAMPLE / "images", tmp_path / "merged_images")
    rows = sample_rows()[:3]

    def comp(model, text, h, v, e="N/A"):
        notes = {"Helpfulness": {"Rating": str(h), "Rationale": "."}, "Visual Faithfulness": {"Rating": str(v), "Rationale": "."},
                 "Ethical Considerations": {"Rating": str(e), "Rationale": "."}}
        return {"model": model, "response": text, "annotations": notes}

    recs = [
        {"id": "a", "prompt": rows[0]["question"], "img_path": "merged_images/" + rows[0]["image"].split("/")[-1],
         "models": ["m1", "m2", "m3"], "completions": [comp("m1", "good", 5, 5), comp("m2", "bad", 1, 2),
                                                        comp("m3", "middling", 3, 3)]},
        {"id": "b", "prompt": rows[1]["question"], "img_path": "merged_images/" + rows[1]["image"].split("/")[-1],
         "models": ["m1", "m2"], "completions": [comp("m1", "same", 4, 4), comp("m2", "also same", 4, 4)]},  # a tie
        {"id": "c", "prompt": rows[2]["question"], "img_path": "merged_images/" + rows[2]["image"].split("/")[-1],
         "models": ["m1", "m2"], "completions": [comp("m1", "fine", 4, 5, 5), comp("m2", "worse", 4, 4, 5)]},
    ]
    f = tmp_path / "vlfeedback_80k.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in recs))
    if fmt == "parquet":
        for x in recs:
            x["image"] = image_struct("images/" + x.pop("img_path").split("/")[-1])
            x["completions"] = {k: [c[k] for c in x["completions"]] for k in ("annotations", "model", "response")}
        f = tmp_path / "train-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(recs), f)
    data = tmp_path / "data"
    r = cli(["ingest", f, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output  # the tie is skipped, not failed
    q0, q2 = rows[0]["question"], rows[2]["question"]
    check_counts(cli, data, tmp_path / "out", records=3, items=2, skipped={"no_pair": 1},
                 pairs=[(q0, "good", "bad"), (q2, "fine", "worse")])
    models = {g["rejected"]: g["model"] for g in Dataset.open(str(data)).read_all("given").to_pylist()}
    assert models == {"bad": "m2", "worse": "m2"}

    data = tmp_path / "all"
    r = cli(["ingest", f, "-o", data, "--binarize", "all-pairs", "--workers", "1"])
    assert r.exit_code == 0, r.output
    check_counts(cli, data, tmp_path / "out-all", records=4, items=3, skipped={"no_pair": 1},
                 pairs=[(q0, "good", "bad"), (q0, "good", "middling"), (q0, "middling", "bad"), (q2, "fine", "worse")])
    again_adds_nothing(cli, ["ingest", f, "-o", data, "--binarize", "all-pairs", "--workers", "1"], data)


@pytest.mark.parametrize("shape", ["dict", "list"])
def test_ha_dpo_desc_data_zips_chosen_and_rejected(cli, tmp_path, shape):
    """HA-DPO's desc_data.json: {image_id: {"chosen": [...], "rejected": [...]}} (or a list with image_id);
    images are Visual Genome's <image_id>.jpg, under VG_100K/ or VG_100K_2/."""
    vg = tmp_path / "VG"
    (vg / "VG_100K").mkdir(parents=True)
    (vg / "VG_100K_2").mkdir()
    (vg / "VG_100K/10.jpg").write_bytes(image_bytes("images/extreme_ironing.jpg"))
    (vg / "VG_100K_2/20.jpg").write_bytes(image_bytes("images/hubble.jpg"))
    desc = {"10": {"chosen": ["A man irons on a taxi.", "A man ironing clothes on a car."],
                   "rejected": ["A man irons on a bus.", "A woman irons on a taxi.", "A dog irons on a taxi."]},
            "20": {"chosen": ["A telescope in orbit."], "rejected": ["A telescope on a mountain."]}}
    doc = desc if shape == "dict" else [{"image_id": int(k), **v} for k, v in desc.items()]
    f = tmp_path / "desc_data.json"
    f.write_text(json.dumps(doc))
    data = tmp_path / "data"
    r = cli(["ingest", f, "--image-root", vg, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    p = "Describe this image in detail."
    pairs = [(p, "A man irons on a taxi.", "A man irons on a bus."),
             (p, "A man ironing clothes on a car.", "A woman irons on a taxi."),
             (p, "A man ironing clothes on a car.", "A dog irons on a taxi."),  # the extra rejected: the last chosen
             (p, "A telescope in orbit.", "A telescope on a mountain.")]
    check_counts(cli, data, tmp_path / "out", records=3, items=3, pairs=pairs)
    again_adds_nothing(cli, ["ingest", f, "--image-root", vg, "-o", data, "--workers", "1"], data)


def test_mdpo_prompt_loses_its_chat_template(cli, tmp_path):
    """luka-group/mDPO data: img_path, prompt (LLaVA-v1 chat template inside), chosen, rejected."""
    from ingest_helpers import SAMPLE

    rows = sample_rows()[:4]
    recs = [{"img_path": r["image"], "prompt": TEMPLATE.format(q=r["question"]), "chosen": r["answer"],
             "rejected": "A red bus. " + r["id"]} for r in rows]
    f = tmp_path / "vlfeedback_llava_10k.json"
    f.write_text(json.dumps(recs))
    data = tmp_path / "data"
    r = cli(["ingest", f, "--image-root", SAMPLE, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    check_counts(cli, data, tmp_path / "out", records=4, items=4,
                 pairs=[(r["question"], r["answer"], "A red bus. " + r["id"]) for r in rows])
    assert {i["prompt"] for i in Dataset.open(str(data)).read_all("items").to_pylist()} == {r["question"] for r in rows}


def test_opa_dpo_save_to_disk_folder_gives_two_pairs_per_row(cli, tmp_path):
    """OPA-DPO's training data, a `datasets.save_to_disk` folder: queries, image_bytes, standard_response,
    original_generate_response, AI_pseudo_response. Read with pyarrow (no `datasets` in povid's core)."""
    datasets = pytest.importorskip("datasets")
    rows = sample_rows()[:3]
    d = datasets.Dataset.from_dict({
        "queries": ["<image>\n" + r["question"] for r in rows],
        "image_bytes": [image_bytes(r["image"]) for r in rows],
        "standard_response": [r["answer"] for r in rows],
        "original_generate_response": [f"My own answer {i}, with a cat." for i in range(3)],
        "AI_pseudo_response": [f"My own answer {i}." for i in range(3)],
    })
    src = tmp_path / "opadpo_training_data-7B"
    d.save_to_disk(str(src))
    data = tmp_path / "data"
    r = cli(["ingest", src, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    pairs = [(r["question"], c, f"My own answer {i}, with a cat.") for i, r in enumerate(rows)
             for c in (f"My own answer {i}.", r["answer"])]
    check_counts(cli, data, tmp_path / "out", records=6, items=6, pairs=pairs)
    again_adds_nothing(cli, ["ingest", src, "-o", data, "--workers", "1"], data)


def test_povid_export_with_two_rejected_answers_per_item_comes_back_whole(cli, sample_dir, tmp_path):
    recs = json.loads((sample_dir / "llava.json").read_text())[:5]
    src = []
    for rec in recs:
        for j in range(2):
            src.append({**rec, "rejected_conversations": [rec["conversations"][0],
                                                          {"from": "gpt", "value": f"A fork and a knife {j}."}]})
    ann = tmp_path / "povid_in.json"
    ann.write_text(json.dumps(src))
    data = tmp_path / "data"
    r = cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "10 records -> 5 new items, 5 already present; 10 given pairs (10 new)" in r.output
    r = cli(["export", data, "-o", tmp_path / "povid", "--format", "povid"])
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "povid/povid.json").read_text())) == 10

    back = tmp_path / "back"
    r = cli(["ingest", tmp_path / "povid", "-o", back, "--workers", "1"])  # the export folder itself
    assert r.exit_code == 0, r.output
    pairs = [(x["conversations"][0]["value"].replace("<image>", "").strip(), x["conversations"][1]["value"],
              f"A fork and a knife {j}.") for x in recs for j in range(2)]
    check_counts(cli, back, tmp_path / "out", records=10, items=10, pairs=pairs)
    ids = lambda d: sorted(Dataset.open(str(d)).read_all("given").column("id").to_pylist())  # noqa: E731
    assert ids(back) == ids(data)  # the same pairs, ids and all (the sample's photos are stored as they are)


def test_sharegpt_export_comes_back_as_pairs(cli, sample_dir, tmp_path):
    recs = json.loads((sample_dir / "llava.json").read_text())[:3]
    for rec in recs:
        rec["rejected_conversations"] = [rec["conversations"][0], {"from": "gpt", "value": "Only a lamp."}]
    ann = tmp_path / "in.json"
    ann.write_text(json.dumps(recs))
    data = tmp_path / "data"
    assert cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"]).exit_code == 0
    assert cli(["export", data, "-o", tmp_path / "sg", "--format", "sharegpt"]).exit_code == 0
    back = tmp_path / "back"
    r = cli(["ingest", tmp_path / "sg/sharegpt.json", "-o", back, "--workers", "1"])
    assert r.exit_code == 0, r.output
    pairs = [(x["conversations"][0]["value"].replace("<image>", "").strip(), x["conversations"][1]["value"], "Only a lamp.")
             for x in recs]
    check_counts(cli, back, tmp_path / "out", records=3, items=3, pairs=pairs)


def test_map_reads_another_layout(cli, sample_dir, tmp_path):
    rows = sample_rows()[:3]
    f = tmp_path / "vqa.jsonl"
    f.write_text("\n".join(json.dumps({"qid": i, "q": r["question"], "a": r["answer"], "bad": "A blue whale.",
                                       "file": r["image"]}) for i, r in enumerate(rows)))
    data = tmp_path / "data"
    r = cli(["ingest", f, "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert r.exit_code == 1 and "no known layout (columns: qid, q, a, bad, file)" in r.output and "--map" in r.output
    r = cli(["ingest", f, "--image-root", sample_dir, "-o", data, "--workers", "1",
             "--map", "prompt=q,chosen=a,rejected=bad", "--map", "image=file,id=qid"])
    assert r.exit_code == 0, r.output
    check_counts(cli, data, tmp_path / "out", records=3, items=3,
                 pairs=[(r["question"], r["answer"], "A blue whale.") for r in rows])
    assert sorted(i["source_id"] for i in Dataset.open(str(data)).read_all("items").to_pylist()) == ["0", "1", "2"]
    r = cli(["ingest", f, "-o", data, "--map", "prompt"])
    assert r.exit_code == 2 and "--map entries are FIELD=COLUMN" in r.output

"""`povid filter`: kept pairs, drop reasons, scores, shard-order dedup, image pairs, POVID input."""

from __future__ import annotations

import os

import pyarrow as pa

from povid_cli.core.schemas import HALLUCINATED, SAMPLED
from povid_cli.core.store import Dataset

IRONING = ("A man in a yellow shirt is ironing clothes on an ironing board attached to the back of a "
           "yellow taxi on a city street. Tall buildings line the street.")
CAT = "A close-up of a tabby cat with green eyes and a pink nose looking slightly to the side."
COFFEE = "A cup of espresso sits on a red saucer on a wooden table, with a small metal spoon next to it."


def write_hallucinated(data, k: int, rows: list[tuple]) -> None:
    """rows: (item_id, rejected[, edits]) -> DATA/hallucinated/part-k, as the hallucinate stage would write it."""
    ds = Dataset.open(str(data))
    out = [{"id": f"{r[0]}-h{j}", "item_id": r[0], "rejected": r[1], "hallucination_types": ["object"],
            "edits": r[2] if len(r) > 2 else [], "backend": "test", "model": None, "prompt_version": "t"}
           for j, r in enumerate(rows)]
    ds.commit_shard("hallucinate", "hallucinated", k, pa.Table.from_pylist(out, schema=HALLUCINATED), f"h{k}-{len(rows)}")


def write_sampled(data, k: int, rows: list[dict]) -> None:
    ds = Dataset.open(str(data))
    out = []
    for r in rows:
        n = len(r["responses"])
        out.append({"id": f"{r['item_id']}-diffusion", "variant": "diffusion", "model": "tiny", "backend": "test",
                    "finish_reasons": r.get("finish_reasons") or ["stop"] * n, "logprobs": r.get("logprobs"),
                    "temperature": 1.0, "top_p": 1.0, "max_tokens": 64, "n": n, **r})
    ds.commit_shard("sample", "sampled", k, pa.Table.from_pylist(out, schema=SAMPLED), f"s{k}")


def item_ids(data) -> list[str]:
    return Dataset.open(str(data)).read_all("items", columns=["id"]).column("id").to_pylist()


def outputs(data):
    ds = Dataset.open(str(data))
    pairs = ds.read_all("pairs").to_pylist() if ds.has("pairs") else []
    dropped = ds.read_all("dropped").to_pylist() if ds.has("dropped") else []
    return pairs, dropped


def reasons(dropped) -> dict[str, str]:
    return {d["rejected"]: d["drop_reason"] for d in dropped}


def test_text_pairs_keep_real_hallucinations_and_drop_planted_bad_rows(make_items, cli):
    data = make_items([{"chosen": IRONING, "objects": ["person", "car"]}, {"chosen": CAT, "objects": ["cat"]},
                       {"chosen": COFFEE, "objects": ["cup", "spoon", "dining table"]}])
    a, b, c = item_ids(data)
    swap = IRONING.replace("yellow shirt", "red shirt")                      # attribute (colour)
    dog = CAT.replace("to the side", "at a dog on the side")                  # object absent from ground truth
    fork = COFFEE.replace("metal spoon", "metal fork")                        # object swap, one word
    write_hallucinated(data, 0, [
        (a, swap), (b, dog), (c, fork),
        (a, IRONING.upper().replace(".", "!")),                               # identical up to case/punctuation
        (b, "   "),                                                           # empty
        (c, "I'm sorry, but I can't see the image you provided."),           # refusal
        (b, dog.replace("tabby", "Tabby")),                                   # duplicate (case only) of `dog`
        (a, "Purple elephants dance at a disco while the moon sings opera."), # rewritten beyond recognition
        (c, COFFEE.replace("small", "tiny little").replace("sits", "rests")),  # attribute words changed -> kept
        (a, IRONING.replace("line", "border")),    # paraphrase, no hallucination
    ])
    r = cli(["filter", data])
    assert r.exit_code == 0, r.output
    assert "dropped:" in r.output
    pairs, dropped = outputs(data)
    got = reasons(dropped)
    assert got[IRONING.upper().replace(".", "!")] == "identical"
    assert got["   "] == "empty"
    assert got["I'm sorry, but I can't see the image you provided."] == "refusal"
    assert got[dog.replace("tabby", "Tabby")] == "duplicate"
    assert got["Purple elephants dance at a disco while the moon sings opera."] == "rewritten"
    assert got[IRONING.replace("line", "border")] == "no_hallucination"
    kept = {p["rejected"]: p for p in pairs}
    assert set(kept) == {swap, dog, fork, COFFEE.replace("small", "tiny little").replace("sits", "rests")}
    assert kept[dog]["hallucinated_objects"] == ["dog"]
    assert kept[fork]["hallucinated_objects"] == ["fork"]
    assert kept[swap]["changed_attributes"] == ["yellow->red"] and kept[swap]["n_edits"] == 1
    assert kept[swap]["similarity"] > 0.9
    assert all(p["kind"] == "text" and p["variant"] is None and p["rejected_source"] == "hallucinated" for p in pairs)
    # images are stored once, in items: a pair refers to its item's, and readers attach them
    assert all(p["image"] is None for p in pairs)
    from povid_cli.core.items import attach_images

    ds = Dataset.open(str(data))
    assert all(p["image"]["bytes"] for k in ds.committed_shards("pairs")
               for p in attach_images(ds, k, ds.read_shard("pairs", k).to_pylist()))
    dup = next(d for d in dropped if d["drop_reason"] == "duplicate")
    assert dup["duplicate_of"] == kept[dog]["id"] and dup["image"] is None
    # the pair id is stable: hash of (item, kind, variant, rejected), so a re-run gives the same ids
    from stages.filter import pair_id

    assert kept[swap]["id"] == pair_id(a, "text", None, swap)


def test_every_filter_can_be_switched_off(make_items, cli):
    data = make_items([{"chosen": IRONING}, {"chosen": CAT}])
    a, b = item_ids(data)
    para = IRONING.replace("line", "border")
    write_hallucinated(data, 0, [(a, IRONING.lower()), (b, "Sorry, I cannot see the image."), (a, para), (b, CAT + " "),
                                 (b, "A dog.")])
    assert cli(["filter", data]).exit_code == 0
    pairs, dropped = outputs(data)
    assert pairs == [] and sorted(d["drop_reason"] for d in dropped) == [
        "identical", "identical", "no_hallucination", "refusal", "too_short"]
    r = cli(["filter", data, "--keep-identical", "--keep-refusals", "--no-hallucination-check",
             "--min-similarity", "0", "--no-dedup", "--min-words", "0", "--min-length-ratio", "0"])
    assert r.exit_code == 0, r.output
    pairs, dropped = outputs(data)
    assert len(pairs) == 5 and dropped == []
    # the scores were there all along: re-filtering needs no re-run
    assert {p["rejected"]: p["similarity"] for p in pairs}[IRONING.lower()] == 1.0


def test_image_pairs_from_sampled_responses(make_items, cli):
    data = make_items([{"chosen": CAT, "objects": ["cat"]}, {"chosen": COFFEE}])
    a, b = item_ids(data)
    loop = "a cat a cat " * 12
    write_sampled(data, 0, [
        {"item_id": a, "responses": ["A dog is sleeping on a sofa next to a ball.", "A tabby cat with green eyes.",
                                     "A cat lying on a long red couch in a big", loop, "A dog is sleeping on a sofa next to a ball!"],
         "finish_reasons": ["stop", "stop", "length", "stop", "stop"], "logprobs": [-0.5, -0.4, -0.9, -0.1, -2.5]},
        {"item_id": b, "responses": ["A glass of orange juice on a table.", "A cup of espresso with a spoon."],
         "logprobs": [-3.0, -0.2]},
    ])
    r = cli(["filter", data])
    assert r.exit_code == 0, r.output
    pairs, dropped = outputs(data)
    got = reasons(dropped)
    assert got == {"A tabby cat with green eyes.": "same_content", "A cat lying on a long red couch in a big": "truncated",
                   loop: "repetition", "A dog is sleeping on a sofa next to a ball!": "duplicate",
                   "A cup of espresso with a spoon.": "same_content"}
    kept = {p["rejected"]: p for p in pairs}
    assert set(kept) == {"A dog is sleeping on a sofa next to a ball.", "A glass of orange juice on a table."}
    p = kept["A dog is sleeping on a sofa next to a ball."]
    assert (p["kind"], p["variant"], p["rejected_source"], p["logprob"]) == ("image", "diffusion", "sampled", -0.5)
    assert p["rejected_id"].endswith("-diffusion#0") and p["hallucinated_objects"] == ["dog", "couch", "sports ball"]
    # on-policy scoring: drop answers the model finds unlikely under the clean image
    assert cli(["filter", data, "--min-logprob", "-1"]).exit_code == 0
    pairs, dropped = outputs(data)
    assert [p["rejected"] for p in pairs] == ["A dog is sleeping on a sofa next to a ball."]
    assert reasons(dropped)["A glass of orange juice on a table."] == "off_policy"


def test_items_with_a_ready_rejected_are_text_pairs(make_items, cli):
    """POVID-format input: the items carry their own rejected answers; no hallucinate needed."""
    data = make_items([{"chosen": CAT, "rejected": CAT.replace("green", "blue")},
                       {"chosen": COFFEE, "rejected": COFFEE}])
    assert cli(["filter", data]).exit_code == 0
    pairs, dropped = outputs(data)
    assert [(p["rejected_source"], p["changed_attributes"]) for p in pairs] == [("input", ["green->blue"])]
    assert [d["drop_reason"] for d in dropped] == ["identical"]


def test_nothing_to_filter_is_one_clear_line(make_items, cli):
    data = make_items([{"chosen": CAT}])
    r = cli(["filter", data])
    assert r.exit_code == 2
    assert "nothing to filter yet" in r.output and "Traceback" not in r.output


def test_duplicates_keep_the_first_in_shard_order_and_new_shards_leave_old_ones_alone(make_items, cli, tmp_path):
    """A cron run that adds a shard filters only that shard, against everything kept before."""
    texts = [IRONING, CAT, COFFEE, IRONING.replace("man", "woman"), CAT.replace("cat", "kitten")]
    data = make_items([{"chosen": t} for t in texts[:4]], shard_size=2)
    ids = item_ids(data)
    hot = ("A hot dog stand with a red umbrella stands on a busy city street next to a yellow taxi and a bus. "
           "Two police officers talk to the vendor while a dog waits for scraps, and pigeons walk between the "
           "tables of a small cafe on the corner.")
    write_hallucinated(data, 0, [(ids[0], IRONING.replace("yellow shirt", "red shirt")), (ids[1], CAT.replace("tabby", "black"))])
    write_hallucinated(data, 1, [(ids[2], COFFEE.replace("spoon", "fork")), (ids[3], hot)])
    r = cli(["filter", data, "--min-similarity", "0"])
    assert r.exit_code == 0, r.output
    ds = Dataset.open(str(data))
    before = {k: (ds.shard_key("pairs", k), os.stat(ds.shard("pairs", k).path).st_mtime_ns) for k in (0, 1)}

    # cron: a new items shard arrives with an answer that repeats one kept earlier (near-duplicate)
    make_items([{"chosen": t} for t in texts[:4]] + [{"chosen": texts[4]}], shard_size=2, path=data)
    new = item_ids(data)[4]
    write_hallucinated(data, 2, [(new, hot.replace("on the corner.", "on the square."))])
    r = cli(["filter", data, "--min-similarity", "0"])
    assert r.exit_code == 0, r.output
    assert "1 shard(s) run, 2 already done" in r.output
    ds = Dataset.open(str(data))
    assert {k: (ds.shard_key("pairs", k), os.stat(ds.shard("pairs", k).path).st_mtime_ns) for k in (0, 1)} == before
    d2 = ds.read_shard("dropped", 2).to_pylist()
    assert [(d["drop_reason"], d["item_id"]) for d in d2] == [("near_duplicate", new)]
    first = next(p for p in ds.read_shard("pairs", 1).to_pylist() if p["rejected"] == hot)
    assert d2[0]["duplicate_of"] == first["id"]

    # the same decisions as one run over everything
    fresh = tmp_path / "fresh"
    make_items([{"chosen": t} for t in texts], shard_size=2, path=fresh)
    for k in (0, 1, 2):
        t = ds.read_shard("hallucinated", k)
        Dataset.open(str(fresh)).commit_shard("hallucinate", "hallucinated", k, t, f"h{k}")
    assert cli(["filter", fresh, "--min-similarity", "0"]).exit_code == 0
    a, b = outputs(data), outputs(fresh)
    assert [p["id"] for p in a[0]] == [p["id"] for p in b[0]]
    assert [(d["id"], d["drop_reason"]) for d in a[1]] == [(d["id"], d["drop_reason"]) for d in b[1]]


def test_dedup_scope_item_keeps_the_same_answer_for_different_images(make_items, cli):
    data = make_items([{"chosen": CAT}, {"chosen": CAT}])
    a, b = item_ids(data)
    rej = CAT.replace("green", "blue")
    write_hallucinated(data, 0, [(a, rej), (b, rej)])
    assert cli(["filter", data]).exit_code == 0
    assert [d["drop_reason"] for d in outputs(data)[1]] == ["duplicate"]
    assert cli(["filter", data, "--dedup-scope", "item"]).exit_code == 0
    assert len(outputs(data)[0]) == 2
    r = cli(["filter", data, "--dedup-scope", "planet"])
    assert r.exit_code == 2 and "--dedup-scope must be one of" in r.output


def test_filter_limit_and_status_counts(make_items, cli):
    data = make_items([{"chosen": CAT}, {"chosen": COFFEE}, {"chosen": IRONING}])
    a, b, c = item_ids(data)
    write_hallucinated(data, 0, [(a, CAT.replace("green", "blue")), (b, COFFEE), (c, "")])
    r = cli(["filter", data, "--limit", "2"])
    assert r.exit_code == 0, r.output
    pairs, dropped = outputs(data)
    assert len(pairs) + len(dropped) == 2
    assert cli(["filter", data]).exit_code == 0
    r = cli(["status", data])
    assert r.exit_code == 0, r.output
    assert "identical" in r.output and "empty" in r.output


def test_judge_confirms_contradictions_through_an_openai_compatible_server(make_items, cli, monkeypatch):
    """--judge: a model must say YES (contradiction); NO and unreadable replies are dropped with a reason."""
    from fake_openai import FakeOpenAI, last_user_text

    def reply(body):
        text = last_user_text(body)
        candidate = text.split("Candidate answer:")[1]
        has_image = any(p.get("type") == "image_url" for m in body["messages"] for p in m["content"]
                        if isinstance(m["content"], list))
        if not has_image:
            return "Cannot tell without the image."
        if "dog" in candidate:
            return "YES: there is no dog in the image."
        if "blue" in candidate:
            return "NO. Blue eyes could be right."
        return "Maybe."

    data = make_items([{"chosen": CAT}, {"chosen": COFFEE}, {"chosen": IRONING}])
    a, b, c = item_ids(data)
    dog = CAT.replace("to the side", "at a dog on the side")
    write_hallucinated(data, 0, [(a, dog), (a, CAT.replace("green", "blue")), (b, COFFEE.replace("spoon", "fork")),
                                 (c, IRONING)])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(reply=reply) as srv:
        srv.fault("429", times=1, retry_after=0.05)  # retried, not a failed row
        r = cli(["filter", data, "--judge", "judge-model", "--api-base", srv.url])
        assert r.exit_code == 0, r.output
        assert srv.count == 4  # 3 candidates passed the cheap filters (+1 retried 429); the identical one never went out
        pairs, dropped = outputs(data)
        assert [(p["rejected"], p["judge_verdict"]) for p in pairs] == [(dog, "yes")]
        assert pairs[0]["judge_reason"] == "there is no dog in the image"
        assert sorted((d["drop_reason"], d["judge_verdict"]) for d in dropped) == [
            ("identical", None), ("judge_rejected", "no"), ("judge_unclear", "unclear")]
        usage = Dataset.open(str(data)).manifest["stages"]["filter"]["usage"]
        assert usage["requests"] >= 3 and usage["prompt_tokens"] > 0
        # the cache under DATA/cache/filter answers a re-run with another filter setting: nothing is paid twice
        assert (data / "cache" / "filter").is_dir()
        r = cli(["filter", data, "--judge", "judge-model", "--api-base", srv.url, "--min-words", "3"])
        assert r.exit_code == 0, r.output
        assert srv.count == 4
        # a text-only judge gets no image (this fake one then answers something unreadable)
        r = cli(["filter", data, "--judge", "judge-model", "--api-base", srv.url, "--judge-text-only"])
        assert r.exit_code == 0, r.output
        assert srv.count == 7
        assert {d["drop_reason"] for d in outputs(data)[1]} == {"identical", "judge_unclear"}


def test_judge_server_down_leaves_retryable_failed_rows(make_items, cli, monkeypatch):
    from fake_openai import FakeOpenAI

    data = make_items([{"chosen": CAT}])
    (a,) = item_ids(data)
    write_hallucinated(data, 0, [(a, CAT.replace("green", "blue"))])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(reply=lambda body: "YES: wrong eye colour.") as srv:
        srv.fault("500", times=10)
        r = cli(["filter", data, "--judge", "j", "--api-base", srv.url, "--max-retries", "1"])
        assert r.exit_code == 1
        assert "failed" in r.output
        assert not Dataset.open(str(data)).read_all("pairs").num_rows
        srv.reset()
        r = cli(["filter", data, "--judge", "j", "--api-base", srv.url])  # the failed shard runs again
        assert r.exit_code == 0, r.output
        assert [p["judge_verdict"] for p in outputs(data)[0]] == ["yes"]


def test_a_relation_edit_counts_when_the_generator_declares_it_and_the_diff_shows_it(make_items, cli):
    data = make_items([{"chosen": COFFEE}, {"chosen": COFFEE.replace("espresso", "tea")}])
    a, b = item_ids(data)
    verb = COFFEE.replace("sits", "wobbles")  # no vocabulary word: only the declared edit makes it count
    write_hallucinated(data, 0, [(a, verb, [{"from": "sits", "to": "wobbles", "type": "relation"}]),
                                 (b, verb.replace("espresso", "tea"), [])])
    assert cli(["filter", data]).exit_code == 0
    pairs, dropped = outputs(data)
    assert [(p["item_id"], p["changed_attributes"]) for p in pairs] == [(a, ["sits->wobbles"])]
    assert [(d["item_id"], d["drop_reason"]) for d in dropped] == [(b, "no_hallucination")]

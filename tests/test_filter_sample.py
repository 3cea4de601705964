"""The issue's bar on the bundled sample: `rules` hallucinations mostly kept, planted bad rows dropped."""

from __future__ import annotations

import pyarrow as pa

from povid_cli.core.store import KEY_FIELD, Dataset


def test_sample_rules_pairs_are_kept_and_planted_bad_rows_dropped_with_the_right_reason(sample_data, cli):
    r = cli(["hallucinate", sample_data])
    assert r.exit_code == 0, r.output
    ds = Dataset.open(str(sample_data))
    hal = ds.read_shard("hallucinated", 0)
    real = hal.to_pylist()
    items = {i["id"]: i for i in ds.read_all("items").to_pylist()}
    first, second, third = (real[k]["item_id"] for k in range(1, 4))

    def planted(item_id, text, tag):
        return {**real[0], "id": f"{item_id}-planted-{tag}", "item_id": item_id, "rejected": text, "edits": []}

    bad = [
        planted(first, items[first]["chosen"].lower(), "identical"),
        planted(second, "", "empty"),
        planted(third, "I'm sorry, but I cannot see the image.", "refusal"),
        planted(real[0]["item_id"], real[0]["rejected"], "duplicate"),  # a second rewrite that came out the same
    ]
    # Put the planted rows beside the real ones, keeping the shard's key (as if hallucinate had made them).
    key = ds.shard("hallucinated", 0).parquet_metadata()[KEY_FIELD]
    ds.commit_shard("hallucinate", "hallucinated", 0, pa.Table.from_pylist(real + bad, schema=hal.schema), key)

    r = cli(["filter", sample_data])
    assert r.exit_code == 0, r.output
    pairs = ds.read_all("pairs").to_pylist()
    dropped = {d["rejected_id"]: d["drop_reason"] for d in ds.read_all("dropped").to_pylist()}
    real_ids = {h["id"] for h in real}
    kept_real = [p for p in pairs if p["rejected_id"] in real_ids]
    assert len(kept_real) >= 0.9 * len(real), {k: v for k, v in dropped.items() if k in real_ids}
    assert {k: v for k, v in dropped.items() if "planted" in k} == {
        b["id"]: b["id"].rsplit("-", 1)[1] for b in bad}
    # every kept text pair carries a detectable hallucination, and its scores are stored
    assert all(p["hallucinated_objects"] or p["changed_attributes"] for p in pairs)
    assert all(0.45 <= p["similarity"] < 1 and p["n_edits"] >= 1 for p in pairs)

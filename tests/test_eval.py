"""`povid eval`: CHAIR and POPE on a small COCO-format world built here, against a loopback OpenAI server.

The world (`coco_world`): 8 images, 8 COCO categories, instances and captions files. The server
answers every description with one fixed sentence, so CHAIR can be checked against a hand computation,
and every POPE question with "Yes", so POPE's figures are known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI, last_user_text

CATS = ["person", "dog", "cat", "car", "chair", "dining table", "bicycle", "cup"]
# image -> instance categories, caption. i5's caption names a person the instances lack; i8 has no instance.
WORLD = {
    1: (["person", "dog"], "A man walks his dog past a bench."),
    2: (["person", "cup"], "A woman holds a cup."),
    3: (["person", "dining table"], "People eating at a table."),
    4: (["car", "bicycle"], "A car parked beside a bike."),
    5: (["car", "bicycle", "dog"], "A man and his dog next to a car and a bicycle."),
    6: (["cat", "chair", "dining table"], "A cat on a chair at the dining table."),
    7: (["car"], "A red car."),
    8: ([], "An empty beach."),
}
SENTENCE = "A man walks a dog next to a car; the dog is brown."  # mentions person, dog, car, dog


def write_world(root: Path, world=WORLD) -> dict[str, Path]:
    """instances.json, captions.json and images/ (one small PNG per image) in COCO's own layout."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns, caps = [], [], []
    for i, (objs, caption) in world.items():
        name = f"COCO_val2014_{i:012d}.png"
        Image.new("RGB", (48, 40), ((40 * i) % 256, 120, 200)).save(root / "images" / name)
        images.append({"id": i, "file_name": name, "width": 48, "height": 40})
        anns += [{"id": 100 * i + k, "image_id": i, "category_id": CATS.index(o) + 1, "bbox": [1, 1, 9, 9]}
                 for k, o in enumerate(objs)]
        caps.append({"id": 1000 + i, "image_id": i, "caption": caption})
    cats = [{"id": k + 1, "name": c, "supercategory": "thing"} for k, c in enumerate(CATS)]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    return {"instances": root / "instances.json", "captions": root / "captions.json", "images": root / "images"}


def describe_or_yes(body: dict) -> str:
    """The fake VLM: "Yes" to every POPE question, SENTENCE to anything else."""
    return "Yes" if last_user_text(body).startswith("Is there a") else SENTENCE


@pytest.fixture
def coco_world(tmp_path) -> dict[str, Path]:
    return write_world(tmp_path / "world")


@pytest.fixture
def server():
    with FakeOpenAI(reply=describe_or_yes) as srv:
        yield srv


def eval_args(world, srv, out, *extra) -> list:
    return ["eval", "--backend", "openai", "--api-base", srv.url, "--model", "fake-model",
            "--coco-instances", world["instances"], "--images", world["images"], "-o", out, *extra]


def run_ok(cli, args) -> dict:
    r = cli(args)
    assert r.exit_code == 0, r.output
    return json.loads(Path(args[args.index("-o") + 1]).read_text())


def answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_name(out.stem + ".answers.jsonl").read_text().splitlines()]


# -- CHAIR ------------------------------------------------------------------------------------------
def test_chair_equals_a_hand_computation(cli, coco_world, server, tmp_path):
    out = tmp_path / "base.json"
    res = run_ok(cli, eval_args(coco_world, server, out, "--coco-captions", coco_world["captions"],
                                "--benchmarks", "chair"))
    # ground truth = instances + caption objects; SENTENCE mentions person, dog, car, dog (4 mentions):
    #   image  truth                          hallucinated mentions   truth mentioned
    #   1      person dog bench               car                     2 of 3
    #   2      person cup                     dog car dog             1 of 2
    #   3      person dining-table (caption)  dog car dog             1 of 2
    #   4      car bicycle                    person dog dog          1 of 2
    #   5      car bicycle dog + person(cap)  -                       3 of 4
    #   6      cat chair dining-table         person dog car dog      0 of 3
    #   7      car                            person dog dog          1 of 1      (8: no instances, not drawn)
    c = res["chair"]
    assert c["n"] == 7 and res["n_images"] == 7
    assert c["chair_s"] == pytest.approx(6 / 7)
    assert c["chair_i"] == pytest.approx(17 / 28)
    assert c["recall"] == pytest.approx(9 / 17)
    assert c["avg_len"] == pytest.approx(13)  # words
    assert "pope" not in res and res["backend"] == "openai" and res["failed"] == 0
    assert server.count == 7
    rows = {r["image_id"]: r for r in answers(out)}
    assert rows[1]["hallucinated"] == ["car"] and rows[5]["hallucinated"] == []
    assert rows[3]["truth"] == ["dining table", "person"] and rows[1]["answer"] == SENTENCE
    # without the captions, image 5 has no person: every answer hallucinates. Same questions: all cached.
    res = run_ok(cli, eval_args(coco_world, server, tmp_path / "base.json", "--benchmarks", "chair"))
    assert res["chair"]["chair_s"] == 1.0 and server.count == 7 and res["usage"]["cached"] == 7


def test_n_images_draws_the_same_images_for_the_same_seed(cli, coco_world, server, tmp_path):
    def drawn(name, seed):
        run_ok(cli, eval_args(coco_world, server, tmp_path / name, "--benchmarks", "chair", "--n-images", "3",
                              "--seed", str(seed)))
        return [r["image_id"] for r in answers(tmp_path / name)]

    a, b = drawn("a.json", 0), drawn("b.json", 0)
    assert len(a) == 3 and a == b and 8 not in a
    assert {tuple(drawn(f"s{s}.json", s)) for s in range(1, 6)} != {tuple(a)}  # other seeds, other images


# -- POPE -------------------------------------------------------------------------------------------
def test_pope_questions_are_balanced_with_the_right_absent_draw(coco_world):
    from povid_cli.eval.annotations import read_instances
    from povid_cli.eval.pope import build_questions

    coco = read_instances(str(coco_world["instances"]))
    qs = build_questions(coco, sorted(coco.objects), ["random", "popular", "adversarial"], seed=0)
    for split in ("random", "popular", "adversarial"):
        mine = [q for q in qs if q.split == split]
        yes = [q for q in mine if q.label == "yes"]
        assert len(yes) == len(mine) - len(yes) == 2 + 2 + 2 + 2 + 3 + 3 + 1  # min(3, objects) per image
        for q in mine:
            assert (q.object in coco.objects[q.image_id]) == (q.label == "yes")
            assert q.text == f"Is there a {q.object} in the image?"
    absent = lambda split, i: [q.object for q in qs if q.split == split and q.image_id == i and q.label == "no"]  # noqa: E731
    # frequency: car 3, person 3, bicycle 2, dining table 2, dog 2, cat 1, chair 1, cup 1
    assert absent("popular", 7) == ["person"]            # the most frequent category image 7 lacks
    assert absent("adversarial", 7) == ["bicycle"]       # seen with a car twice
    assert absent("popular", 6) == ["car", "person", "bicycle"]
    assert absent("adversarial", 6) == ["person", "car", "bicycle"]  # person sits at a dining table once
    present = {s: sorted((q.image_id, q.object) for q in qs if q.split == s and q.label == "yes") for s in ("random", "popular")}
    assert present["random"] == present["popular"]  # the same present objects in every split
    assert build_questions(coco, sorted(coco.objects), ["random"], seed=0) == [q for q in qs if q.split == "random"]


def test_an_always_yes_model_scores_half(cli, coco_world, server, tmp_path):
    res = run_ok(cli, eval_args(coco_world, server, tmp_path / "pope.json", "--benchmarks", "pope"))
    assert set(res["pope"]) == {"random", "popular", "adversarial"}
    for split, m in res["pope"].items():
        assert m["n"] == 2 * 15 and m["unparsed"] == 0, split
        assert (m["accuracy"], m["yes_ratio"], m["recall"], m["precision"]) == (0.5, 1.0, 1.0, 0.5)
        assert m["f1"] == pytest.approx(2 / 3)
    # the present-object questions are the same in every split: each distinct question is asked once
    distinct = {(r["prompt"], r["image_id"]) for r in answers(tmp_path / "pope.json")}
    assert server.count == len(distinct) < 3 * 30


def test_n_images_prefers_pope_images_with_three_objects(cli, coco_world, server, tmp_path):
    run_ok(cli, eval_args(coco_world, server, tmp_path / "p.json", "--benchmarks", "pope", "--n-images", "2",
                          "--pope-splits", "adversarial"))
    assert {r["image_id"] for r in answers(tmp_path / "p.json")} == {5, 6}


@pytest.mark.parametrize("answer,expected", [
    ("Yes", ("yes", True)), ("yes, there is a dog.", ("yes", True)), ("No.", ("no", True)),
    ("There is no dog.", ("no", True)), ("I think yes", ("yes", True)), ("There is a dog in it.", ("no", False)),
    ("", ("no", False)), ("Not at all", ("no", True))])
def test_yes_no_is_read_from_the_first_words(answer, expected):
    from povid_cli.eval.pope import parse_yes_no

    assert parse_yes_no(answer) == expected


def test_pope_file_questions_and_unparsed_answers(cli, coco_world, tmp_path):
    lines = [{"question_id": k, "image": f"COCO_val2014_{i:012d}.png", "text": f"Is there a {o} in the image?",
              "label": lab} for k, (i, o, lab) in enumerate([(1, "dog", "yes"), (1, "cat", "no"), (4, "car", "yes"),
                                                              (4, "zebra", "no")])]
    pf = tmp_path / "coco_pope_adversarial.json"
    pf.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    reply = {"dog": "Yes.", "cat": "No.", "car": "There is a car.", "zebra": "no"}
    with FakeOpenAI(reply=lambda b: reply[last_user_text(b).split()[3]]) as srv:
        res = run_ok(cli, ["eval", "--backend", "openai", "--api-base", srv.url, "--model", "m", "--benchmarks", "pope",
                           "--pope-file", pf, "--images", coco_world["images"], "-o", tmp_path / "r.json"])
    m = res["pope"]["adversarial"]
    # the car answer has no yes/no: read as "no" (a miss), and reported
    assert (m["n"], m["unparsed"], m["accuracy"], m["recall"], m["precision"]) == (4, 1, 0.75, 0.5, 1.0)
    assert list(res["pope"]) == ["adversarial"] and res["config"]["pope_question"] == "file"


# -- subsets, failures, resume ------------------------------------------------------------------------
def test_named_subsets_get_their_own_figures_from_one_run(cli, coco_world, server, tmp_path):
    (tmp_path / "a.txt").write_text("# ids\n1\n5\n")
    (tmp_path / "b.json").write_text(json.dumps(["COCO_val2014_000000000006.png", "COCO_val2014_000000000007"]))
    res = run_ok(cli, eval_args(coco_world, server, tmp_path / "s.json", "--coco-captions", coco_world["captions"],
                                "--subset", f"near={tmp_path / 'a.txt'}", "--subset", tmp_path / "b.json"))
    near, far = res["subsets"]["near"], res["subsets"]["b"]
    assert near["n_images"] == far["n_images"] == 2 and res["n_images"] == 4
    assert near["chair"]["chair_s"] == 0.5 and far["chair"]["chair_s"] == 1.0  # image 5 is right, 1, 6, 7 are not
    assert near["chair"]["chair_i"] == pytest.approx(1 / 8) and res["chair"]["n"] == 4
    assert near["pope"]["random"]["n"] == 2 * (2 + 3) and far["pope"]["random"]["n"] == 2 * (3 + 1)
    assert {r["image_id"] for r in answers(tmp_path / "s.json")} == {1, 5, 6, 7}


def test_failed_answers_are_listed_and_retried(cli, coco_world, server, tmp_path):
    server.fault("400", times=2)
    args = eval_args(coco_world, server, tmp_path / "f.json", "--benchmarks", "chair", "--concurrency", "1")
    r = cli(args)
    assert r.exit_code == 1 and "2 answer(s) failed" in r.output and "HTTP 400" in r.output
    assert "Traceback" not in r.output
    res = json.loads((tmp_path / "f.json").read_text())
    assert res["failed"] == 2 and res["chair"]["n"] == 5
    assert all("HTTP 400" in f["error"] and f["file_name"] for f in res["failures"])
    before = server.count
    res = run_ok(cli, args)
    assert server.count == before + 2 and res["failed"] == 0 and res["chair"]["n"] == 7


def test_a_killed_eval_resumes_from_its_cache(coco_world, tmp_path):
    """A run killed mid-way, then run again: no question is asked twice (but the one in flight)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with FakeOpenAI(reply=describe_or_yes, latency=0.1) as srv:
        args = [str(a) for a in eval_args(coco_world, srv, tmp_path / "k.json", "--concurrency", "1")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, "-m", "povid_cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while srv.count < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        first = srv.count
        assert 10 <= first and not (tmp_path / "k.json").exists()
        from typer.testing import CliRunner

        from povid_cli.cli import app

        r = CliRunner().invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        res = json.loads((tmp_path / "k.json").read_text())
        total = res["usage"]["answers"]
        assert srv.count - first <= total - first + 1  # at most the one in flight is asked again
        assert res["usage"]["cached"] >= first - 1 and res["chair"]["n"] == 7


# -- errors: one line, never a traceback ------------------------------------------------------------
def one_line_error(r, *needles):
    assert r.exit_code != 0
    assert "Traceback" not in r.output and r.output.count("error:") == 1, r.output
    for n in needles:
        assert n in r.output, r.output


def test_bad_inputs_give_one_clear_line(cli, coco_world, server, tmp_path):
    base = eval_args(coco_world, server, tmp_path / "e.json")
    i = base.index("--coco-instances") + 1
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": [')
    one_line_error(cli(base[:i] + [tmp_path / "nope.json"] + base[i + 1:]), "nope.json: no such file")
    one_line_error(cli(base[:i] + [bad_json] + base[i + 1:]), "bad.json is not valid JSON")
    one_line_error(cli(base[:i] + [coco_world["captions"]] + base[i + 1:]), "is a captions file")
    one_line_error(cli(base + ["--coco-captions", coco_world["instances"]]), "is it an instances file?")
    one_line_error(cli(base[:i - 1] + base[i + 1:]), "needs --coco-instances")
    j = base.index("--images") + 1
    one_line_error(cli(base[:j] + [tmp_path / "nowhere"] + base[j + 1:]), "no such folder")
    one_line_error(cli(base[:j] + [tmp_path] + base[j + 1:]), "none of the 7 images is in --images")
    one_line_error(cli(base + ["--benchmarks", "chair,mme"]), "--benchmarks must be one of chair, pope, got 'mme'")
    one_line_error(cli(base + ["--pope-splits", "hard"]), "--pope-splits must be one of random, popular, adversarial, got 'hard'")
    one_line_error(cli(base + ["--adapter", tmp_path]), "--adapter cannot be applied through --backend openai")
    one_line_error(cli(base + ["--subset", f"x={tmp_path / 'missing.txt'}"]), "missing.txt: no such file")
    (tmp_path / "ids.txt").write_text("1\n99\n")
    one_line_error(cli(base + ["--subset", tmp_path / "ids.txt"]), "match no image", "'99'")
    one_line_error(cli(["eval", "--compare", tmp_path / "e.json"]), "at least two results files")
    one_line_error(cli(["eval", "--compare", bad_json, bad_json]), "is not a JSON file")
    one_line_error(cli(["eval", "--backend", "transformers", "--model", tmp_path / "no-model", "--coco-instances",
                        coco_world["instances"], "--images", coco_world["images"], "-o", tmp_path / "x.json"]),
                   "does not exist")
    assert server.count == 0


def test_missing_images_are_failed_rows(cli, coco_world, server, tmp_path):
    (coco_world["images"] / "COCO_val2014_000000000002.png").unlink()
    r = cli(eval_args(coco_world, server, tmp_path / "m.json", "--benchmarks", "chair"))
    assert r.exit_code == 1 and "image not found" in r.output and "Traceback" not in r.output
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["failed"] == 1 and res["chair"]["n"] == 6 and res["failures"][0]["image_id"] == 2


# -- compare and the answers page ---------------------------------------------------------------------
def test_compare_shows_figures_side_by_side_with_deltas(cli, coco_world, tmp_path):
    better = "A man walks a dog."

    def reply(body):
        if last_user_text(body).startswith("Is there a"):
            return "Yes" if body["model"] == "base" else "No"
        return SENTENCE if body["model"] == "base" else better

    with FakeOpenAI(reply=reply) as srv:
        for name in ("base", "tuned"):
            args = eval_args(coco_world, srv, tmp_path / f"{name}.json", "--coco-captions", coco_world["captions"])
            args[args.index("--model") + 1] = name
            run_ok(cli, args)
    r = cli(["eval", "--compare", tmp_path / "base.json", tmp_path / "tuned.json"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if "CHAIR CHAIR_s" in ln)
    # tuned: "A man walks a dog." hallucinates on images 2, 3, 4, 6, 7 (no person or no dog): 5 of 7
    assert "85.7" in line and "71.4" in line and "-14.3" in line
    assert "POPE mean accuracy" in r.stdout and "note:" not in r.output


def test_html_page_marks_hallucinated_objects_and_escapes(cli, coco_world, tmp_path):
    sentence = "A man <b>walks</b> a dog & a car."
    with FakeOpenAI(reply=lambda b: "Yes" if last_user_text(b).startswith("Is there") else sentence) as srv:
        run_ok(cli, eval_args(coco_world, srv, tmp_path / "h.json", "--n-images", "2", "--seed", "1",
                              "--html", tmp_path / "h.html"))
    page = (tmp_path / "h.html").read_text()
    assert "<b>walks</b>" not in page and "&lt;b&gt;walks&lt;/b&gt;" in page and "&amp;" in page
    assert 'title="car: hallucinated">car</mark>' in page or 'title="car: in the image">car</mark>' in page
    assert '<mark class="h"' in page and "data:image/jpeg;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    r = cli(["eval", tmp_path / "h.json", "--html", tmp_path / "again.html"])  # from the results alone
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again.html").read_text() == page


def test_help_teaches():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "povid_cli", "eval", "--help"], capture_output=True, text=True,
                       env={"COLUMNS": "200", "PATH": "", "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert r.returncode == 0 and "CHAIR_s" in r.stdout and "--compare" in r.stdout and "--subset" in r.stdout
    assert "povid eval --model" in r.stdout

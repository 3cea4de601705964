"""povid.toml and `povid init`: every stage option in one file, flags on top, bad keys refused."""

from __future__ import annotations

import re
import tomllib

import pytest

from povid_cli.synth.config_file import load
from povid_cli.synth.plan import resolve
from povid_cli.core.store import Dataset
from synth_toy import use_toy_stages


def uncomment_all(text: str) -> str:
    """Turn every `# key = value` line of a povid init file into `key = value` (skipping unset ones)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^# ([a-z_]+) = (.+)$", line)
        out.append(f"{m.group(1)} = {m.group(2)}" if m and m.group(2) != "<not set>" else line)
    return "\n".join(out) + "\n"


def test_init_writes_a_commented_file_whose_values_are_the_defaults(cli, tmp_path, monkeypatch):
    use_toy_stages(monkeypatch)
    path = tmp_path / "povid.toml"
    r = cli(["init", path])
    assert r.exit_code == 0 and path.exists()
    text = path.read_text()
    for section in ("ingest", "hallucinate", "distort", "sample", "filter", "export", "run"):
        assert f"[{section}]" in text
    assert "# word = \"fork\"" in text and "# shard_size = 512" in text and "# executor = \"local\"" in text
    # as written, nothing is set; uncommented, every value is the default: the file cannot lie
    assert all(v == {} for v in tomllib.loads(text).values())
    full = tomllib.loads(uncomment_all(text))
    plan_full = resolve(full, ["src"], {})
    plan_default = resolve({}, ["src"], {})
    eff_full, eff_default = plan_full.effective(), plan_default.effective()
    eff_full.pop("sources"), eff_default.pop("sources")
    assert eff_full == eff_default
    # a second init does not overwrite an edited file
    r = cli(["init", path])
    assert r.exit_code == 2 and "--force" in r.stderr
    assert cli(["init", path, "--force"]).exit_code == 0


def test_init_lists_the_options_of_the_real_stages(cli, tmp_path):
    path = tmp_path / "povid.toml"
    assert cli(["init", path]).exit_code == 0
    text = path.read_text()
    assert "options unavailable" not in text, text
    data = tomllib.loads(uncomment_all(text))
    assert data["distort"].get("methods") and data["hallucinate"].get("backend") == "rules"
    resolve(data, ["src"], {})  # the real stages accept their own defaults back


def test_flags_override_the_file_and_the_effective_config_is_recorded(cli, tmp_path, sample_dir, monkeypatch):
    use_toy_stages(monkeypatch)
    cfg = tmp_path / "povid.toml"
    cfg.write_text('[hallucinate]\nword = "spoon"\nmodel = "from-file"\n[distort]\nmethods = ["blur", "jpeg"]\n'
                   '[run]\nworkers = 1\n[export]\nformat = "none"\n')
    data = tmp_path / "data"
    r = cli(["synth", sample_dir / "llava.json", "-o", data, "--config", cfg, "--llm-model", "from-flag",
             "--llm-backend", "openai", "--api-base", "http://127.0.0.1:9/v1", "--limit", "2"])
    assert r.exit_code == 0, r.output
    eff = Dataset.open(str(data)).manifest["synth"]["config"]
    assert eff["hallucinate"] == {"backend": "openai", "model": "from-flag", "api_base": "http://127.0.0.1:9/v1",
                                  "word": "spoon"}
    assert eff["distort"]["methods"] == ["blur", "jpeg"]
    assert eff["run"]["workers"] == 1 and eff["run"]["limit"] == 2 and eff["export"]["format"] == "none"
    assert Dataset.open(str(data)).read_all("distorted").num_rows == 4  # two variants for each of 2 items


@pytest.mark.parametrize("toml, message", [
    ('[hallucinate]\nwrod = "x"\n', "[hallucinate] has no option 'wrod'; valid options: backend, model, api_base, word"),
    ('[ingest]\nshard_size = "big"\n', "[ingest] shard_size must be an integer"),
    ('[sampel]\nmodel = "m"\n', "unknown section [sampel]"),
    ('[run]\nexecutor = "spark"\n', "[run] executor must be one of local, ray, got 'spark'"),
    ('[run]\nworkers = 0\n', "[run] workers must be at least 1, got 0"),
    ('[export]\nformat = "csv"\n', "[export] format must be one of trl, povid, llava, sharegpt, none, got 'csv'"),
    ('[hallucinate\n', "is not valid TOML"),
])
def test_a_bad_config_file_is_one_clear_line_and_exit_2(cli, tmp_path, sample_dir, monkeypatch, toml, message):
    use_toy_stages(monkeypatch)
    cfg = tmp_path / "povid.toml"
    cfg.write_text(toml)
    r = cli(["synth", sample_dir / "llava.json", "-o", tmp_path / "data", "--config", cfg])
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_missing_config_file_is_a_usage_error(tmp_path):
    from povid_cli.core.errors import UsageError

    with pytest.raises(UsageError, match="does not exist"):
        load(str(tmp_path / "nope.toml"))

"""`app.py generate --prompts-file FILE`: A1111's "Prompts from file or textbox" from the command line."""
from __future__ import annotations

from PIL import Image

from pipelines.infotext import parse_infotext
from tests.test_cli_refine import models, run, run_json  # noqa: F401  (the models fixture)


def test_each_line_runs_over_the_flags(capsys, models, tmp_path, demo_cache_dir):
    lines = tmp_path / "prompts.txt"
    lines.write_text('a red circle\n\n--prompt "a blue square" --steps 2 --seed 11\n--negative_prompt dark --cfg_scale 4\n', encoding="utf-8")
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--prompts-file", str(lines), "--prompt", "watercolor",
                      "--prompt-position", "end", "--seed", "100", "--iterate-seed")
    assert [entry["line"] for entry in result["lines"]] == [1, 3, 4]
    params = [parse_infotext(Image.open(entry["images"][0]).info["parameters"]) for entry in result["lines"]]
    assert [p["Prompt"] for p in params] == ["watercolor a red circle", "watercolor a blue square", "watercolor"]
    assert [p["Seed"] for p in params] == ["100", "11", "102"]  # iterated by batch size 1 x count 1; line 3 its own
    assert [p["Steps"] for p in params] == ["4", "2", "4"] and params[2]["Negative prompt"] == "dark" and params[2]["CFG scale"] == "4"


def test_a_bad_line_stops_it_before_anything_runs(capsys, models, tmp_path, demo_cache_dir):
    lines = tmp_path / "bad.txt"
    lines.write_text("a fine prompt\n--steps 2 --prompt ok\n--steps 500\n", encoding="utf-8")
    code, _out, err = run(capsys, models, tmp_path, demo_cache_dir, "--prompts-file", str(lines))
    assert code == 2 and "error: Line 3: Steps must be between 1 and 150, got 500" in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.png"))
    code, _out, err = run(capsys, models, tmp_path, demo_cache_dir, "--prompts-file", str(tmp_path / "missing.txt"))
    assert code == 2 and "--prompts-file" in err and "cannot be read" in err
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"a red circle\n" * 100_000)  # 1.3 MB: refused, not read into memory
    code, _out, err = run(capsys, models, tmp_path, demo_cache_dir, "--prompts-file", str(huge))
    assert code == 2 and f"--prompts-file {str(huge)!r} is over 1,000 kB; split it" in err and "Traceback" not in err


def test_prompt_is_needed_without_a_prompts_file(capsys, models, tmp_path, demo_cache_dir):
    import app

    code = app.main(["generate", "--models-dir", str(models), "--outputs-dir", str(tmp_path / "o"), "--cache-dir", str(demo_cache_dir),
                     "--device", "cpu", "--settings", str(tmp_path / "s.json")])
    assert code == 2 and "generate needs --prompt TEXT (or --prompts-file FILE" in capsys.readouterr().err

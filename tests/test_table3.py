"""`vq3d eval table3`: every row trains and scores (tiny preset), resumes without retraining,
and the table compares each row's direction with the paper's."""

import json

from vq3d.cli import main
from vq3d.eval.table3 import render_table


def test_directions_are_compared_with_the_papers():
    full = {"s1_fd_domain": 2.0, "depth_accuracy": 0.2, "disparity_scale": 1.9}
    no_depth = {"s1_fd_domain": 1.5, "depth_accuracy": 2.5, "disparity_scale": 2.5}  # paper: down, up, down
    text = render_table({"full": full, "no_depth": no_depth}, 100)
    row = next(line for line in text.splitlines() if line.startswith("| w/o depth loss"))
    assert "down/down agrees, up/up agrees, up/down differs" in row
    assert "4 / 1.91 / 0.61" in row and "100 steps per row" in text


def test_table3_trains_scores_and_resumes_each_row(tmp_path):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--n", "20", "--res", "16", "--views", "1", "--no-progress"]) == 0
    out = tmp_path / "t3"
    argv = ["eval", "table3", "--preset", "tiny", "--data", str(data), "--eval-data", str(data), "--steps", "2",
            "--out", str(out), "--rows", "full,no_depth"]
    assert main(argv) == 0
    table = json.loads((out / "table3.json").read_text())
    assert set(table["rows"]) == {"full", "no_depth"} and table["steps"] == 2
    assert table["rows"]["no_depth"]["psnr"] > 0 and (out / "table3.md").read_text().count("| w/o depth loss") == 1
    stamp = (out / "full" / "eval_stage1.json").stat().st_mtime_ns
    assert main(argv) == 0  # a second call trains and scores nothing again
    assert (out / "full" / "eval_stage1.json").stat().st_mtime_ns == stamp

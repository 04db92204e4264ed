import json

from vq3d.bench.paper_step import main


def test_paper_step_benchmark_runs_a_real_step_and_reports_memory(capsys):
    # the real benchmark uses --preset paper (minutes, ~GiBs); the tiny preset checks the harness
    assert main(["--preset", "tiny", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step_finite"] and result["r1_this_step"]
    assert 0 < result["rss_after_build_gib"] <= result["peak_rss_gib"]
    assert result["memory_ratio"] == round(result["peak_rss_gib"] / 24.0, 3)
    assert main(["--preset", "tiny", "--threads", "1", "--limit-gib", "0.01", "--json"]) == 1  # over the limit fails

"""`vq3d bench gpu` runs its whole path on CPU (tiny preset), skipping only what needs CUDA."""

import json

from vq3d.bench.gpu import main


def test_gpu_check_runs_every_check_on_cpu_and_says_why_it_skips_the_rest(capsys):
    assert main(["--json", "--max-batch", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == {} and report["preset"] == "tiny" and report["device"] == "cpu"
    checks = report["checks"]
    assert checks["render_bf16_agreement"]["within_cpu_test_bounds"]
    step = checks["step"]
    assert step["largest_batch_fits"] == 2 and step["largest_batch"]["batch"] == 2
    assert step["batch_1"]["host_syncs_per_step"] == 0 == step["largest_batch"]["host_syncs_per_step"]
    assert checks["torchrun_1"]["checkpoint_written"]
    assert checks["render"]["train_operator_calls"] > 0 and checks["render"]["train_rays_per_s"] > 0
    assert checks["stage2_sampling"]["cached_tokens_per_s"] > 0
    assert set(report["skipped"]) == {"cuda", "step_compiled"}
    assert all(reason for reason in report["skipped"].values())

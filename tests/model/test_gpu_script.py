"""bench/gpu.py (issue 19's one GPU script) runs end to end here at the tiny size, so it is ready for the GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_script_runs_every_model_part_at_tiny_size(tmp_path):
    out = tmp_path / "gpu"
    r = subprocess.run([sys.executable, "bench/gpu.py", "--config", "tiny", "--out", str(out), "--parts",
                        "sampler,trainer,forward", "--warmup", "0", "--repeats", "1", "--train-steps", "1"],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    parts = results["parts"]
    assert set(parts) == {"sampler", "trainer", "forward"}
    assert set(parts["sampler"]["ratio"]) == {"1", "2", "3"} and parts["sampler"]["s_per_step"]["wan_bare"] > 0
    trainer = parts["trainer"]
    assert trainer["step_s"] > 0 and 0 <= trainer["data_wait_share"] < 1 and trainer["forward_tflops"] > 0
    assert set(parts["forward"]["rows"]) == {"1", "2", "3"}
    md = (out / "results.md").read_text()
    assert "Sampler step (P3)" in md and "Trainer step (P4)" in md and "(P2)" in md

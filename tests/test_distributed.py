import json
import os
import subprocess
from pathlib import Path

import pytest
from train_helpers import launch_cmd

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mixed_precision,config", [("no", {}), ("bf16", {}),
                                                    ("no", {"fraction": 0.5, "perturbed_chunks": 2, "every": 2})])
def test_two_process_fcl_keeps_ranks_identical(tmp_path, mixed_precision, config):
    out = tmp_path / "ranks.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [*launch_cmd(2, mixed_precision), str(ROOT / "tests" / "ddp_worker.py"), str(out), mixed_precision,
           json.dumps(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2 and "MULTI_CPU" in result["distributed_type"]
    rank0, rank1 = result["params"]
    assert rank0 == rank1, "parameters differ across ranks: gradients were not all-reduced"
    assert result["moved"] > 1e-4

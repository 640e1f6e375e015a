"""Data parallel for real: ``accelerate launch`` with two CPU processes (gloo) on a tiny model.

accelerate 1.15's ``--cpu`` alone starts one process; ``--multi_gpu --num_processes 2`` with
``Accelerator(cpu=True)`` (what ``train_grpo`` makes on a machine without CUDA) starts two CPU
processes that talk over gloo. The arithmetic of the data-parallel path is also covered, fast,
by tests/grpo/test_run.py::test_the_data_parallel_path_averages_over_processes_like_one_process.
"""
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import hashlib, json, sys
    from pathlib import Path

    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    import l2s.grpo.trainer as trainer_module
    from grpo.conftest import PROMPTS, make_tiny_pipe, redness, tiny_settings
    from l2s.grpo import train_grpo

    out = Path(sys.argv[1])
    train = trainer_module.GRPOTrainer.train

    def spy(self, rollout, *args, **kwargs):
        stats = train(self, rollout, *args, **kwargs)
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in self.params.values())).hexdigest()
        rank = self.acc.process_index
        (out.parent / f"rank{rank}.json").write_text(json.dumps(
            {"rows": stats["trained_rows"], "adapter": digest, "world": self.acc.num_processes}))
        return stats

    trainer_module.GRPOTrainer.train = spy
    train_grpo(make_tiny_pipe(), redness, tiny_settings(epochs=1, prompts_per_epoch=2), out, PROMPTS,
               eval_prompts=PROMPTS[:1], evaluators={"red": redness}, progress=False)
''')


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_train_one_adapter_saved_once(tmp_path):
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    tests_dir = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
               str(script), str(tmp_path / "out"), str(tests_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["rows"] > 0 for r in ranks)          # both processes trained rows
    assert ranks[0]["adapter"] == ranks[1]["adapter"]                      # and stayed identical
    lines = (tmp_path / "out" / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [0, 1]                         # one writer: one line per epoch
    assert records[1]["trained_rows"] == ranks[0]["rows"] + ranks[1]["rows"]
    assert json.loads((tmp_path / "out" / "grpo.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "adapter", "adapter_raw", "checkpoint.pt", "curves.png", "grpo.json", "log.jsonl"]


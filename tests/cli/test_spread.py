"""``l2s eval``, ``make-data``, ``train`` and ``shapes bench`` spread over 2 CPU processes by
``torchrun`` (gloo): the same result as one process, and a run whose rank was killed (SIGKILL)
resumes to it. Each test starts ``torchrun`` (two processes, ~10-30 s of imports on a busy
2-core machine), so they are marked slow; tests/test_distributed.py keeps a 2-process test of the
plumbing in the default suite.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from l2s.cli import main
from l2s.evaluation import comparable_summary
from l2s.files import LOCK_FILE
from tests.cli.test_reliability import EVAL, _dataset_fingerprint, _eval_fingerprint, noise_pairs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "L2S_TEST_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_launcher_outlives_its_test():
    """A test that fails or times out waiting on torchrun leaves no launcher or rank behind:
    SIGTERM (torchrun stops its ranks, each in a session of its own), then SIGKILL."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _launch(args: list[str], processes: int = 2) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node PROCESSES ARGS`` (``-m l2s.cli ...`` or a script)."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(processes), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)
    _STARTED.append(proc)
    return proc


def _spread(argv: list[str]) -> str:
    """Run ``l2s ARGV`` on two processes to the end; its stdout."""
    proc = _launch(["-m", "l2s.cli", *argv])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def _kill_a_rank_when(condition, proc: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    """SIGKILL a rank other than rank 0 (the holder of ``out``'s lock) once ``condition()``; the
    launcher then ends the others."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a rank could be killed: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the run to get going"
        time.sleep(0.02)
    holder = int((out / LOCK_FILE).read_text().split()[0])
    others = [w for w in psutil.Process(proc.pid).children() if w.pid != holder]
    os.kill(others[-1].pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "SIGKILL" in err


def _summary(out: Path) -> dict:
    """summary.json without what differs between runs (timings, and how many images were resumed)."""
    return comparable_summary(json.loads((out / "summary.json").read_text()))


ALONE = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    from l2s.cli import _guarded, _sigterm_as_interrupt
    from l2s.distributed import world
    from l2s.errors import L2SError

    def work():
        group = world()
        group.barrier()
        if group.rank == 1:
            raise L2SError("rank 1 fails alone")
        group.barrier()   # rank 1 is gone: rank 0's collective fails
        return 0

    with _sigterm_as_interrupt():
        sys.exit(_guarded(work))
''')


def test_the_launcher_names_the_process_that_failed_not_the_one_that_stopped_with_it(tmp_path):
    """Rank 0 used to exit in the same poll as the failing rank 1, and torchrun's summary named
    rank 0 (the lower rank) as the root cause every time."""
    (tmp_path / "alone.py").write_text(ALONE)
    proc = _launch([str(tmp_path / "alone.py"), str(ROOT)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "rank 1 fails alone" in err and "another process of this run stopped first" in err
    root_cause = err.split("Root Cause")[1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "exitcode  : 2" in root_cause


# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------

EVAL6 = [a if a != "4" else "6" for a in EVAL]  # 6 prompts x 2 seeds x 2 modes: 24 images


@pytest.fixture(scope="module")
def one_process_eval(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(EVAL6 + ["--out", str(out)]) == 0
    return out


def test_eval_on_two_processes_writes_what_one_process_writes(one_process_eval, tmp_path):
    out = tmp_path / "run"
    stdout = _spread(EVAL6 + ["--out", str(out)])
    assert stdout.count("overall (images)") == 1  # the report is printed once, by rank 0
    assert _summary(out) == _summary(one_process_eval)
    assert _eval_fingerprint(out) == _eval_fingerprint(one_process_eval)  # same PNGs, records, order


def test_eval_refusing_a_generate_folder_says_so_once_on_two_processes(tmp_path):
    made = tmp_path / "made"
    (made / "p00-s0000").mkdir(parents=True)
    (made / "index.json").write_text("{}")
    proc = _launch(["-m", "l2s.cli", *EVAL, "--out", str(made)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert err.count("holds images of 'l2s generate'") == 1, err[-2000:]


def test_a_usage_error_is_said_once_and_ranks_started_differently_are_refused(tmp_path):
    proc = _launch(["-m", "l2s.cli", *[a if a != "0-1" else "x" for a in EVAL], "--out", str(tmp_path / "bad")])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and err.count("l2s: error: bad --seeds 'x'") == 1, err[-2000:]
    script = tmp_path / "rank1_differs.py"    # the same command, but rank 1 asks for other seeds
    script.write_text("import os, sys\nfrom l2s.cli import main\n"
                      "extra = ['--seeds', '2-3'] if os.environ['RANK'] == '1' else []\n"
                      "sys.exit(main(sys.argv[1:] + extra))\n")
    proc = _launch([str(script), *EVAL, "--out", str(tmp_path / "run")])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "exitcode  : 2" in err, err[-2000:]
    assert err.count("l2s: error: the processes of this run were started with different arguments "
                     "(rank 1 alone: --seeds 2-3; rank 0 alone: nothing)") == 1, err[-2000:]
    assert not (tmp_path / "run").exists()      # refused before anything was claimed or made
    script = tmp_path / "rank1_fails.py"      # an error of rank 1 alone is said, naming the rank
    script.write_text("import os, sys\nfrom l2s.cli import main\nfrom l2s.errors import L2SError\n"
                      "import l2s.evaluation.runs as runs\n"
                      "def fail(*args):\n    raise L2SError('a damaged record only rank 1 reads')\n"
                      "if os.environ['RANK'] == '1':\n    runs._make_share = fail\n"
                      "sys.exit(main(sys.argv[1:]))\n")
    proc = _launch([str(script), *EVAL, "--out", str(tmp_path / "own")])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and err.count("l2s: error: rank 1: a damaged record only rank 1 reads") == 1, \
        err[-2000:]
    assert "[c10d]" not in err and "Traceback" not in err.split("l2s: error: rank 1")[0], err[-3000:]


def test_eval_resumes_after_a_rank_is_killed(one_process_eval, tmp_path):
    out = tmp_path / "run"
    proc = _launch(["-m", "l2s.cli", *EVAL6, "--out", str(out)])
    _kill_a_rank_when(lambda: len(list(out.glob("*/*/samples/*.json"))) >= 4, proc, out)
    finished = len(list(out.glob("*/*/samples/*.json")))
    assert 4 <= finished < 24
    _spread(EVAL6 + ["--out", str(out)])  # the same command resumes; the dead group's lock is gone
    counts = json.loads((out / "summary.json").read_text())["modes"]
    assert sum(m["status_counts"].get("resumed", 0) for m in counts.values()) == finished
    assert _summary(out) == _summary(one_process_eval)
    assert _eval_fingerprint(out) == _eval_fingerprint(one_process_eval)


def test_eval_under_accelerate_launch_writes_what_one_process_writes(one_process_eval, tmp_path):
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    out = tmp_path / "run"
    # accelerate 1.15's --cpu alone starts one process; --multi_gpu starts two, gloo on a CPU machine.
    done = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
                           "-m", "l2s.cli", *EVAL6, "--out", str(out)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _eval_fingerprint(out) == _eval_fingerprint(one_process_eval)


# ---------------------------------------------------------------------------------------------
# make-data
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def make_data(tmp_path_factory) -> tuple[list[str], Path]:
    """make-data's arguments (16 pairs of noise images, 8 chunks) and its one-process dataset."""
    root = tmp_path_factory.mktemp("pairs")
    noise_pairs(root, 16)
    argv = ["make-data", "--model", "tiny", "--source", "pairs", "--annotations", str(root / "pairs.jsonl"),
            "--images", str(root), "--steps", "4", "--store-steps", "1", "3", "--size", "32", "--shard-size", "2",
            "--device", "cpu", "--quiet"]
    reference = tmp_path_factory.mktemp("reference") / "data"
    assert main(argv + ["--out", str(reference)]) == 0
    return argv, reference


def test_make_data_on_two_processes_writes_the_one_process_dataset(make_data, tmp_path):
    argv, reference = make_data
    out = tmp_path / "data"
    _spread(argv + ["--out", str(out)])
    assert _dataset_fingerprint(out) == _dataset_fingerprint(reference)


def test_make_data_of_one_chunk_per_rank_counts_every_record_on_two_processes(tmp_path):
    """Each rank inverts the only chunk it gets, and rank 0 commits both: the summary comes from rank
    0 after that commit (read by rank 1 before it landed, the run failed "no sample gave a record")."""
    noise_pairs(tmp_path, 2)
    out = _spread(["make-data", "--model", "tiny", "--source", "pairs", "--annotations", str(tmp_path / "pairs.jsonl"),
                   "--images", str(tmp_path), "--steps", "2", "--store-steps", "1", "--size", "32", "--shard-size", "1",
                   "--device", "cpu", "--quiet", "--out", str(tmp_path / "data")])
    assert json.loads((tmp_path / "data" / "progress.json").read_text())["chunks"].keys() == {"0", "1"}, out


# l2s on the processes of a busy machine: rank 1 gives up at once on rank 0 saying a line it meets too.
SAY_AT_ONCE = ("import sys\nfrom datetime import timedelta\nimport l2s.distributed.say_once as say_once\n"
               "from l2s.cli import main\nsay_once.SAID_WAIT = timedelta(0)\nsys.exit(main(sys.argv[1:]))\n")


def test_an_error_every_rank_meets_is_said_once_whichever_rank_says_it(tmp_path):
    """make-data with a missing --images folder: every rank meets it. Rank 1, having waited for rank 0
    to say it (here not at all; on a busy machine SAID_WAIT), says it, and then rank 0 must not: before,
    both did whenever rank 0 met it late, so the run is repeated."""
    noise_pairs(tmp_path, 1)
    (tmp_path / "say_at_once.py").write_text(SAY_AT_ONCE)
    argv = ["make-data", "--model", "tiny", "--source", "pairs", "--annotations", str(tmp_path / "pairs.jsonl"),
            "--images", str(tmp_path / "missing"), "--steps", "2", "--store-steps", "1", "--size", "32",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "data")]
    for _ in range(2):   # each run of the old code said it twice, but for a rank 0 killed before its line
        proc = _launch([str(tmp_path / "say_at_once.py"), *argv])
        _, err = proc.communicate(timeout=600)
        assert proc.returncode != 0 and "exitcode  : 2" in err, err[-3000:]
        assert err.count("l2s: error: ") == 1 and "/missing: no such folder" in err, err[-2000:]


def test_an_old_spelling_is_warned_once_on_two_processes(tmp_path):
    """Every process parses --torch-dtype; its warning shows once (a run that ends well: an error
    right after would race the launcher's teardown)."""
    noise_pairs(tmp_path, 4)   # pairs for each process
    proc = _launch(["-m", "l2s.cli", "make-data", "--torch-dtype", "float32", "--source", "pairs", "--annotations",
                    str(tmp_path / "pairs.jsonl"), "--images", str(tmp_path), "--steps", "2", "--store-steps", "1",
                    "--size", "32", "--shard-size", "1", "--device", "cpu", "--quiet", "--out",
                    str(tmp_path / "data")])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("l2s: warning: --torch-dtype is deprecated; use --dtype fp32") == 1, err[-2000:]


def test_make_data_resumes_after_a_rank_is_killed(make_data, tmp_path):
    argv, reference = make_data
    out = tmp_path / "data"
    proc = _launch(["-m", "l2s.cli", *argv, "--out", str(out)])

    def committed() -> int:
        try:
            return len(json.loads((out / "progress.json").read_text())["chunks"])
        except (OSError, ValueError):
            return 0

    _kill_a_rank_when(lambda: committed() >= 2, proc, out)
    assert committed() < 8
    _spread(argv + ["--out", str(out)])
    assert _dataset_fingerprint(out) == _dataset_fingerprint(reference)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

TRAIN = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    from tests.training.test_train import _config
    from l2s.training import train_classifier

    data, out, dropout, epochs = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    train_classifier(data, out, _config(dropout=dropout), epochs=epochs, batch_size=16, lr=1e-3, progress=False)
''')


def _train_data(root: Path, maps: int) -> Path:
    import torch

    from tests.training.test_train import _synthetic, _write

    g = torch.Generator().manual_seed(0)
    (root / "train.py").write_text(TRAIN)
    return _write(root / "data", [_synthetic(maps, g, "train"), _synthetic(37, g, "val")])


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    # 101 training maps in batches of 16: the last global batch has 5, split 3 + 2.
    return _train_data(tmp_path_factory.mktemp("train"), 101)


def _train(data: Path, out: Path, dropout: float, epochs: int, processes: int) -> None:
    script = [str(data.parent / "train.py"), str(ROOT), str(data), str(out), str(dropout), str(epochs)]
    if processes == 1:
        done = subprocess.run([sys.executable, *script], capture_output=True, text=True, env=_env(), timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    proc = _launch(script, processes)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _log(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / "log.jsonl").read_text().splitlines()]


def test_training_on_two_processes_takes_the_one_process_steps(train_data, tmp_path):
    """Without dropout: the same global batches, the same mean-loss gradient, so the same losses
    and predictions as one process up to float rounding (not the same bits: summed in another order)."""
    import torch

    from l2s.classifier import RelationClassifier
    from l2s.training import AttentionMapDataset

    _train(train_data, tmp_path / "one", 0.0, 3, 1)
    _train(train_data, tmp_path / "two", 0.0, 3, 2)
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    # A finished run is its result, whatever number of processes runs the command again.
    _train(train_data, tmp_path / "one", 0.0, 3, 2)
    _train(train_data, tmp_path / "two", 0.0, 3, 1)
    assert (_log(tmp_path / "one"), _log(tmp_path / "two")) == (one, two)
    assert [r["epoch"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert (a["train_accuracy"], a["val_accuracy"], a["best"]) == (b["train_accuracy"], b["val_accuracy"], b["best"])
    val = AttentionMapDataset(train_data, "val", timesteps=(1, 3))
    maps = torch.stack([val[i][0] for i in range(len(val))])
    steps = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        logits = [RelationClassifier.load(tmp_path / run / "last").eval()(maps, steps) for run in ("one", "two")]
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def test_a_rank_with_an_empty_slice_still_takes_the_common_step(tmp_path):
    """97 maps in batches of 16: the last global batch holds one map, so rank 1's slice is empty and
    it joins the gradient average with weight 0; the run still takes the one-process steps."""
    data = _train_data(tmp_path, 97)
    _train(data, tmp_path / "one", 0.0, 2, 1)
    _train(data, tmp_path / "two", 0.0, 2, 2)
    for a, b in zip(_log(tmp_path / "one"), _log(tmp_path / "two"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["train_accuracy"] == a["train_accuracy"]


@pytest.mark.parametrize("processes", [2, 3])
def test_training_resumes_after_a_rank_is_killed(train_data, tmp_path, processes):
    """With dropout (each rank's own masks, resumed per rank): a killed and resumed run gives the
    uninterrupted run's weights bit for bit. With 3 processes the sum's rounding follows DDP's bucket
    layout, which DDP redoes after its first backward: a resume used to sum its first step otherwise."""
    from safetensors.torch import load_file

    epochs = 30
    _train(train_data, tmp_path / "whole", 0.3, epochs, processes)
    out = tmp_path / "killed"
    proc = _launch([str(train_data.parent / "train.py"), str(ROOT), str(train_data), str(out), "0.3", str(epochs)],
                   processes)
    log = out / "log.jsonl"
    _kill_a_rank_when(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2, proc, out)
    whole = _log(tmp_path / "whole")
    assert 2 <= len(_log(out)) < len(whole)
    _train(train_data, out, 0.3, epochs, processes)
    assert _log(out) == whole
    weights = [load_file(tmp_path / run / "last" / "model.safetensors") for run in ("whole", "killed")]
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    settings = json.loads((out / "last" / "training.json").read_text())
    assert settings["processes"] == processes  # resuming with another number of processes is refused


POISONED = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from tests.training.test_resume_integrity import _config
    from l2s.cli import _guarded
    from l2s.training import train_classifier

    data, out, batch_size = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    sys.exit(_guarded(lambda: train_classifier(data, out, _config(), epochs=1, lr=1e-3, batch_size=batch_size,
                                               seed=0, progress=False) and 0))
''')


@pytest.mark.parametrize("poison_at, batch_size", [(3, 8), (0, 1)])
def test_non_finite_maps_in_one_rank_are_named_by_every_rank(tmp_path, poison_at, batch_size):
    """The rank whose slice held the NaN map said so; the other saw only the summed loss turn NaN and
    blamed the learning rate, and that line (rank 0's) was the one shown. In batches of 1, rank 1's
    slices are empty: it ran the first training map with weight 0, and a NaN there (0 x NaN) spoiled
    the common gradient before any batch held that map."""
    from tests.training.test_resume_integrity import _synthetic

    (tmp_path / "poisoned.py").write_text(POISONED)
    data = _synthetic(tmp_path, poison=True, poison_at=poison_at)   # one training map holds a NaN
    proc = _launch([str(tmp_path / "poisoned.py"), str(ROOT), str(data), str(tmp_path / "run"), str(batch_size)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "exitcode  : 2" in err, err[-3000:]
    assert "the dataset holds non-finite maps" in err and "lower the learning rate" not in err, err[-3000:]


# ---------------------------------------------------------------------------------------------
# shapes bench
# ---------------------------------------------------------------------------------------------

def test_shapes_bench_on_two_processes_gives_the_one_process_table(tmp_path, capsys):
    from l2s.shapes import shipped_assets

    if not shipped_assets().available:
        pytest.skip("the shipped shapes model is missing")
    argv = ["shapes", "bench", "--parts", "position", "--position-prompts", "2", "--seeds", "100", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "one"), "--results", str(tmp_path / "one.md")]) == 0
    one_table = capsys.readouterr().out
    two_table = _spread(argv + ["--out", str(tmp_path / "two"), "--results", str(tmp_path / "two.md")])

    def scores(path: Path) -> list[dict]:
        parts = json.loads(path.with_suffix(".json").read_text())["parts"]
        return [{mode: {k: v for k, v in scores.items() if not k.endswith("_s_per_image")}   # timings differ
                 for mode, scores in part["modes"].items()} for part in parts]

    assert scores(tmp_path / "two.md") == scores(tmp_path / "one.md")
    assert one_table.count("| part |") == two_table.count("| part |") == 1  # printed by rank 0 only

"""The pipeline on several processes (torchrun + DDP, gloo on CPU), streaming folders, resuming.

The oracle for N processes is one process with the same global batch: ``ShardSampler`` must cut the
same global batches, ``train_stream`` on one process must be ``train`` exactly, and N processes with
QAT's statistics synchronised (``StatSync``) must end with identical models on every rank, close to
the one-process model.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_folder_data import make_folder
from torch import nn
from torch.utils.data import TensorDataset

from qlearn.data import load_digits_data
from qlearn.distributed import SINGLE, ShardSampler, World, integer_model_sha256
from qlearn.models import MODELS
from qlearn.pipeline import PRESETS, main, resume_dir_for, throughput, write_run
from qlearn.train import TrainConfig, seed_everything, train, train_stream

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("n,size", [(10, 1), (10, 2), (11, 2), (7, 3)])
def test_shard_sampler_cuts_trains_global_batches(n, size):
    epoch, seed = 3, 9
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()  # train's order
    shards = []
    for rank in range(size):
        s = ShardSampler(n, World(rank, size, rank, "gloo" if size > 1 else None), seed)
        s.set_epoch(epoch)
        shards.append(list(s))
    assert len({len(sh) for sh in shards}) == 1 and len(shards[0]) == -(-n // size)  # equal shares
    interleaved = [shards[r][i] for i in range(len(shards[0])) for r in range(size)]
    assert interleaved[:n] == order  # round-robin shares rebuild train's order, then the wrapped padding
    assert interleaved[n:] == order[: len(interleaved) - n]


def _tiny_model() -> nn.Module:
    seed_everything(0)
    return MODELS["mobilenet_v2"](10, width=0.25, input_size=16, in_channels=1)


def test_train_stream_on_one_process_is_train_exactly():
    data = load_digits_data(16).subset(96, 16)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, schedule="onecycle", seed=4)
    a, b = _tiny_model(), _tiny_model()
    ra = train(a, data.x_train, data.y_train, cfg, progress=False)
    rb = train_stream(b, TensorDataset(data.x_train, data.y_train), cfg, progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["loss"] for r in ra.history] == pytest.approx([r["loss"] for r in rb.history], rel=1e-12)


def test_train_stream_bad_input():
    data = TensorDataset(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        train_stream(_tiny_model(), data, TrainConfig(batch_size=3), world=World(0, 2, 0, "gloo"), progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_stream(_tiny_model(), TensorDataset(torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.int64)),
                     progress=False)
    with pytest.raises(ValueError, match="workers"):
        train_stream(_tiny_model(), data, workers=-1, progress=False)


# ----------------------------------------------------------------------------- QAT on two processes
def _qat_setup():
    from qlearn.qat import prepare_qat
    from qlearn.qat_layers import QATConfig

    data = load_digits_data(16).subset(64, 8)
    qmodel = prepare_qat(_tiny_model().eval(), QATConfig(weight_bits=8, ema_decay=0.9, freeze_bn_step=3))
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, schedule="cosine", weight_decay=0.0, seed=1)
    return qmodel, TensorDataset(data.x_train, data.y_train), cfg


def _qat_worker(rank: int, size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from qlearn import fake_quant
    from qlearn.distributed import StatSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    world = World(rank, size, rank, "gloo")
    qmodel, dataset, cfg = _qat_setup()
    fake_quant.set_stat_sync(StatSync(world))
    try:
        train_stream(qmodel, dataset, cfg, world=world, progress=False)
    finally:
        fake_quant.set_stat_sync(None)
        dist.destroy_process_group()
    torch.save(qmodel.state_dict(), Path(out) / f"rank{rank}.pt")


def test_qat_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp

    from qlearn.convert import convert

    mp.spawn(_qat_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # every parameter and buffer identical on both ranks
    qmodel, dataset, cfg = _qat_setup()  # the oracle: one process, the same global batch of 16
    train_stream(qmodel, dataset, cfg, world=SINGLE, progress=False)
    ref = qmodel.state_dict()
    for k, v in ref.items():
        # the same function, summation order aside: the last bits differ, and after 4 AdamW steps a
        # weight next to a rounding boundary of the fake-quant grid can move differently (4e-4 here)
        if torch.is_floating_point(v):
            assert torch.allclose(r0[k], v, rtol=1e-3, atol=2e-3), k
        else:
            assert torch.equal(r0[k], v), k
    # the EMA ranges saw the global batch's min/max: the same ranges as one process (Eq. 55)
    los = {k: (r0[k].item(), v.item()) for k, v in ref.items() if k.endswith(".lo") or k.endswith(".hi")}
    assert los and all(a == pytest.approx(b, rel=1e-5, abs=1e-6) for a, b in los.values())
    qmodel.load_state_dict(r0)
    one = convert(qmodel.eval())
    qmodel.load_state_dict(r1)
    assert integer_model_sha256(one) == integer_model_sha256(convert(qmodel.eval()))


# ----------------------------------------------------------------------------- torchrun, the real command
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"), n_train=40, n_val=8)


QUICK_ARGS = ["--quick", "--dataset", "folder", "--epochs", "8", "--batch-size", "16", "--qat-epochs", "1"]


@pytest.fixture(scope="module")
def torchrun_run(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "qlearn", "pipeline", *QUICK_ARGS, "--data-dir", str(images), "--out", str(out),
           "--no-progress", "--distributed"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("mobilenet_v2: float") == 1  # only rank 0 prints the summary
    return out


def test_torchrun_two_processes(torchrun_run, images, tmp_path):
    report = json.loads((torchrun_run / "report.json").read_text())
    assert report["world_size"] == 2 and report["distributed"]["backend"] == "gloo"
    hashes = report["distributed"]["integer_model_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and report["distributed"]["identical_on_all_ranks"]
    assert report["settings"]["distributed"] is True
    rates = throughput(report)
    assert set(rates) == {"float", "qat"} and all(v > 0 for v in rates.values())
    assert "World size 2" in (torchrun_run / "report.md").read_text()
    assert sorted(p.name for p in torchrun_run.parent.iterdir()) == ["run"]  # rank 0 wrote it, nothing else left
    # one process, the same global batch (16 = 2 x 8), the same data and epochs
    from qlearn.pipeline.cli import _parse

    cfg, _, _, _ = _parse([*QUICK_ARGS, "--data-dir", str(images), "--out", str(tmp_path / "x"), "--no-progress"])
    single = write_run(replace(cfg, ptq_bits=(8,), qat_bits=(8,)), tmp_path / "single")
    assert single["world_size"] == 1 and "distributed" not in single
    # within noise on 24 validation images (one image is 4.2 points); both learn the colours
    assert abs(report["float_acc"] - single["float_acc"]) <= 0.25
    assert abs(report["qat"]["8"] - single["qat"]["8"]) <= 0.25
    assert min(report["float_acc"], single["float_acc"]) >= 0.6
    assert report["integer"]["top1_agreement_with_fake_quant"] >= 0.9


def test_distributed_without_torchrun_is_one_line(tmp_path, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert main(["--out", str(tmp_path / "o"), "--quick", "--no-progress", "--distributed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torchrun" in err
    assert main(["--out", str(tmp_path / "o"), "--quick", "--no-progress", "--limit-per-class", "3"]) == 2
    assert "--limit-per-class" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by torchrun, but without --distributed: N runs would race
    assert main(["--out", str(tmp_path / "o"), "--quick", "--no-progress"]) == 2
    assert "add --distributed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- checkpoints and --resume
TINY = replace(PRESETS["quick"], n_train=64, n_test=32, float_epochs=3, ptq_bits=(8,), qat_bits=(8,), qat_epochs=2,
               calib_batches=1, batch_size=16, progress=False)


def test_resume_after_an_interruption_gives_the_same_run(tmp_path, monkeypatch):
    import qlearn.ptq

    whole = write_run(TINY, tmp_path / "whole", resume=True)  # resumable, never interrupted
    assert whole["resumed"] == {"float": 0, "qat8": 0}
    assert not resume_dir_for(tmp_path / "whole").exists()  # removed once the run is complete

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        mp.setattr(qlearn.ptq, "ptq_sweep", interrupted)  # Ctrl-C after the float stage
        with pytest.raises(KeyboardInterrupt):
            write_run(TINY, out, resume=True)
    assert not out.exists()  # no partial run ...
    assert (resume_dir_for(out) / "float.state.pt").is_file()  # ... but the float training state
    again = write_run(TINY, out, resume=True)
    assert again["resumed"] == {"float": TINY.float_epochs, "qat8": 0}
    assert "Resumed after an interruption: float from epoch 3" in (out / "report.md").read_text()
    for key in ("float_acc", "ptq", "qat", "integer", "float_history"):
        assert again[key] == whole[key], key  # the same numbers as the uninterrupted run
    assert not resume_dir_for(out).exists()


def test_resume_refuses_a_state_of_other_settings(tmp_path, monkeypatch):
    import qlearn.ptq

    out = tmp_path / "run"
    monkeypatch.setattr(qlearn.ptq, "ptq_sweep", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_run(TINY, out, resume=True)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="other settings"):
        write_run(replace(TINY, seed=1), out, resume=True)

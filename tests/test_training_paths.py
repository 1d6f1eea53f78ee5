"""Training paths off the default road: cached features under bf16 with accumulation, two processes, resumed trackers."""

import json
import os
import socket
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch

PROBE = Path(__file__).resolve().parent / "probe"


def test_cached_features_train_under_bf16_and_accumulate_gradients(tmp_path, tiny_recipe_dict, monkeypatch, fresh_accelerator_state):
    """16 training images in batches of 5: 3 batches an epoch (the last one, of one image, dropped); with
    accumulation 2 the optimizer steps after batch 2 and at the end of the epoch, twice an epoch."""
    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    monkeypatch.syspath_prepend(str(PROBE))
    monkeypatch.setenv("HISTOFUSE_PLUGINS", "histofuse_test_probe")
    monkeypatch.setenv("HISTOFUSE_PROBE_DUMP", "1")
    tiny_recipe_dict["model"]["fusion"] = "gated"  # its Linear refuses the bfloat16 features outside autocast
    tiny_recipe_dict["data"]["batch_size"] = 5
    tiny_recipe_dict["training"].update(mixed_precision="bf16", grad_accumulation=2)
    tiny_recipe_dict["phases"] = [{**tiny_recipe_dict["phases"][0], "augment": "none", "cache_features": True, "epochs": 2}]
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs"), "--set", "evaluation.bootstrap=0"])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    assert "cached features of 16 training" in result.output
    assert json.loads((run_dir / "probe" / "phase0-steps.json").read_text()) == 4
    assert len(pd.read_csv(run_dir / "history.csv")) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: evaluations where one process reads fewer images, and the train-loss mean."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    from histofuse.training.predict import predict
    from histofuse.training.processes import mean_across_processes

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",  # gloo picks an interface by host name otherwise, slowly
    )
    AcceleratorState._reset_state(True)
    # A desynchronised collective fails within seconds instead of hanging the suite.
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=20))])
    torch.manual_seed(0)
    model = accelerator.prepare(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2)))
    statistics = accelerator.unwrap_model(model)[1].running_mean
    images = torch.arange(32.0).reshape(8, 4)

    def batch(indices, readable=True):
        return {
            "image": images[indices] if readable else None, "label": torch.zeros(len(indices), dtype=torch.long),
            "index": torch.tensor(indices), "failed": [] if readable else [(f"{i}.png", "truncated") for i in indices],
        }

    # Training leaves each process with the batch-norm statistics of its own last batch.
    statistics.fill_(float(rank))
    # Process 1 could read none of its images: it runs no forward at all, process 0 two.
    predict(accelerator, model, [batch([0, 1]), batch([2, 3])] if rank == 0 else [batch([4, 5], readable=False)], 2)
    statistics.fill_(float(rank))
    both = predict(accelerator, model, [batch([0, 1])] if rank == 0 else [batch([4, 5])], 2)
    loss = mean_across_processes(accelerator, total=[2.0, 12.0][rank], seen=[1, 3][rank])
    torch.save({"logits": torch.from_numpy(both.logits), "indices": both.indices.tolist(), "loss": loss}, f"{out}/rank{rank}.pt")
    accelerator.end_training()


def test_two_processes_evaluate_alike_when_one_reads_fewer_images_and_average_the_train_loss(tmp_path):
    from torch.multiprocessing import start_processes

    # spawn, not fork: a process forked after the suite ran OpenMP code hangs in its first parallel region.
    start_processes(_process, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert first["indices"] == second["indices"] == [0, 1, 4, 5]
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2)).eval()  # process 0's statistics
    with torch.no_grad():
        expected = reference(torch.arange(32.0).reshape(8, 4)[[0, 1, 4, 5]])
    torch.testing.assert_close(first["logits"], expected)
    torch.testing.assert_close(second["logits"], expected)
    assert first["loss"] == second["loss"] == 14.0 / 4


def _events(folder: Path) -> list:
    """Every event of the TensorBoard files under ``folder`` (TFRecord framing: length, CRC, payload, CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            events.append(Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4
    return events


def test_a_resumed_run_purges_the_epochs_it_logs_again_from_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import SessionLog

    from histofuse.training.trackers import Trackers

    trackers = Trackers(["tensorboard"], tmp_path, "tiny", {}, is_main_process=True)
    trackers.resume_after(3)  # the checkpoint of epoch 3: epochs 4 and on are logged again
    trackers.log({"val_loss": 0.5}, step=4)
    trackers.finish()
    starts = [e.step for e in _events(tmp_path / "trackers") if e.session_log.status == SessionLog.START]
    assert starts == [4]  # TensorBoard drops older events from step 4 on

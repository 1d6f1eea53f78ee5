"""Epoch sampling that shards across processes, atomic epoch checkpoints, trackers, and plugins from HISTOFUSE_PLUGINS."""

import json
import os
from collections import Counter

import pandas as pd
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from histofuse.data.sampling import EpochSampler
from histofuse.errors import HistofuseError
from histofuse.training.checkpoint import save_weights
from histofuse.training.epoch_checkpoint import TrainingState, latest_checkpoint, save_checkpoint

LABELS = [0] * 30 + [1] * 90  # 1:3, like BreaKHis benign:malignant


def draws(sampler):
    return [index for index, _ in sampler]


def test_an_epoch_is_a_function_of_seed_and_epoch_and_balances_classes():
    sampler = EpochSampler(LABELS, balanced=True, seed=7)
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(4)
    other = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first and other != first
    assert len(first) == len(LABELS)
    counts = Counter(LABELS[i] for i, _ in first)
    assert abs(counts[0] - counts[1]) < 0.25 * len(LABELS)  # drawn 1:1 although stored 1:3
    shuffled = EpochSampler(LABELS, balanced=False, seed=7)
    assert sorted(draws(shuffled)) == list(range(len(LABELS)))


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_share_one_balanced_epoch_without_overlap(processes):
    """What Accelerate does with the loader under N processes: deal out the batches of one identical draw."""
    sampler = EpochSampler(LABELS, balanced=True, seed=1)
    sampler.set_epoch(2)
    batches = BatchSampler(sampler, batch_size=8, drop_last=True)
    whole = [draw for batch in batches for draw in batch]
    shards = [list(BatchSamplerShard(batches, num_processes=processes, process_index=r)) for r in range(processes)]
    dealt = [draw for shard in shards for batch in shard for draw in batch]
    assert len(set(dealt)) == len(dealt) and set(dealt) <= set(whole)  # disjoint shares of the one draw
    assert len({len(shard) for shard in shards}) == 1  # every process steps the same number of times
    # The epoch keeps its length: only the last incomplete round of batches (fewer than one per process) is dropped.
    assert len(whole) - len(dealt) < processes * 8


def test_augmentations_do_not_depend_on_worker_count(synthetic_root):
    from histofuse_builtins.data_synthetic import scan_synthetic

    from histofuse.data.loading import ImageTable, make_loader
    from histofuse_builtins.defaults import build_transforms

    table = scan_synthetic(synthetic_root).head(12)
    classes = sorted(table["label"].unique())
    dataset = ImageTable(table, classes, build_transforms("train", "strong", 32, 40, 0.5))
    batches = {}
    for workers in (0, 2):
        loader = make_loader(dataset, 4, train=True, balanced=True, num_workers=workers, seed=5)
        loader.sampler.set_epoch(1)
        batches[workers] = torch.cat([b["image"] for b in loader])
    assert torch.equal(batches[0], batches[2])


def tiny_training_objects():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max")
    scheduler.step(0.5)
    return model, optimizer, scheduler


def test_checkpoints_round_trip_and_only_the_newest_are_kept(tmp_path):
    model, optimizer, scheduler = tiny_training_objects()
    save_weights(model, tmp_path, {"epoch": 1})
    for epoch in (1, 2, 3):
        state = TrainingState(epoch=epoch, phase_index=1, phase_epoch=epoch, best=0.9, best_epoch=1, failed={"a.png": "truncated"})
        save_checkpoint(tmp_path, state, model, optimizer, scheduler, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003"]
    checkpoint = latest_checkpoint(tmp_path, warn=pytest.fail)
    assert checkpoint.state == state
    fresh, fresh_optimizer, fresh_scheduler = tiny_training_objects()
    checkpoint.load_model(fresh)
    checkpoint.load_optimizer_and_scheduler(fresh_optimizer, fresh_scheduler)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert fresh_scheduler.state_dict() == scheduler.state_dict()


def test_an_fp16_runs_gradient_scaler_state_survives_a_resume(tmp_path):
    """The loss scale fp16 training has settled on is restored, not rediscovered through skipped steps."""
    model, optimizer, scheduler = tiny_training_objects()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=7)
    scaler.scale(torch.ones(()))  # the scale exists once used
    scaler.update(new_scale=96.0)
    save_checkpoint(tmp_path, TrainingState(epoch=1), model, optimizer, scheduler, keep=2, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu")
    latest_checkpoint(tmp_path, warn=pytest.fail).load_optimizer_and_scheduler(*tiny_training_objects()[1:], scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 96.0

    save_checkpoint(tmp_path, TrainingState(epoch=2), model, optimizer, scheduler, keep=2)  # written without a scaler
    with pytest.raises(HistofuseError, match="epoch-0002 has no scaler.pt .* although this run trains in fp16"):
        latest_checkpoint(tmp_path, warn=pytest.fail).load_optimizer_and_scheduler(*tiny_training_objects()[1:], scaler=fresh)


def test_resume_restores_the_best_weights_that_the_checkpoints_state_knows(tmp_path):
    """Best weights are written just before their epoch's checkpoint: a crash in between, or falling back to an
    older checkpoint, must not leave a later epoch's weights where between-phase restores and the test read them."""
    from safetensors.torch import load_file

    model, optimizer, scheduler = tiny_training_objects()

    def epoch(number: int, best_epoch: int) -> None:
        with torch.no_grad():
            model[0].weight.fill_(number)
        if best_epoch == number:
            save_weights(model, tmp_path, {"epoch": number})
        save_checkpoint(tmp_path, TrainingState(epoch=number, best_epoch=best_epoch), model, optimizer, scheduler, keep=3)

    def best_weights() -> tuple[float, int]:
        meta = json.loads((tmp_path / "model.json").read_text())
        return load_file(tmp_path / "model.safetensors")["0.weight"][0, 0].item(), meta["epoch"]

    epoch(1, best_epoch=1)
    epoch(2, best_epoch=1)
    # A hard link to the run directory's file: the older best weights cost no second copy on disk.
    assert os.path.samefile(tmp_path / "checkpoints" / "epoch-0002" / "best.safetensors", tmp_path / "model.safetensors")
    with torch.no_grad():
        model[0].weight.fill_(3)
    save_weights(model, tmp_path, {"epoch": 3})  # epoch 3 improved, then the run died before its checkpoint

    checkpoint = latest_checkpoint(tmp_path, warn=pytest.fail)
    assert checkpoint.restore_best(tmp_path) and best_weights() == (1.0, 1)
    assert not checkpoint.restore_best(tmp_path)  # already consistent: nothing rewritten

    epoch(3, best_epoch=3)  # the resumed run improves at epoch 3 again
    assert not (tmp_path / "checkpoints" / "epoch-0003" / "best.safetensors").exists()  # its own model is the best
    assert not latest_checkpoint(tmp_path, warn=pytest.fail).restore_best(tmp_path)  # the same bytes as model.safetensors
    epoch(4, best_epoch=4)
    (tmp_path / "checkpoints" / "epoch-0004" / "state.json").write_text("{}")  # damaged: resume falls back to epoch 3
    checkpoint = latest_checkpoint(tmp_path, warn=lambda message: None)
    assert checkpoint.state.epoch == 3 and checkpoint.restore_best(tmp_path) and best_weights() == (3.0, 3)

    save_checkpoint(tmp_path, TrainingState(epoch=5), model, optimizer, scheduler, keep=3)  # a state with no best yet
    assert latest_checkpoint(tmp_path, warn=pytest.fail).restore_best(tmp_path)
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "model.json").exists()


def test_a_half_written_or_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    model, optimizer, scheduler = tiny_training_objects()
    for epoch in (4, 5):
        save_checkpoint(tmp_path, TrainingState(epoch=epoch), model, optimizer, scheduler, keep=5)
    folder = tmp_path / "checkpoints"
    (folder / "epoch-0007.partial").mkdir()  # a crash while writing epoch 7: never considered
    (folder / "epoch-0006").mkdir()  # a folder copied by hand without its manifest
    (folder / "epoch-0006" / "state.json").write_text("{}")
    state_file = folder / "epoch-0005" / "state.json"
    state_file.write_text(state_file.read_text().replace('"epoch": 5', '"epoch": 50'))  # tampered after writing
    warnings = []
    checkpoint = latest_checkpoint(tmp_path, warn=warnings.append)
    assert checkpoint.state.epoch == 4
    assert warnings == [
        "checkpoint epoch-0006 is incomplete or corrupt (no manifest.json); trying the one before it",
        "checkpoint epoch-0005 is incomplete or corrupt (state.json does not match its recorded SHA-256); trying the one before it",
    ]
    (folder / "epoch-0004" / "optimizer.pt").unlink()
    with pytest.raises(HistofuseError, match="no complete checkpoint under .*histofuse run RECIPE"):
        latest_checkpoint(tmp_path, warn=warnings.append)


def test_a_crafted_pickle_in_a_checkpoint_never_runs(tmp_path):
    """Checkpoint pickles are loaded with weights_only: one that would execute code is refused, and skipped."""
    import pickle

    from histofuse.training.epoch_checkpoint import _sha256

    model, optimizer, scheduler = tiny_training_objects()
    save_checkpoint(tmp_path, TrainingState(epoch=1), model, optimizer, scheduler, keep=2)
    path = save_checkpoint(tmp_path, TrainingState(epoch=2), model, optimizer, scheduler, keep=2)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (path / "optimizer.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["optimizer.pt"] = _sha256(path / "optimizer.pt")  # the attacker rewrote the manifest too
    (path / "manifest.json").write_text(json.dumps(manifest))
    warnings = []
    assert latest_checkpoint(tmp_path, warn=warnings.append).state.epoch == 1
    assert not marker.exists()
    [warning] = warnings
    assert warning.startswith("checkpoint epoch-0002 is incomplete or corrupt (optimizer.pt cannot be loaded safely: Weights only load failed")


def test_a_run_logs_to_tensorboard_and_refuses_a_missing_tracker(tmp_path, tiny_recipe_dict):
    pytest.importorskip("tensorboardX")
    from test_run import only_run_dir, run_cli

    from conftest import write_toml

    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs"), "--set", 'training.log_with=["tensorboard"]'])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 3  # history.csv is written whatever the trackers
    # TensorBoard holds one scalar per epoch for each metric, at the epoch as its step, equal to history.csv's.
    from test_training_paths import _events

    scalars = {}
    for event in _events(run_dir / "trackers"):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    for column in ("val_auc", "val_loss", "train_loss"):
        assert [step for step, _ in scalars[column]] == history["epoch"].tolist() == [1, 2, 3], column
        assert [v for _, v in scalars[column]] == pytest.approx(history[column].tolist(), rel=1e-6), column  # float32

    from accelerate.tracking import get_available_trackers

    missing = next(n for n in ("aim", "clearml", "dvclive", "swanlab") if n not in {str(t) for t in get_available_trackers()})
    with pytest.raises(HistofuseError, match=f"training.log_with names {missing}, which is not installed here: pip install {missing}"):
        run_cli(["run", str(recipe), "-o", str(tmp_path / "runs2"), "--set", f'training.log_with=["{missing}"]'])
    assert not (tmp_path / "runs2").exists()  # refused before anything was created
    # recipe check runs the same checks as run (histofuse.preflight): it refuses the tracker too.
    with pytest.raises(HistofuseError, match=f"training.log_with names {missing}, which is not installed here"):
        run_cli(["recipe", "check", str(recipe), "--set", f'training.log_with=["{missing}"]'])


def test_a_plugin_named_in_histofuse_plugins_is_loaded_and_a_broken_one_reported(monkeypatch, tmp_path):
    (tmp_path / "my_dev_plugin.py").write_text(
        "import histofuse\n\n@histofuse.hookimpl\ndef on_epoch_end(run_dir, record):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HISTOFUSE_PLUGINS", "my_dev_plugin, not_a_module_anywhere")
    from histofuse.plugins import create_plugin_manager

    pm = create_plugin_manager()
    assert pm.get_plugin("my_dev_plugin") is not None
    [failure] = [f for f in pm.failures if f.name == "not_a_module_anywhere"]
    assert "ModuleNotFoundError" in failure.error and failure.distribution == "HISTOFUSE_PLUGINS"


def test_history_of_a_run_resumed_by_a_newer_version_keeps_its_columns_aligned(tmp_path):
    import pandas as pd

    from histofuse.training.history import History

    path = tmp_path / "history.csv"
    History(path, True).add(epoch=1, train_loss=0.5)  # written by a version without start_weights
    History(path, True).add(epoch=2, train_loss=0.4, start_weights="best of epoch 1")
    rows = pd.read_csv(path)
    assert rows.columns.tolist() == ["epoch", "train_loss", "start_weights"]
    assert rows["train_loss"].tolist() == [0.5, 0.4] and rows["start_weights"].fillna("").tolist() == ["", "best of epoch 1"]

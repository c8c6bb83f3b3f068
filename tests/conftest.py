"""Shared pytest fixtures. Tests import the top-level modules, so the repository root goes on sys.path."""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# A tiny shapes set: enough images per split to cover every object count, small enough to make in a second.
TINY_SHAPES_KWARGS = dict(n_train=64, n_val=16, n_test=16, n_novel=16, image_size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """Root folder of a tiny shapes dataset (COCO layout), generated once per test session."""
    import shapes_dataset

    out = tmp_path_factory.mktemp("tiny_shapes") / "shapes"
    return shapes_dataset.generate(out, **TINY_SHAPES_KWARGS, workers=1, progress=False)


SHARED = REPO_ROOT.parent / "shared"
COCO_MINI = SHARED / "data" / "coco-mini"


@pytest.fixture(scope="session")
def coco_mini():
    """The real COCO slice beside the repository (../shared/data/coco-mini); tests skip without it."""
    if not (COCO_MINI / "annotations").is_dir():
        pytest.skip(f"real COCO files not found at {COCO_MINI}")
    return COCO_MINI


def tiny_train_config(data_root, out_dir, **overrides):
    """A TrainConfig that overfits the tiny shapes set in seconds on a CPU (pretrained MobileNetV2, 64 px)."""
    from train import TrainConfig

    settings = dict(data_root=str(data_root), val_split="train", vocab_threshold=1, image_size=64, grid=2,
                    head_hidden=128, embed_norm=True, feature_norm=True, embed_size=64, hidden_size=128, epochs=70, batch_size=64, lr=5e-3,
                    num_workers=0, out_dir=str(out_dir), cache_dir=str(Path(out_dir) / "cache"),
                    run_name="tiny", log_every=10_000, best_metric="object_f1", save_every=70)
    settings.update(overrides)
    return TrainConfig(**settings)


def assert_same_training_state(full_dir, resumed_dir, epoch):
    """The resumed run's last.pt holds the uninterrupted run's epoch, step and every weight, bit for bit."""
    import torch

    full = torch.load(Path(full_dir) / "last.pt", weights_only=True)
    resumed = torch.load(Path(resumed_dir) / "last.pt", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == epoch and resumed["step"] == full["step"]
    for part in ("encoder", "decoder"):
        for name, tensor in full[part].items():
            assert torch.equal(tensor, resumed[part][name]), f"{part}.{name} differs after resume"


@pytest.fixture(scope="session")
def tiny_run(tiny_shapes, tmp_path_factory):
    """A run folder whose model has overfit the tiny shapes training images (trained once per session)."""
    from train import train

    return train(tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("runs")))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread per test process: on a 2-core machine running notebooks and subprocesses beside
    the tests, more threads oversubscribe the cores and make small models ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

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

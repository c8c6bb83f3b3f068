"""torch.hub entry: load a trained captioner like other PyTorch models.

    captioner = torch.hub.load("path/to/this/repo", "captioner", source="local")   # the bundled Flickr8k model
    captioner = torch.hub.load("path/to/this/repo", "captioner", source="local", checkpoint="runs/NAME/best.pt")
    captioner("photo.jpg")                      # 'a dog runs through the grass'
    captioner([img1, img2], beam=3)             # PIL images, paths, or lists of them
    print(captioner.trained_on)                 # what the model learnt from

With no checkpoint it is the model bundled in models/ (its CNN's ImageNet weights come from torch's cache, put
there by `make weights`, or from torchvision's download); otherwise a checkpoint a run of train.py wrote. This
repository's modules have plain names (model, vocabulary, data_loader, ...); a session that imported modules of its
own under those names keeps them: ours are imported beside them, and theirs are back in place when the captioner
is made.
"""
import sys
from contextlib import contextmanager
from pathlib import Path

# Every package the captioner's modules import when it loads (torch.hub checks them first and names the missing).
dependencies = ["torch", "torchvision", "PIL", "numpy", "nltk", "pycocotools", "tqdm"]

REPO = Path(__file__).resolve().parent


def captioner(checkpoint=None, device="cpu", runs_dir=None, **kwargs):
    """An ImageCaptioner (captioner.py) for a checkpoint: a path relative to the working directory or to this
    repository; None: the bundled model, or with runs_dir, best.pt of the newest run there; "latest": the newest
    run under this repository's runs/. kwargs: beam, max_len, length_penalty (the defaults of every call)."""
    if checkpoint is None and runs_dir is not None:
        checkpoint = "latest"
    elif checkpoint not in (None, "latest") and not Path(checkpoint).exists() and (REPO / checkpoint).exists():
        checkpoint = REPO / checkpoint
    with _own_modules():
        from captioner import ImageCaptioner

        return ImageCaptioner(checkpoint, device=device, runs_dir=runs_dir or REPO / "runs", **kwargs)


def _is_ours(module):
    return Path(getattr(module, "__file__", None) or "/").resolve().parent == REPO


@contextmanager
def _own_modules():
    """While inside, `import model` (and every other module name of this repository) finds this repository's
    module. Modules of the same names that the session imported from elsewhere are set aside meanwhile and put
    back afterwards; ours stay registered only under the names the session does not use."""
    names = {p.stem for p in REPO.glob("*.py")} - {"hubconf"}
    theirs = {n: sys.modules.pop(n) for n in names if n in sys.modules and not _is_ours(sys.modules[n])}
    sys.path.insert(0, str(REPO))
    try:
        yield
    finally:
        sys.path.remove(str(REPO))  # the first occurrence: the one inserted above
        for name in theirs:
            sys.modules.pop(name, None)
        sys.modules.update(theirs)

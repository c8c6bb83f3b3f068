"""torch.hub entry: load a trained captioner like other PyTorch models.

    captioner = torch.hub.load("path/to/this/repo", "captioner", source="local")   # the bundled Flickr8k model
    captioner = torch.hub.load("path/to/this/repo", "captioner", source="local", checkpoint="runs/NAME/best.pt")
    captioner("photo.jpg")                      # 'a dog runs through the grass'
    captioner([img1, img2], beam=3)             # PIL images, paths, or lists of them
    print(captioner.trained_on)                 # what the model learnt from

With no checkpoint it is the model bundled in models/ (its CNN's ImageNet weights come from torch's cache, put
there by `make weights`, or from torchvision's download); otherwise a checkpoint a run of train.py wrote.
"""
from pathlib import Path

dependencies = ["torch", "torchvision", "PIL"]

REPO = Path(__file__).resolve().parent


def captioner(checkpoint=None, device="cpu", runs_dir=None, **kwargs):
    """An ImageCaptioner (captioner.py) for a checkpoint: a path relative to the working directory or to this
    repository; None: the bundled model, or with runs_dir, best.pt of the newest run there; "latest": the newest
    run under this repository's runs/. kwargs: beam, max_len, length_penalty (the defaults of every call)."""
    from captioner import ImageCaptioner

    if checkpoint is None and runs_dir is not None:
        checkpoint = "latest"
    elif checkpoint not in (None, "latest") and not Path(checkpoint).exists() and (REPO / checkpoint).exists():
        checkpoint = REPO / checkpoint
    return ImageCaptioner(checkpoint, device=device, runs_dir=runs_dir or REPO / "runs", **kwargs)

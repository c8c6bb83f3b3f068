"""Where an attention decoder looked: its weights laid over the image, one panel per word (Xu et al.'s figure).

    fig = attention_figure(image, words, maps)   # maps (words, h, w): model.caption_batch(..., with_attention=True)

The figure code that both caption.py (`--attention DIR`) and visualize.py (the notebooks) draw with; it sits
below both, since entry points do not import each other. matplotlib and torch only, no model code.
"""
import math
import os
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from data_loader import IMAGENET_MEAN, IMAGENET_STD
OVERLAY_ALPHA = 0.6  # opacity of the weights over the image
OVERLAY_CMAP = "inferno"


def pixels(image):
    """What to draw, as (H, W, 3) floats in [0, 1]: a normalised image tensor (3, H, W) as the model saw it
    (get_transform(train=False)), or a PIL image or array as it is."""
    if isinstance(image, torch.Tensor):
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (image.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    return array / 255.0 if array.dtype == np.uint8 else array


def upsample(maps, size):
    """Weights on the map's grid (T, h, w) -> smooth maps at the image's size (T, H, W) (bilinear).

    Bilinear interpolation of non-negative weights stays non-negative; each map keeps its own scale (a weight
    of 0.4 on one cell stays about 0.4 at that cell's centre)."""
    maps = torch.as_tensor(maps).float().cpu()
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]  # (T, H, W)


def attention_figure(image, words, maps, ncols=5, cell_inches=2.2, title=None):
    """The image, then one panel per word with the weights behind that word laid over it.

    image: what the model saw (a normalised (3, H, W) tensor, or a PIL image / array of the evaluation crop);
    words: the caption's words; maps: their weights on the CNN's grid, (len(words), h, w), each summing to 1.
    Each panel's title gives the word and its largest weight; colours are scaled per panel, so that where the
    decoder looked shows even when its weights are spread.
    """
    maps = torch.as_tensor(maps)
    if maps.dim() != 3 or len(words) != maps.size(0):
        raise ValueError(f"need one (h, w) map per word: {len(words)} words, maps of shape {tuple(maps.shape)}")
    view = pixels(image)  # (H, W, 3)
    smooth = upsample(maps, view.shape[:2]).numpy()  # (T, H, W)
    n = len(words) + 1
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(ncols * cell_inches, nrows * (cell_inches + 0.3)
                                                                    + (0.5 if title else 0)))
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(view)
    axes.flat[0].set_title("image", fontsize=9)
    h, w = maps.shape[1:]
    for ax, word, weights, grid in zip(axes.flat[1:], words, smooth, maps):
        ax.imshow(view)
        ax.imshow(weights, cmap=OVERLAY_CMAP, alpha=OVERLAY_ALPHA, vmin=0, vmax=max(float(weights.max()), 1e-8))
        ax.set_title(f"{word} ({float(grid.max()):.2f})", fontsize=9)
    caption = " ".join(words)
    fig.suptitle("\n".join(textwrap.wrap(title or caption, 90)) + f"\nattention on a {h}x{w} grid", fontsize=10)
    fig.tight_layout()
    return fig


def save_png(fig, path, dpi=80):
    """Write a figure as PNG (its folder made as needed) through a temporary file, close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)  # a reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path

"""Figures shared by the notebooks and the README: captioned image grids and training curves."""
import math
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

CAPTION_WRAP = 38  # characters per caption line under a grid cell


def caption_grid(images, captions, ncols=4, cell_inches=3.0, wrap=CAPTION_WRAP, title=None):
    """A figure of images with text under each: `images` are paths or PIL images, `captions` strings.

    A caption may hold several lines ("greedy: ...\\nbeam 3: ..."); each line is wrapped to `wrap` characters.
    """
    n = len(images)
    if n != len(captions):
        raise ValueError(f"{n} images but {len(captions)} captions")
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    lines = max((len(_wrap(c, wrap)) for c in captions), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_inches, nrows * (cell_inches + 0.17 * lines)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(_open(image))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        ax.set_xlabel("\n".join(_wrap(caption, wrap)), fontsize=8, loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(rows):
    """Loss and perplexity per epoch (train and validation) beside the validation scores, from metrics.jsonl rows."""
    epochs = [r["epoch"] for r in rows]
    fig, (loss_ax, ppl_ax, score_ax) = plt.subplots(1, 3, figsize=(13, 3.4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    for key, label in (("train_ppl", "train"), ("val_ppl", "validation")):
        ppl_ax.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    for key in ("Bleu_4", "CIDEr", "object_f1"):
        if all(key in r for r in rows):
            score_ax.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    for ax, name in ((loss_ax, "cross-entropy loss"), (ppl_ax, "perplexity"), (score_ax, "validation scores")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _wrap(text, width):
    return [part for line in str(text).splitlines() or [""] for part in (textwrap.wrap(line, width) or [""])]


def _open(image):
    if isinstance(image, (str, Path)):
        from data_loader import load_image
        return load_image(image)
    return image

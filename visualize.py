"""Figures and tables shared by the notebooks, the README and `make demo`: captioned image grids, training curves,
dataset statistics, transforms, the architecture diagram, and the demo's closing summary."""
import json
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
    title_inches = 0.3 * len(str(title).splitlines()) if title else 0.0
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(ncols * cell_inches, nrows * (cell_inches + 0.2 * lines) + title_inches))
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
    # self-critical epochs (phase "scst") have a reward instead of a training cross-entropy: see scst_curves
    xe = [r for r in rows if r.get("phase", "xe") == "xe"]
    for ax, key, label, part in ((loss_ax, "train_loss", "train", xe), (loss_ax, "val_loss", "validation", rows),
                                 (ppl_ax, "train_ppl", "train", xe), (ppl_ax, "val_ppl", "validation", rows)):
        ax.plot([r["epoch"] for r in part], [r[key] for r in part], marker="o", label=label)
    for key in ("Bleu_4", "CIDEr", "object_f1"):
        if all(key in r for r in rows):
            score_ax.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    return _per_epoch_panels(fig, ((loss_ax, "cross-entropy loss"), (ppl_ax, "perplexity"),
                                   (score_ax, "validation scores")))


def scst_curves(rows):
    """Self-critical training from metrics.jsonl rows: the mean reward of the sampled captions and its baseline
    per self-critical epoch, beside the validation CIDEr of every epoch, cross-entropy ones included."""
    scst = [r for r in rows if r.get("phase") == "scst"]
    fig, (reward_ax, cider_ax) = plt.subplots(1, 2, figsize=(10, 3.4))
    for key, label in (("reward", "sampled captions' CIDEr-D (reward)"), ("baseline", "baseline")):
        reward_ax.plot([r["epoch"] for r in scst], [r[key] for r in scst], marker="o", label=label)
    for phase, label in (("xe", "cross-entropy"), ("scst", "self-critical")):
        part = [r for r in rows if r.get("phase", "xe") == phase and "CIDEr" in r]
        cider_ax.plot([r["epoch"] for r in part], [r["CIDEr"] for r in part], marker="o", label=label)
    return _per_epoch_panels(fig, ((reward_ax, "training reward"), (cider_ax, "validation CIDEr (greedy)")))


def _per_epoch_panels(fig, axes_and_titles):
    """Title, epoch axis, grid and legend on each panel of a per-epoch figure; the figure, laid out."""
    for ax, name in axes_and_titles:
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


# ---------------------------------------------------------------------------------------------------
# Figures and tables for the notebooks
# ---------------------------------------------------------------------------------------------------
def markdown_table(rows, columns=None):
    """A list of dicts (or lists, with `columns`) as a Markdown table that Jupyter renders."""
    from IPython.display import Markdown

    if rows and isinstance(rows[0], dict):
        columns = columns or list(rows[0])
        rows = [[r.get(c, "") for c in columns] for r in rows]
    lines = ["| " + " | ".join(map(_cell, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return Markdown("\n".join(lines))


def _cell(value):
    """One table cell: thousands separators, 4 significant digits for small floats, '|' escaped."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|").replace("\n", " ")
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def coco_samples(coco, image_dir, n=8, seed=0, captions_per_image=5, bullet="- "):
    """(image paths, caption texts) of n images drawn at random from a pycocotools COCO index.

    Each text holds the image's first `captions_per_image` captions, one per line after `bullet`, ready for
    caption_grid.
    """
    import numpy as np

    ids = sorted(coco.imgs)
    ids = [ids[i] for i in sorted(np.random.default_rng(seed).choice(len(ids), min(n, len(ids)), replace=False))]
    paths = [Path(image_dir) / coco.imgs[i]["file_name"] for i in ids]
    texts = ["\n".join(bullet + a["caption"].strip() for a in coco.imgToAnns[i][:captions_per_image]) for i in ids]
    return paths, texts


def caption_length_histogram(lengths_by_split):
    """Caption lengths in words, one outline per split, as shares of the split (splits differ in size)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    top = max((max(v) for v in lengths_by_split.values() if len(v)), default=1)
    bins = [b - 0.5 for b in range(1, top + 2)]  # one bin per word count
    for split, lengths in lengths_by_split.items():
        weights = [1 / len(lengths)] * len(lengths)
        ax.hist(lengths, bins=bins, weights=weights, histtype="step", linewidth=1.8, label=split)
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("share of the split's captions")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def word_frequency_chart(counts, top=25, threshold=None):
    """Horizontal bars of the `top` most frequent words of a Counter; a line marks a vocabulary threshold."""
    words = counts.most_common(top)[::-1]  # most frequent at the top
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(words) + 1))
    ax.barh([w for w, _ in words], [c for _, c in words], color="tab:blue")
    if threshold:
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"vocab_threshold = {threshold}")
        ax.legend(loc="lower right")
    ax.set_xlabel("occurrences in the training captions")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(f"the {len(words)} most frequent words")
    fig.tight_layout()
    return fig


def denormalize(image):
    """A normalised image tensor (3, H, W) back to displayable pixels (H, W, 3) in [0, 1]."""
    import torch
    from data_loader import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)


def transform_figure(image, eval_transform, train_transform, n_train=3, seed=0):
    """An image before and after the evaluation transform and `n_train` draws of the random training one."""
    import torch

    torch.manual_seed(seed)  # the training transform is random: fixed draws make the figure reproducible
    panels = [(image, f"original {image.width}x{image.height}")]
    after = eval_transform(image)  # (3, S, S)
    panels.append((denormalize(after), f"evaluation {tuple(after.shape)}"))
    for k in range(n_train):
        after = train_transform(image)
        panels.append((denormalize(after), f"training draw {k + 1}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (pixels, title) in zip(axes.flat, panels):
        ax.imshow(pixels)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def diagram_pen(ax):
    """(box, arrow): the two drawing helpers the architecture diagrams share, bound to one matplotlib axis.

    box(x, y, text, color, w, h) draws a rounded box centred on (x, y); arrow(x0, y0, x1, y1) an arrow.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    def box(x, y, text, color, w=1.7, h=0.85):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", fc=color, ec="0.3"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    def arrow(x0, y0, x1, y1, **kw):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=11, color="0.25", **kw))

    return box, arrow


def architecture_diagram(backbone="mobilenet_v2", image_size=128, channels=1280, grid=1, head_hidden=0,
                         embed_size=100, hidden_size=512, vocab_size=None, words=("a", "red", "circle"),
                         embed_norm=False, backbone_blocks=0, local_hidden=0, image_every_step=False,
                         decoder="lstm", attention_size=0):
    """Boxes and arrows of Show and Tell with this configuration's sizes: the CNN encoder feeds the image
    embedding to the LSTM at step 0 (and beside every word with image_every_step); the caption's words follow;
    a linear layer scores the next word. channels: the CNN map's channels (the encoder's feature_shape[0]).
    decoder="attention" draws Show, Attend and Tell instead (attention_diagram)."""
    if decoder == "attention":
        return attention_diagram(backbone, image_size, channels, embed_size, hidden_size, attention_size, vocab_size,
                                 words, embed_norm, backbone_blocks, local_hidden)
    V = vocab_size or "V"
    features = channels * grid * grid
    if local_hidden:
        pool = f"MLP at every position\n{channels}→{local_hidden}→{local_hidden}, ReLU\nmax over positions"
        head = f"Linear {local_hidden}→{embed_size}"
    else:
        pool = f"average pool to {grid}x{grid}\nflatten: (B, {features})"
        head = f"Linear {features}→{head_hidden}→ReLU→{embed_size}" if head_hidden else \
            f"Linear {features}→{embed_size}"
    head += " → LayerNorm" if embed_norm else ""
    blocks = f", first {backbone_blocks} blocks" if backbone_blocks else ""
    fig, ax = plt.subplots(figsize=(12, 5.6))
    ax.set_xlim(0, 12.2)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    box, arrow = diagram_pen(ax)

    enc, dec, word_in, word_out = "#cfe3f7", "#fde2c4", "#e6e6e6", "#d9f2d9"
    # The encoder, top to bottom on the left.
    x = 1.2
    box(x, 5.5, f"image\n(B, 3, {image_size}, {image_size})", word_in)
    box(x, 4.2, f"CNN {backbone}{blocks}\nImageNet weights, frozen\n(B, {channels}, h, w)", enc, w=2.1, h=1.0)
    pool_h = 0.85 + 0.15 * bool(local_hidden)
    box(x, 2.85, pool, enc, w=2.1, h=pool_h)
    box(x, 1.55, f"embedding (trained)\n{head.replace(' → LayerNorm', chr(10) + '→ LayerNorm')}\n(B, {embed_size})",
        enc, w=2.1, h=1.0 + 0.25 * embed_norm)
    for y0, y1 in ((5.07, 4.7), (3.7, 2.85 + pool_h / 2 + 0.05), (2.85 - pool_h / 2 - 0.05, 2.05)):
        arrow(x, y0, x, y1)
    ax.text(x, 0.55, "EncoderCNN", ha="center", fontsize=10, weight="bold")
    # The decoder, unrolled in time.
    inputs = ["<start>", *words]
    outputs = ["<start>", *words, "<end>"]
    xs = [3.4 + 1.75 * t for t in range(len(outputs))]
    for t, xt in enumerate(xs):
        box(xt, 2.85, f"LSTM\n{hidden_size} units", dec, w=1.3, h=0.75)
        box(xt, 4.2, f"Linear\n{hidden_size}→{V}", dec, w=1.3, h=0.65)
        box(xt, 5.5, outputs[t], word_out, w=1.0, h=0.45)
        arrow(xt, 3.23, xt, 3.87)
        arrow(xt, 4.53, xt, 5.27)
        if t > 0:
            if image_every_step:
                box(xt, 1.55, f"[embedding of {inputs[t - 1]};\nimage] → ({2 * embed_size},)", word_in, w=1.5, h=0.7)
            else:
                box(xt, 1.55, f"word embedding\n{inputs[t - 1]} → ({embed_size},)", word_in, w=1.5, h=0.7)
            arrow(xt, 1.9, xt, 2.47)
            arrow(xs[t - 1] + 0.65, 2.85, xt - 0.65, 2.85)  # (h, c) carried to the next step
    arrow(x + 1.05, 1.75, xs[0], 2.47, connectionstyle="arc3,rad=0.2")
    ax.text(xs[0], 1.55, "step 0:\nthe image" + (" (twice)" if image_every_step else ""), ha="center", va="center",
            fontsize=8, style="italic")
    ax.text((xs[0] + xs[-1]) / 2, 0.55, "DecoderRNN", ha="center", fontsize=10, weight="bold")
    ax.text((xs[0] + xs[-1]) / 2, 0.1, "training: the true caption's words are the inputs (teacher forcing); "
            "sampling: each predicted word is fed back as the next input", ha="center", fontsize=8, color="0.3")
    fig.tight_layout()
    return fig


def attention_diagram(backbone="mobilenet_v2", image_size=128, channels=1280, embed_size=100, hidden_size=512,
                      attention_size=0, vocab_size=None, words=("a", "red", "circle"), embed_norm=False,
                      backbone_blocks=0, local_hidden=0):
    """Boxes and arrows of Show, Attend and Tell (model.AttentionDecoder) with this configuration's sizes: the
    encoder hands over one annotation per map position; before each word, attention weighs them against the
    LSTM's state and the gated context goes into the LSTM beside the word."""
    V, A = vocab_size or "V", attention_size or hidden_size
    fig, ax = plt.subplots(figsize=(12, 6.2))
    ax.set_xlim(0, 12.2)
    ax.set_ylim(0, 6.9)
    ax.axis("off")

    box, arrow = diagram_pen(ax)

    enc, dec, att, word_in, word_out = "#cfe3f7", "#fde2c4", "#f6d5e5", "#e6e6e6", "#d9f2d9"
    # The encoder: the map is kept, one annotation per position.
    x = 1.2
    blocks = f", first {backbone_blocks} blocks" if backbone_blocks else ""
    per_position = (f"MLP {channels}→{local_hidden}→{local_hidden}→{embed_size}" if local_hidden
                    else f"Linear {channels}→{embed_size}") + (" → LayerNorm" if embed_norm else "")
    box(x, 6.2, f"image\n(B, 3, {image_size}, {image_size})", word_in)
    box(x, 4.95, f"CNN {backbone}{blocks}\nImageNet weights, frozen\n(B, {channels}, h, w)", enc, w=2.1, h=1.0)
    box(x, 3.45, f"at every position (no max):\n{per_position}\nannotations a_1..a_L\n(B, L = h·w, {embed_size})",
        enc, w=2.2, h=1.25)
    box(x, 1.7, f"initial state\nh0, c0 = tanh(Linear(\nmean annotation))", enc, w=2.1, h=0.95)
    for y0, y1 in ((5.77, 5.45), (4.45, 4.08), (2.82, 2.18)):
        arrow(x, y0, x, y1)
    ax.text(x, 0.75, "EncoderCNN(attention=True)", ha="center", fontsize=10, weight="bold")
    # The decoder, unrolled in time: attention, then the LSTM, then the output layer, at every word.
    inputs, outputs = ["<start>", *words], [*words, "<end>"]
    xs = [3.7 + 2.05 * t for t in range(len(outputs))]
    for t, xt in enumerate(xs):
        box(xt, 6.2, outputs[t], word_out, w=1.0, h=0.45)
        box(xt, 5.25, f"dropout, Linear\n{hidden_size}→{V}", dec, w=1.4, h=0.6)
        box(xt, 4.2, f"LSTMCell\n{hidden_size} units", dec, w=1.4, h=0.65)
        box(xt - 0.25, 2.75, f"attention ({A})\nα = softmax(w·tanh(\nW_a a_l + W_h h))\ncontext β·Σ α_l a_l",
            att, w=1.45, h=1.15)
        box(xt, 1.35, f"embedding of\n{inputs[t]} ({embed_size},)", word_in, w=1.4, h=0.6)
        arrow(xt, 4.53, xt, 4.95)
        arrow(xt, 5.55, xt, 5.97)
        arrow(xt - 0.25, 3.33, xt - 0.25, 3.87)  # the gated context
        arrow(xt + 0.6, 1.65, xt + 0.6, 3.87)  # the word, beside it
        h_from = (x + 1.05, 1.9) if t == 0 else (xs[t - 1] + 0.7, 4.1)  # h of the previous step, or h0
        arrow(*h_from, xt - 0.98, 2.95, connectionstyle="arc3,rad=0.15")
        if t > 0:
            arrow(xs[t - 1] + 0.7, 4.35, xt - 0.7, 4.35)  # (h, c) carried to the next step
    arrow(x + 1.1, 3.2, xs[0] - 0.98, 2.5)  # the annotations, read at every step
    ax.text((x + xs[0]) / 2 + 0.15, 2.05, "all L annotations,\nat every step", ha="center", fontsize=7, color="0.3")
    ax.text((xs[0] + xs[-1]) / 2, 0.75, "AttentionDecoder (Xu et al., 2015: soft attention)", ha="center",
            fontsize=10, weight="bold")
    ax.text((xs[0] + xs[-1]) / 2, 0.25, "α sums to 1 over the L positions; β = sigmoid(Linear(h)) gates the context; "
            "training adds λ·Σ_l (1 − Σ_t α_tl)²", ha="center", fontsize=8, color="0.3")
    fig.tight_layout()
    return fig


def attention_figures(encoder, decoder, vocab, paths, image_size, beam=1, max_len=20, length_penalty=0.0,
                      ncols=6):
    """{path: figure} for image files: each image as the model saw it, then one panel per word of its caption
    with the weights behind that word laid over it (heatmaps.attention_figure). Needs an attention decoder;
    unreadable images are named and left out."""
    from data_loader import ImageLoadError, get_transform, load_image
    from heatmaps import attention_figure
    from model import caption_batch

    transform = get_transform(train=False, image_size=image_size)
    figures = {}
    for path in paths:
        try:
            image = transform(load_image(path))  # (3, S, S)
        except ImageLoadError as e:
            print(f"left out {path}: {e}")
            continue
        (text,), ((words, maps),) = caption_batch(encoder, decoder, vocab, images=image[None], beam=beam,
                                                  max_len=max_len, length_penalty=length_penalty,
                                                  with_attention=True)
        figures[path] = attention_figure(image, words, maps, ncols=ncols, title=f"{Path(path).name}: {text}")
    return figures


def save_figure(fig, path, dpi=100, colors=None):
    """Write a figure as PNG (folders made as needed) and return the path.

    colors: reduce the PNG to this many colours (e.g. 256), which makes image grids for the README about 4x
    smaller with no visible change.
    """
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    image = Image.open(buffer)
    if colors:
        image = image.convert("RGB").quantize(colors, dither=Image.Dither.NONE)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)  # a reader (the README, a notebook) never sees half a file
    return path


# ---------------------------------------------------------------------------------------------------
# `make demo`: the README's figure and the closing summary
# ---------------------------------------------------------------------------------------------------
DEMO_SPLITS = ("test", "test_novel")  # shapes: seen colour-shape pairs, then held-out ones
SPLIT_NOTES = {"test_novel": "colour-shape pairs never seen in training"}


def demo_captions(checkpoint=None, runs_dir="runs", data_root=None, splits=DEMO_SPLITS, per_split=4, seed=0):
    """Test images captioned by a checkpoint (default: the newest run's best.pt), with one true caption each:
    one row per split. data_root None: the one the checkpoint was trained on; splits it lacks are left out.

        save_figure(demo_captions(), "images/figures/demo_captions.png", dpi=80, colors=256)   # what `make demo` does
    """
    from caption import caption_images
    from data_loader import find_split, load_coco
    from model import checkpoint_max_len, latest_checkpoint, load_checkpoint

    checkpoint = Path(checkpoint or latest_checkpoint(runs_dir))
    encoder, decoder, vocab, ckpt = load_checkpoint(checkpoint)
    data_root = data_root or ckpt["config"]["data_root"]
    paths, labels, shown = [], [], []
    for split in splits:
        try:
            image_dir, annotations = find_split(data_root, split)
        except FileNotFoundError:
            continue
        chosen, truths = coco_samples(load_coco(annotations), image_dir, per_split, seed, captions_per_image=1,
                                      bullet="truth: ")
        captions, failures = caption_images(encoder, decoder, vocab, chosen, ckpt["model_args"]["image_size"],
                                            max_len=checkpoint_max_len(ckpt), progress=False)
        paths += chosen
        labels += [f"model: {captions.get(p) or failures.get(p)}\n{t}" for p, t in zip(chosen, truths)]
        shown.append(split)
    if not paths:
        raise FileNotFoundError(f"none of the splits {list(splits)} exists under {data_root}")
    return caption_grid(paths, labels, ncols=per_split, cell_inches=2.4,
                        title=f"{checkpoint.parent.name}/{checkpoint.name}: the model's caption, then a true one\n"
                              + "rows: " + ", ".join(f"{s} ({SPLIT_NOTES[s]})" if s in SPLIT_NOTES else s
                                                     for s in shown))


def own_images(checkpoint=None, runs_dir="runs", images_dir="images", beam=3, ncols=3, title=None):
    """The repository's sample photos (images_dir) captioned by a checkpoint (default: the newest run's
    best.pt), greedy and with beam search: the README's figure for the Flickr8k model.

        save_figure(own_images("models/flickr8k.pt"), "images/figures/flickr8k_own_images.png", dpi=80, colors=256)
    """
    from caption import caption_images, image_files
    from model import checkpoint_max_len, latest_checkpoint, load_checkpoint

    checkpoint = Path(checkpoint or latest_checkpoint(runs_dir))
    encoder, decoder, vocab, ckpt = load_checkpoint(checkpoint)
    paths, size, max_len = image_files([images_dir]), ckpt["model_args"]["image_size"], checkpoint_max_len(ckpt)
    greedy, failed = caption_images(encoder, decoder, vocab, paths, size, beam=1, max_len=max_len, progress=False)
    beamed, _ = caption_images(encoder, decoder, vocab, paths, size, beam=beam, max_len=max_len, progress=False)
    shown = [p for p in paths if p in greedy]
    if not shown:
        raise FileNotFoundError(f"no image in {images_dir} could be captioned: {failed}")
    return caption_grid(shown, [f"greedy: {greedy[p]}\nbeam {beam}: {beamed[p]}" for p in shown], ncols=ncols,
                        cell_inches=2.8, title=title or f"{images_dir}/ captioned by {checkpoint.parent.name}/{checkpoint.name}")


def demo_summary(outputs_dir="outputs", runs_dir="runs", figures=("images/figures/demo_captions.png",)):
    """What `make demo` produced and its final scores, as text: outputs/inference_scores.json when
    3_Inference wrote it, else the last metrics.jsonl row of the newest run. figures: the captioned images the
    demo drew (the README's figure on shapes; outputs/ only on a dataset of the user's, whose photos never go
    into images/)."""
    outputs_dir, runs_dir = Path(outputs_dir), Path(runs_dir)
    lines = ["", "== make demo: done", f"executed notebooks and their HTML:  {outputs_dir / 'notebooks'}/"]
    runs = sorted((p.parent for p in runs_dir.glob("*/metrics.jsonl")), key=lambda d: d.stat().st_mtime)
    if runs:
        lines.append(f"the training run (checkpoints, metrics): {runs[-1]}/")
    if figures:
        lines.append(f"captioned images:  {', '.join(map(str, figures))}")
    scores_file = outputs_dir / "inference_scores.json"
    if scores_file.is_file():
        lines += ["", f"final scores ({scores_file}):", *_inference_score_lines(json.loads(scores_file.read_text()))]
    elif runs:
        from train import read_metrics

        last = read_metrics(runs[-1])[-1]
        lines += ["", f"no {scores_file}; last epoch of {runs[-1].name} (validation):", *_score_lines(last)]
    return "\n".join(lines)


def _inference_score_lines(summary):
    """3_Inference's summary: its settings, then one column of scores per decoding (greedy, beam k)."""
    columns = summary.get("scores")
    if not (isinstance(columns, dict) and columns and all(isinstance(c, dict) for c in columns.values())):
        return _score_lines(summary)  # a layout this function does not know: print it as it is
    lines = _score_lines({k: v for k, v in summary.items() if k not in ("scores", "missing")})
    metrics = list(dict.fromkeys(k for c in columns.values() for k in c))
    width = max(len(m) for m in metrics)
    lines.append("  " + " " * width + "".join(f"{name:>10}" for name in columns))
    for m in metrics:
        cells = [f"{c[m]:>10.3f}" if isinstance(c.get(m), (int, float)) else f"{'-':>10}" for c in columns.values()]
        lines.append(f"  {m:<{width}}" + "".join(cells))
    lines += [f"  {k}: {why}" for k, why in (summary.get("missing") or {}).items()]
    return lines


def _score_lines(scores, indent="  "):
    """Nested dicts of numbers as aligned lines: a sub-dict becomes a heading with its scores indented."""
    out = []
    width = max((len(str(k)) for k in scores), default=0)
    for key, value in scores.items():
        if isinstance(value, dict):
            out += [f"{indent}{key}:", *_score_lines(value, indent + "  ")]
        elif isinstance(value, float):
            out.append(f"{indent}{key:<{width}}  {value:.3f}")
        else:
            out.append(f"{indent}{key:<{width}}  {value}")
    return out


# ---------------------------------------------------------------------------------------------------
# `make photos` and 3_Inference's own-photo cell: your pictures, captioned
# ---------------------------------------------------------------------------------------------------
def photo_figures(checkpoint, folders=("images",), out_dir="outputs", beam=3):
    """Write out_dir/photos_<folder>.png for each folder (its pictures with their greedy and beam captions) and,
    for a model with attention, out_dir/attention/<folder>_<picture>.png (one panel per word); returns the paths."""
    from caption import image_files
    from captioner import ImageCaptioner
    from heatmaps import save_png

    out_dir, written, used = Path(out_dir), [], set()
    captioner = ImageCaptioner(checkpoint)
    for folder in folders:
        name = Path(folder).resolve().name
        while name in used:  # two folders of one name: photos_x.png, photos_x-2.png
            name += "-2"
        used.add(name)
        fig = own_images(checkpoint, images_dir=folder, beam=beam,
                         title=f"{folder}/ captioned by {Path(checkpoint).parent.name}/{Path(checkpoint).name}\n"
                               f"{captioner.trained_on}")
        written.append(save_figure(fig, out_dir / f"photos_{name}.png", dpi=80))
        plt.close(fig)
        if captioner.has_attention:
            for path in image_files([folder]):
                written.append(save_png(captioner.attention_figure(path), out_dir / "attention" / f"{name}_{path.stem}.png"))
    return written


def bundled_photos(folder="images", out_dir="outputs/bundled", beam=3):
    """`make demo`'s last step: the pictures in folder captioned by the bundled model (models/flickr8k.pt), written
    to out_dir/captions.tsv (path, caption) and out_dir/photos_<folder>.png; returns the text to print."""
    from bundle import BUNDLED_MODEL
    from caption import image_files
    from captioner import ImageCaptioner

    captioner = ImageCaptioner(BUNDLED_MODEL)
    paths = image_files([folder])
    rows = [f"{path}\t{text}" for path, text in zip(paths, captioner(paths, beam=beam))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "captions.tsv").write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    figures = photo_figures(BUNDLED_MODEL, [folder], out_dir, beam=beam)
    return "\n".join([f"== {folder}/ captioned by the bundled model ({captioner.trained_on}), beam {beam}:", *rows,
                      f"== written: {out_dir / 'captions.tsv'}, {', '.join(map(str, figures))}"])


def show_photo(captioner, photo, beam=3):
    """One picture (a path or a PIL image) with its greedy and beam captions, and, for a model with attention,
    where each word of the beam caption looked: the figures, for a notebook to show."""
    image = _open(photo).convert("RGB")
    greedy, beamed = captioner(image), captioner(image, beam=beam)
    label = f"greedy: {greedy}\nbeam {beam}: {beamed}"
    name = Path(photo).name if isinstance(photo, (str, Path)) else getattr(photo, "name", None)
    figures = [caption_grid([image], [label], ncols=1, cell_inches=4.0, title=name)]
    if captioner.has_attention:
        figures.append(captioner.attention_figure(image, beam=beam))
    return figures


def photo_upload(captioner, beam=3):
    """An upload button (ipywidgets) whose pictures are captioned below it as they arrive, or None without
    ipywidgets. Under papermill nobody uploads: the widget is drawn and nothing else happens."""
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:
        return None
    import io

    upload = widgets.FileUpload(accept="image/*", multiple=False, description="your photo")
    out = widgets.Output()

    def on_upload(change):
        out.clear_output()
        with out:
            for item in change["new"]:
                try:
                    image = Image.open(io.BytesIO(bytes(item["content"])))
                    image.load()
                except Exception as e:  # anything PIL cannot read: say so, keep the widget alive
                    print(f"{item.get('name', 'the file')}: not a picture PIL can read ({e})")
                    continue
                image.name = item.get("name", "upload")
                for fig in show_photo(captioner, image, beam):
                    display(fig)
                    plt.close(fig)

    upload.observe(on_upload, names="value")
    return widgets.VBox([upload, out])

"""One object that captions pictures with a trained checkpoint: hubconf.py, caption.py and 3_Inference use it.

    captioner = ImageCaptioner()                             # the bundled Flickr8k model (models/flickr8k.pt)
    captioner = ImageCaptioner("runs/NAME/best.pt")        # a run of your own; "latest": the newest under runs/
    captioner("images/chelsea.jpg")                          # 'a dog is sitting on a bed'
    captioner([pil_image, "photo.png"], beam=3)              # a list, in the same order
    captioner("photo.jpg", with_attention=True)              # AttentionCaption(caption, words, weights, image)
    print(captioner.trained_on)                              # what the model learnt from, in one line

It wraps model.load_checkpoint, data_loader's image loading and evaluation transform, and model.caption_batch:
no decoding of its own.
"""
from pathlib import Path
from typing import NamedTuple

import torch

import model_card
from bundle import BUNDLED_MODEL
from data_loader import get_transform, load_image, to_rgb
from model import (caption_batch, checkpoint_max_len, get_device, latest_checkpoint, load_checkpoint,
                   read_checkpoint)


class AttentionCaption(NamedTuple):
    caption: str
    words: list  # the caption's words (and <end> when the decoder wrote it)
    weights: torch.Tensor  # (len(words), h, w): where each word looked on the CNN's grid; each map sums to 1
    image: torch.Tensor  # (3, S, S): the picture as the model saw it (normalised), for heatmaps.attention_figure


def which_checkpoint(checkpoint=None, runs_dir="runs"):
    """The checkpoint to caption with: a path; None, the bundled model; "latest", best.pt of the newest run under
    runs_dir. A model trained on shapes is never picked for photographs unless it is named."""
    if checkpoint is None:
        if not BUNDLED_MODEL.is_file():
            raise FileNotFoundError(f"the bundled model {BUNDLED_MODEL} is missing from this copy of the repository; "
                                    "get it back with `git checkout -- models/`, or name a checkpoint")
        return BUNDLED_MODEL
    return latest_checkpoint(runs_dir) if str(checkpoint) == "latest" else Path(checkpoint)


def for_photographs(checkpoint, runs_dir="runs"):
    """(checkpoint, why): the checkpoint to caption photographs with. A model trained on the shapes set knows only
    colours and shapes, so then the bundled Flickr8k model captions them instead, and `why` says so."""
    checkpoint = which_checkpoint(checkpoint, runs_dir)
    ckpt = read_checkpoint(checkpoint)
    data = model_card.read_state(Path(checkpoint).parent).get("data") or ckpt.get("data") or {}
    shapes = data["kind"] == "shapes" if "kind" in data else \
        (Path(ckpt.get("config", {}).get("data_root", "")) / "shapes_meta.json").is_file()
    if shapes and checkpoint != BUNDLED_MODEL:
        return BUNDLED_MODEL, (f"{checkpoint} learnt from the shapes set and knows only shapes and colours: "
                               f"photographs are captioned by the bundled model, {BUNDLED_MODEL.name}")
    return checkpoint, f"photographs are captioned by {checkpoint}"


class ImageCaptioner:
    """A checkpoint ready to caption PIL images, image files or lists of them (greedy or beam search)."""

    def __init__(self, checkpoint=None, device="cpu", runs_dir="runs", beam=1, max_len=None, length_penalty=0.0):
        self.checkpoint = which_checkpoint(checkpoint, runs_dir)
        self.device = get_device(device)
        self.encoder, self.decoder, self.vocab, self.ckpt = load_checkpoint(self.checkpoint, self.device)
        self.image_size = self.ckpt["model_args"]["image_size"]
        self.transform = get_transform(train=False, image_size=self.image_size)
        self.beam, self.length_penalty = beam, length_penalty
        self.max_len = checkpoint_max_len(self.ckpt, max_len)
        self.trained_on = model_card.trained_on(self.ckpt, self.checkpoint)

    @property
    def has_attention(self):
        return bool(getattr(self.encoder, "attention", False))

    def image_tensor(self, image):
        """A PIL image or an image path -> the normalised (3, S, S) tensor the model reads."""
        if isinstance(image, (str, Path)):
            image = load_image(image)  # ImageLoadError (a ValueError) names the file and why
        elif hasattr(image, "convert"):  # a PIL image, in any mode
            image = to_rgb(image)
        else:
            raise TypeError(f"cannot caption a {type(image).__name__}: give a PIL image, an image path, or a list of them")
        return self.transform(image)

    def __call__(self, images, beam=None, max_len=None, length_penalty=None, with_attention=False):
        """The caption of one picture (a string), or of a list of them (a list). with_attention: an
        AttentionCaption per picture instead, for a checkpoint with an attention decoder."""
        if with_attention and not self.has_attention:
            raise ValueError(f"{self.checkpoint} has no attention weights: its decoder is "
                             f"{self.ckpt['model_args'].get('decoder', 'lstm')!r}; train one with --decoder attention")
        single = not isinstance(images, (list, tuple))
        batch = torch.stack([self.image_tensor(x) for x in ([images] if single else images)])  # (B, 3, S, S)
        out = caption_batch(self.encoder, self.decoder, self.vocab, images=batch, beam=beam or self.beam,
                            max_len=max_len or self.max_len,
                            length_penalty=self.length_penalty if length_penalty is None else length_penalty,
                            with_attention=with_attention)
        if with_attention:
            texts, attention = out
            out = [AttentionCaption(t, words, maps, image) for t, (words, maps), image in zip(texts, attention, batch)]
        return out[0] if single else out

    def attention_figure(self, image, beam=None):
        """The picture and one panel per word of its caption, with the weights behind the word laid over it."""
        from heatmaps import attention_figure

        found = self(image, beam=beam, with_attention=True)
        name = f"{Path(image).name}: " if isinstance(image, (str, Path)) else ""
        return attention_figure(found.image, found.words, found.weights, title=f"{name}{found.caption}")

    def __repr__(self):
        return f"ImageCaptioner({str(self.checkpoint)!r}, device={str(self.device)!r}): {self.trained_on}"

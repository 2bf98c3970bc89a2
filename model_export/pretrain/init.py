"""Start fine-tuning from pretrained encoders: ``lumbar-ai train --init-image CKPT --init-text CKPT``.

The image checkpoint (``lumbar-ai pretrain image``) holds a ``ConvNextV2Model`` state dict that loads
into ``model.image_encoder.backbone``; the text checkpoint (``lumbar-ai pretrain text``) holds the
``TextEncoder`` state (transformer and projection) that loads into ``model.text_encoder``. Both loads
are strict: an encoder of another size, another text model or another embedding width is an error that
names the checkpoint, never a silent partial load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.errors import ConfigError

IMAGE_KIND = "fcmae-convnextv2"
TEXT_KIND = "clip-text-encoder"


def read_pretrained(path: Path, kind: str) -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"cannot read pretrained checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"{path} is not a {kind} checkpoint (found {found!r})")
    return ckpt


def init_image_encoder(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load an FCMAE-pretrained ConvNeXt V2 into the model's image encoder; returns provenance."""
    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        raise ConfigError(f"--init-image {path}: this model has no ConvNeXt V2 image encoder (the U-Net baseline)")
    ckpt = read_pretrained(path, IMAGE_KIND)
    try:
        encoder.backbone.load_state_dict(ckpt["backbone"], strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"--init-image {path}: a {ckpt['config'].get('encoder')} encoder does not fit this "
                          f"model's encoder ({str(exc).splitlines()[0]})") from exc
    return {"checkpoint": str(path), "encoder": ckpt["config"].get("encoder"),
            "steps": ckpt.get("state", {}).get("step"), "studies": len(ckpt.get("provenance", {}).get("studies", []))}


def init_text_encoder(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load a contrastively pretrained text encoder (transformer + projection); returns provenance."""
    encoder = getattr(model, "text_encoder", None)
    if encoder is None:
        raise ConfigError(f"--init-text {path}: only the text-guided model has a text encoder")
    ckpt = read_pretrained(path, TEXT_KIND)
    try:
        encoder.load_state_dict(ckpt["text_encoder"], strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"--init-text {path}: its text model or embedding width ({ckpt.get('embed_dim')}) does "
                          f"not fit this model's ({str(exc).splitlines()[0]})") from exc
    if getattr(model, "_frozen_sentences", None) is not None:
        model._frozen_sentences = None  # cached prompt features came from the old weights
    return {"checkpoint": str(path), "objective": ckpt.get("objective"),
            "steps": ckpt.get("state", {}).get("step"), "reports": ckpt.get("provenance", {}).get("reports")}


def pretrained_initialiser(init_image: Path | None, init_text: Path | None
                           ) -> Callable[[nn.Module], dict[str, Any]] | None:
    """A function the training loop calls on the fresh model, or None when nothing is to be loaded."""
    if init_image is None and init_text is None:
        return None

    def initialise(model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if init_image is not None:
            out["image"] = init_image_encoder(model, init_image)
        if init_text is not None:
            out["text"] = init_text_encoder(model, init_text)
        return out

    return initialise

"""Explanations for people: an image's attributions as a heat overlay (PNG), a text's as
per-word scores."""

from __future__ import annotations

import io

import numpy as np

from nimbus.modelformat.text import TextEncoder


def overlay_png(image: np.ndarray, attributions: np.ndarray, alpha: float = 0.6) -> bytes:
    """``image`` uint8 ``[H, W, C]`` in grey, with red where the attributions support the
    target class and blue where they speak against it, opaque in proportion to their size
    (scaled to the 99th percentile of their magnitude, so one pixel does not wash out the
    rest)."""
    from PIL import Image

    if image.ndim != 3 or attributions.shape != image.shape:
        raise ValueError(f"image {image.shape} and attributions {attributions.shape} differ")
    grey = image.astype(np.float32).mean(axis=-1)
    heat = attributions.astype(np.float32).sum(axis=-1)
    scale = float(np.percentile(np.abs(heat), 99)) or 1.0
    weight = np.clip(np.abs(heat) / scale, 0.0, 1.0)[..., None] * alpha
    colour = np.where((heat >= 0)[..., None], [255.0, 0.0, 0.0], [0.0, 64.0, 255.0])
    out = grey[..., None] * (1.0 - weight) + colour * weight
    buffer = io.BytesIO()
    Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def word_scores(
    encoder: TextEncoder, words: list[str], slots: np.ndarray
) -> list[tuple[str, float]]:
    """Each word of a text with its attribution: its own token slot's plus an even share of
    every n-gram slot it is part of. ``slots``: one text's per-slot attributions ``[L]``;
    words cut off by ``max_len`` score 0."""
    scores = [0.0] * len(words)
    for slot, span in enumerate(encoder.trace(words)):
        share = float(slots[slot]) / len(span)
        for word in span:
            scores[word] += share
    return list(zip(words, scores, strict=True))

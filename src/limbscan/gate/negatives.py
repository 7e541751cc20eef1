"""Pictures that are no radiograph, made here, for the gate to learn what to refuse.

A PACS and a user's folder hold screenshots, scanned forms, charts, photographs and test
patterns beside the radiographs. These are drawn with matplotlib and numpy from a seed (nothing
downloaded): charts, text pages, shapes, gradients, noise, checkerboards, and the photograph
matplotlib ships. Grey float images in [0, 1], as :func:`limbscan.io.read_image` gives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_WORDS = ("patient", "report", "normal", "study", "finding", "left", "right", "view", "series", "image", "date",
          "result", "total", "value", "name", "mean", "table", "page", "figure", "analysis", "lorem", "ipsum")


def _figure_pixels(draw: Callable, rng: np.random.Generator) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    w, h = rng.uniform(3, 8), rng.uniform(3, 8)
    fig = plt.figure(figsize=(w, h), dpi=64)
    try:
        draw(fig, rng)
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32)[..., :3] / 255.0
    finally:
        plt.close(fig)
    return rgba @ np.array([0.299, 0.587, 0.114], np.float32)


def _chart(fig, rng) -> None:
    ax = fig.add_subplot()
    kind = rng.integers(4)
    x = np.arange(int(rng.integers(5, 60)))
    if kind == 0:
        ax.plot(x, np.cumsum(rng.normal(size=(len(x), int(rng.integers(1, 4)))), axis=0))
    elif kind == 1:
        ax.bar(x, rng.random(len(x)))
    elif kind == 2:
        ax.scatter(rng.random(200), rng.random(200), s=rng.uniform(2, 30))
    else:
        ax.imshow(rng.random((12, 12)), cmap=str(rng.choice(["viridis", "gray", "magma"])))
    ax.set_title(" ".join(rng.choice(_WORDS, 3)))


def _text(fig, rng) -> None:
    for i in range(int(rng.integers(8, 30))):
        fig.text(0.05, 1 - (i + 1) / 32, " ".join(rng.choice(_WORDS, int(rng.integers(3, 9)))),
                 fontsize=float(rng.uniform(6, 12)))


def _shapes(fig, rng) -> None:
    import matplotlib.patches as patches

    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_facecolor(str(rng.uniform(0, 1)))
    for _ in range(int(rng.integers(3, 25))):
        x, y, s = rng.random(), rng.random(), rng.uniform(0.03, 0.3)
        colour = tuple(rng.random(3))
        shape = rng.integers(3)
        if shape == 0:
            ax.add_patch(patches.Circle((x, y), s, color=colour))
        elif shape == 1:
            ax.add_patch(patches.Rectangle((x, y), s, s * rng.uniform(0.3, 3), color=colour))
        else:
            ax.plot(rng.random(5), rng.random(5), color=colour, lw=float(rng.uniform(1, 8)))


def _array_picture(rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(128, 600)), int(rng.integers(128, 600))
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    if kind == 0:  # gradient
        a, b = rng.normal(size=2)
        img = a * xx + b * yy
    elif kind == 1:  # smooth noise
        small = rng.random((int(rng.integers(3, 20)), int(rng.integers(3, 20))))
        img = np.kron(small, np.ones((h // small.shape[0] + 1, w // small.shape[1] + 1)))[:h, :w]
    elif kind == 2:  # checkerboard / stripes
        period = int(rng.integers(4, 64))
        img = ((np.arange(h)[:, None] // period + np.arange(w)[None] // period * rng.integers(0, 2)) % 2).astype(float)
    else:  # white noise, a blank page with it
        img = rng.random((h, w)) * rng.uniform(0.05, 1) + rng.uniform(0, 0.5)
    img = img - img.min()
    return (img / max(float(img.max()), 1e-6)).astype(np.float32)


def _shipped_photographs() -> list[np.ndarray]:
    """The photograph matplotlib ships, and its quarter turns and crops."""
    from matplotlib import cbook

    from limbscan.io import read_image

    try:
        pixels, _ = read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception:  # noqa: BLE001 - a matplotlib without its sample data: the drawn ones still serve
        return []
    h, w = pixels.shape
    crops = [pixels, pixels[: h // 2], pixels[:, : w // 2], pixels[h // 4 :, w // 4 :]]
    return [np.rot90(c, k).copy() for c in crops for k in (0, 1)]


def negative_pictures(n: int = 240, seed: int = 0) -> list[np.ndarray]:
    """``n`` drawn pictures (charts, text, shapes, arrays) plus the shipped photograph's views."""
    rng = np.random.default_rng(seed)
    makers = (_chart, _text, _shapes, None)
    out = []
    for i in range(n):
        maker = makers[i % len(makers)]
        out.append(_array_picture(rng) if maker is None else _figure_pixels(maker, rng))
    return out + _shipped_photographs()


__all__ = ["negative_pictures"]

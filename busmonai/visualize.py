"""PNG sheets where a person looks: grids of images or masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from busmonai.data.imageio import save_png


def grid(images: Sequence[np.ndarray], ncols: int | None = None, pad: int = 2, fill: int = 0) -> np.ndarray:
    """Tile equally-sized uint8 (H, W) images row by row into one (rows*H, ncols*W) sheet.

    Args:
        images: the tiles, all of one shape.
        ncols: tiles per row (default: ceil(sqrt(n))).
        pad: pixels between tiles.
        fill: grey value of the padding and of empty cells.
    """
    if not images:
        raise ValueError("grid needs at least one image")
    height, width = images[0].shape[:2]
    if any(im.shape[:2] != (height, width) for im in images):
        raise ValueError("grid tiles must all have the same size")
    ncols = ncols or int(np.ceil(np.sqrt(len(images))))
    nrows = int(np.ceil(len(images) / ncols))
    sheet = np.full(
        (nrows * height + (nrows - 1) * pad, ncols * width + (ncols - 1) * pad), fill, dtype=np.uint8
    )
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        y, x = row * (height + pad), col * (width + pad)
        sheet[y : y + height, x : x + width] = image
    return sheet


def save_grid(images: Sequence[np.ndarray], path: Path, ncols: int | None = None, pad: int = 2, fill: int = 0) -> Path:
    """Write :func:`grid` of ``images`` to ``path`` as a PNG and return the path."""
    save_png(grid(images, ncols=ncols, pad=pad, fill=fill), Path(path))
    return Path(path)


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str = "",
               xlabel: str = "iteration", log_y: bool = False, size: tuple[int, int] = (640, 360)) -> Path:
    """Draw named ``(x, y)`` series as lines in one RGB PNG with PIL (no plotting library needed).

    Args:
        series: name -> (xs, ys); empty series are skipped.
        path: output PNG.
        title: text above the plot.
        xlabel: text below the x axis.
        log_y: plot log10(y) (losses spanning decades).
        size: (width, height) in px.
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 150, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    data = {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in series.items() if len(x)}
    if log_y:
        data = {k: (x, np.log10(np.clip(y, 1e-12, None))) for k, (x, y) in data.items()}
    xs = np.concatenate([x for x, _ in data.values()]) if data else np.array([0.0, 1.0])
    ys = np.concatenate([y for _, y in data.values()]) if data else np.array([0.0, 1.0])
    x0, x1 = float(xs.min()), float(xs.max()) or 1.0
    y0, y1 = float(ys.min()), float(ys.max())
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + plot_w * (x - x0) / max(x1 - x0, 1e-12), top + plot_h * (1 - (y - y0) / (y1 - y0)))

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left, 8), title, fill="black")
    for k in range(5):
        value = y0 + (y1 - y0) * k / 4
        y = xy(x0, value)[1]
        draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{10 ** value:.3g}" if log_y else f"{value:.3g}", fill="black")
    draw.text((left, top + plot_h + 6), f"{x0:g}", fill="black")
    draw.text((left + plot_w - 30, top + plot_h + 6), f"{x1:g}", fill="black")
    draw.text((left + plot_w // 2 - 30, height - 18), xlabel, fill="black")
    for n, (name, (x, y)) in enumerate(data.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = [xy(a, b) for a, b in zip(x, y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        else:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        draw.text((left + plot_w + 10, top + 16 * n), name, fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path

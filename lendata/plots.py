"""Matplotlib without a display, and PNGs written whole (temporary name, then rename)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, png: Path, dpi: int = 100) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    tmp.replace(png)
    return png

"""Matplotlib without a display, and PNGs written whole (temporary name, then rename)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, png: Path, dpi: int = 100) -> Path:
    import io

    from lendata.atomic import write_atomic

    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    pyplot().close(fig)
    return write_atomic(png, buf.getvalue())

"""Pictures a performer reads faster than tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt
import numpy as np


def spectrogram_grid(clips: Sequence[tuple[str, np.ndarray]], sample_rate: int, out: str | Path,
                     title: str = "") -> Path:
    """One log-magnitude spectrogram per clip, side by side, same colour scale."""
    out = Path(out)
    fig, axes = plt.subplots(1, len(clips), figsize=(3.2 * len(clips), 3.2), sharey=True, squeeze=False)
    for ax, (label, audio) in zip(axes[0], clips, strict=False):
        mono = np.atleast_2d(audio).mean(axis=0)
        ax.specgram(mono + 1e-9, NFFT=1024, Fs=sample_rate, noverlap=512, cmap="magma", vmin=-140, vmax=-20)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("s")
    axes[0][0].set_ylabel("Hz")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def metric_curve(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str, out: str | Path,
                 title: str = "") -> Path:
    out = Path(out)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

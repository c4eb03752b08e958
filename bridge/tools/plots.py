"""Pictures a performer reads faster than tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Figures are drawn with matplotlib's object API on an Agg canvas of their own: files
# only, no display, and no pyplot, so importing this module leaves the process's
# backend (and pyplot's figure registry) to whoever owns the process.


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    return fig


def _save(fig: Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def spectrogram_grid(clips: Sequence[tuple[str, np.ndarray]], sample_rate: int, out: str | Path,
                     title: str = "") -> Path:
    """One log-magnitude spectrogram per clip, side by side, same colour scale."""
    out = Path(out)
    fig = _figure((3.2 * len(clips), 3.2))
    axes = fig.subplots(1, len(clips), sharey=True, squeeze=False)
    for ax, (label, audio) in zip(axes[0], clips, strict=False):
        mono = np.atleast_2d(audio).mean(axis=0)
        ax.specgram(mono + 1e-9, NFFT=1024, Fs=sample_rate, noverlap=512, cmap="magma", vmin=-140, vmax=-20)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("s")
    axes[0][0].set_ylabel("Hz")
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def metric_curve(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str, out: str | Path,
                 title: str = "") -> Path:
    out = Path(out)
    fig = _figure((5, 3.2))
    ax = fig.subplots()
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, out)


def layer_curves(scores: Sequence[dict[str, float]], recommended: Sequence[int], out: str | Path,
                 title: str = "") -> Path:
    """Probe accuracy (logistic, MSE), ARI and NMI per layer; recommended layers shaded."""
    out = Path(out)
    layers = [int(s["layer"]) for s in scores]
    fig = _figure((6.5, 3.6))
    ax = fig.subplots()
    for key, label in (("acc_logistic", "probe acc (logistic)"), ("acc_mse", "probe acc (MSE)"),
                       ("ari", "k-means ARI"), ("nmi", "k-means NMI")):
        ax.plot(layers, [s[key] for s in scores], marker="o", label=label)
    for layer in recommended:
        ax.axvspan(layer - 0.4, layer + 0.4, color="gold", alpha=0.25)
    ax.set_xlabel("decoder layer")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "where the concept lives (shaded: recommended)")
    return _save(fig, out)


def influence_bars(kl_per_layer: Sequence[float], recommended: Sequence[int], out: str | Path,
                   title: str = "") -> Path:
    """Influence per layer (KL when that layer alone is steered); recommended layers in gold."""
    out = Path(out)
    layers = list(range(len(kl_per_layer)))
    fig = _figure((6.5, 3.2))
    ax = fig.subplots()
    ax.bar(layers, kl_per_layer, color=["goldenrod" if layer in recommended else "steelblue" for layer in layers])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("mean KL (nats)")
    ax.set_xticks(layers)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title or "where steering acts (gold: recommended by the probes)")
    return _save(fig, out)


def metric_band(alphas: Sequence[float], values: np.ndarray, ylabel: str, out: str | Path, title: str = "") -> Path:
    """A metric against alpha: the mean across seeds, and the spread (min..max, ±1 sd)."""
    out = Path(out)
    values = np.asarray(values, dtype=np.float64)  # [alphas, seeds]
    mean, sd = values.mean(axis=1), values.std(axis=1)
    fig = _figure((5, 3.2))
    ax = fig.subplots()
    ax.fill_between(alphas, values.min(axis=1), values.max(axis=1), alpha=0.15, label="min..max over seeds")
    ax.fill_between(alphas, mean - sd, mean + sd, alpha=0.3, label="±1 sd")
    ax.plot(alphas, mean, marker="o", label="mean")
    ax.set_xlabel("alpha")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return _save(fig, out)


def target_response(trace: Sequence[tuple[float, float, float, float]], path: Path, *, title: str) -> Path:
    """A target knob's run: setpoint and sensor reading over time, and the alpha it played."""
    fig = _figure((7, 4.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    t = [row[0] for row in trace]
    top.plot(t, [row[1] for row in trace], "--", label="setpoint")
    top.plot(t, [row[2] for row in trace], ".", label="measured (the loop's sensor)")
    top.set_ylabel("BPM")
    top.legend(fontsize=8)
    bottom.plot(t, [row[3] for row in trace])
    bottom.set_ylabel("alpha played")
    bottom.set_xlabel("seconds")
    fig.suptitle(title)
    return _save(fig, path)

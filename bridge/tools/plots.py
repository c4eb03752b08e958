"""Pictures a performer reads faster than tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from steering_core.evaluate.measures import MeasureTable

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


def calibration_curves(table: MeasureTable, alpha_range: tuple[float, float], own: str, out: str | Path,
                       title: str = "") -> Path:
    """Every measure against alpha, as a ratio to its value at alpha 0 (the own one bold),
    with the calibrated range shaded and the ±20 % band the others must stay in."""
    out = Path(out)
    fig = _figure((6.5, 3.8))
    ax = fig.subplots()
    zero = table.alphas.index(0.0)
    for name in ("onset_rate", "centroid_hz", "rms", "drum_bpm", "lead_shade"):
        if name not in table.values:
            continue
        means = np.nanmean(table.values[name], axis=1)
        ref = means[zero] if abs(means[zero]) > 1e-9 else 1.0
        ax.plot(table.alphas, means / ref, marker="o" if name == own else ".", lw=2.5 if name == own else 1,
                ls="-" if name in ("onset_rate", "centroid_hz", "rms") else ":", label=name + (" (own)" if name == own else ""))
    ax.axvspan(*alpha_range, color="gold", alpha=0.2, label="calibrated range")
    ax.axhspan(0.8, 1.2, color="grey", alpha=0.12)
    ax.set_xlabel("alpha")
    ax.set_ylabel("÷ value at alpha 0")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "calibration")
    return _save(fig, out)


def effect_matrix(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]] | None,
                  out: str | Path, title: str = "cross-effect matrix: change over each knob's range") -> Path:
    """Heat maps of the cross-effect matrix (rows: knobs, columns: measures), before and
    after making each knob selective."""
    out = Path(out)
    panels = [("as extracted", before)] + ([("selective", after)] if after is not None else [])
    measures = list(next(iter(before.values())).keys())
    fig = _figure((1.1 * len(measures) * len(panels) + 1.5, 0.8 * len(before) + 2.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, m) in zip(axes, panels, strict=True):
        rows = list(m)
        grid = np.array([[m[r].get(k, np.nan) for k in measures] for r in rows], dtype=np.float64)
        ax.imshow(np.clip(grid, -1.5, 1.5), cmap="RdBu_r", vmin=-1.5, vmax=1.5, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(measures)), measures, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)

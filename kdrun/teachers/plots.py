"""The pictures of `kdrun inspect-teacher`: dark knowledge at several temperatures, the
class-relationship matrix, and how sure the teacher is of each training example.

Drawn on matplotlib's Agg canvas directly (no pyplot): headless, no global backend state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def plot_dark_knowledge(probs: dict[float, np.ndarray], labels: np.ndarray, path: Path) -> Path:
    """One panel per test example: the teacher's softmax(z/T) over the classes, one bar group per T.

    probs[T] is (examples, classes). At T = 1 a confident teacher puts nearly everything on one
    class; raising T brings up the small probabilities of the classes it finds similar (Hinton et al. 2015).
    """
    temperatures = sorted(probs)
    examples, classes = probs[temperatures[0]].shape
    figure = _figure(3.2 * examples, 3.0)
    width = 0.8 / len(temperatures)
    for i in range(examples):
        axes = figure.add_subplot(1, examples, i + 1)
        for j, T in enumerate(temperatures):
            axes.bar(np.arange(classes) + (j - (len(temperatures) - 1) / 2) * width, probs[T][i], width,
                     label=f"T={T:g}")
        axes.set(xticks=range(classes), ylim=(0, 1), xlabel="class",
                 title=f"test example {i}: label {int(labels[i])}")
        axes.tick_params(labelsize=7)
        if i == 0:
            axes.set_ylabel("teacher probability")
            axes.legend(fontsize="small")
    figure.suptitle("Dark knowledge: the teacher's softmax(z / T) at several temperatures")
    return _save(figure, path)


def plot_class_matrix(matrix: np.ndarray, T: float, path: Path) -> Path:
    """Row c: the teacher's mean softmax(z/T) over training examples of true class c (what kd_sim uses).

    The diagonal is dropped from the colour scale so the off-diagonal similarities stay visible.
    """
    classes = matrix.shape[0]
    figure = _figure(6.0, 5.0)
    axes = figure.add_subplot()
    off = matrix[~np.eye(classes, dtype=bool)]
    image = axes.imshow(np.where(np.eye(classes, dtype=bool), np.nan, matrix), cmap="viridis",
                        vmin=0, vmax=float(off.max()) if off.size else 1)
    for c in range(classes):
        axes.text(c, c, f"{matrix[c, c]:.2f}", ha="center", va="center", fontsize=7, color="gray")
    figure.colorbar(image, ax=axes, label="mean probability (off-diagonal)")
    axes.set(xticks=range(classes), yticks=range(classes), xlabel="predicted class", ylabel="true class",
             title=f"Class relationships: mean softmax(z/T) per true class, T={T:g}\n(diagonal printed, not coloured)")
    return _save(figure, path)


def plot_true_class_prob(p_true: dict[str, np.ndarray], path: Path) -> Path:
    """Histogram of the teacher's probability of the given label (how hard it finds each example)."""
    figure = _figure(6.5, 3.8)
    axes = figure.add_subplot()
    for label, values in p_true.items():
        axes.hist(values, bins=40, range=(0, 1), alpha=0.6, label=f"{label} (mean {values.mean():.3f})")
    axes.set_yscale("log")
    axes.set(xlabel="teacher's probability of the true class", ylabel="examples (log scale)",
             title="How hard the teacher finds each training example")
    axes.legend(fontsize="small")
    return _save(figure, path)

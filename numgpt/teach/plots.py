"""The teaching views as PNG pictures: attention heatmaps, the sampler's stages as bars, the KV cache's
work and time per step. Each function draws a view (the dataclasses of this room) and nothing else, so a
picture shows exactly the numbers the view holds.

matplotlib is the `plot` extra: it is imported inside `pyplot()`, when a picture is drawn, never on
`import numgpt.teach`; without it the error says how to install it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NumgptError
from .attention import AttentionView
from .kvcache_view import KVCacheView
from .sampling_view import SamplingView

DPI = 100   # with the figure sizes below, pictures of 30-150 KB


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a NumgptError naming the extra to install."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NumgptError('drawing a picture needs matplotlib: pip install "numgpt[plot]"') from None
    return plt


def label(token: str) -> str:
    """A token for an axis: its repr, so leading spaces and newlines show."""
    return repr(token)


def plot_attention(view: AttentionView, path: str | Path) -> Path:
    """A heatmap of one head (query rows, key columns, token labels), or a grid of every head in the view."""
    plt = pyplot()
    n = len(view.heads)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    T = len(view.ids)
    cell = 4.5 if n == 1 else 3.0
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 1.2, cell * rows + 0.6), squeeze=False)
    labels = [label(t) for t in view.tokens]
    show_labels = n == 1 or T <= 16
    for ax in axes.flat[n:]:
        ax.axis("off")
    size = 8 if T <= 24 else 6
    for k, (ax, head, weights) in enumerate(zip(axes.flat, view.heads, view.weights)):
        image = ax.imshow(np.asarray(weights), cmap="viridis", vmin=0.0, vmax=1.0)  # [T, T]
        ax.set_title(f"layer {view.layer}, head {head}", fontsize=10)
        row, col = divmod(k, cols)
        bottom = k + cols >= n                                 # no picture below this one
        ax.set_xticks(range(T), labels if show_labels and bottom else [], rotation=90, fontsize=size)
        ax.set_yticks(range(T), labels if show_labels and col == 0 else [], fontsize=size)
    fig.supylabel("query (the attending position)", fontsize=10)
    fig.supxlabel("key (the position attended to)", fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention probability")
    return _save(fig, plt, path)


def plot_sampling(view: SamplingView, path: str | Path) -> Path:
    """One row of bars per stage that is on (and the raw one): the shared tokens' probabilities, removed
    tokens marked with an x."""
    plt = pyplot()
    stages = [s for s in view.stages if s.applied]
    tokens = [label(t.token) for t in stages[0].top]
    x = np.arange(len(tokens))
    fig, axes = plt.subplots(len(stages), 1, figsize=(max(6.0, 0.45 * len(tokens) + 2), 1.6 * len(stages) + 1),
                             sharex=True, squeeze=False)
    top = max(t.probability for s in stages for t in s.top)
    for ax, stage in zip(axes[:, 0], stages):
        p = np.array([t.probability for t in stage.top])
        removed = np.array([t.logit is None for t in stage.top])
        ax.bar(x, p, color=np.where(removed, "lightgray", "tab:blue" if stage.applied else "tab:gray"))
        ax.plot(x[removed], np.zeros(removed.sum()), "x", color="tab:red")
        ax.set_ylim(0, top * 1.15)
        setting = "" if stage.setting is None else f" = {_setting(stage.setting)}"
        ax.set_title(f"{stage.name.replace('_', ' ')}{setting}: {stage.kept} kept, "
                     f"mass {stage.kept_mass:.3f}", fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=8)
    axes[-1, 0].set_xticks(x, tokens, rotation=90, fontsize=8)
    fig.suptitle("next-token probability after each filter (x: removed)", fontsize=10)
    return _save(fig, plt, path)


def _setting(value) -> str:
    """A stage's setting for a title: 0.9; 0.5, 0.2 (presence, frequency); 13:+5 (logit bias)."""
    if isinstance(value, list):
        return ", ".join(f"{v[0]}:{v[1]:+g}" if isinstance(v, list) else f"{v:g}" for v in value)
    return f"{value:g}"


def plot_kvcache(view: KVCacheView, path: str | Path) -> Path:
    """Multiply-adds and wall time of each step, with and without the cache."""
    plt = pyplot()
    steps = [s.step for s in view.steps]
    fig, (work, time) = plt.subplots(1, 2, figsize=(10, 3.8))
    work.plot(steps, [s.macs_full for s in view.steps], "o-", color="tab:red", label="without cache")
    work.plot(steps, [s.macs_cached for s in view.steps], "o-", color="tab:green", label="with cache")
    work.set_ylabel("multiply-adds (counted from the config)")
    time.plot(steps, [1e3 * s.seconds_full for s in view.steps], "o-", color="tab:red", label="without cache")
    time.plot(steps, [1e3 * s.seconds_cached for s in view.steps], "o-", color="tab:green", label="with cache")
    time.set_ylabel("wall time (ms, measured)")
    for ax in (work, time):
        ax.set_xlabel("step (0 = the prompt)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(view.prompt_ids)}-token prompt, {len(view.steps)} new tokens: "
                 f"{view.macs_full / view.macs_cached:.1f}x the work without the cache", fontsize=10)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png", bbox_inches="tight")
    plt.close(fig)
    return out

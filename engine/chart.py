"""`rollout history --chart FILE.png`: each gate's value per step against its bound, as a PNG.

The series come from `engine.markdown.gate_series` (the same numbers as the Markdown charts);
matplotlib is imported only here and only when a chart is drawn, with its file-only backend,
so no other command pays for it and no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import SafeRolloutError
from engine.markdown import BOUND_WORDS, gate_series
from engine.spec import Gate

COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#c62828"}
OTHER_COLOUR = "#9e9e9e"  # inconclusive, running, skipped


class ChartError(SafeRolloutError):
    """The chart could not be drawn or written."""


def draw_history_chart(data: dict[str, Any], gates: Sequence[Gate], path: Path) -> int:
    """Write one panel per gate to `path`; returns how many gates were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    series = [s for s in gate_series(data, gates) if s.measured()]
    panels = max(1, len(series))
    figure, axes = pyplot.subplots(panels, 1, figsize=(8, 2.6 * panels), squeeze=False)
    try:
        if not series:
            axes[0][0].text(0.5, 0.5, "no gate values recorded yet", ha="center", va="center")
            axes[0][0].set_axis_off()
        for axis, item in zip((row[0] for row in axes), series, strict=False):
            labels, heights, verdicts = zip(*item.measured(), strict=True)
            positions = range(len(labels))
            colours = [COLOURS.get(v, OTHER_COLOUR) for v in verdicts]
            axis.bar(positions, heights, color=colours)
            axis.axhline(item.bound, color="#424242", linestyle="--", linewidth=1)
            axis.annotate(
                f"{BOUND_WORDS[item.bound_kind]} {item.bound:g}",
                (len(labels) - 0.5, item.bound),
                ha="right",
                va="bottom",
                fontsize=8,
            )
            axis.set_xticks(list(positions), labels, fontsize=8)
            axis.set_title(f"{item.gate} ({item.metric})", fontsize=10)
            axis.set_ylim(0, max([*heights, item.bound]) * 1.25 or 1.0)
        figure.suptitle(f"Gates of {data['endpoint']} per step", fontsize=11)
        figure.tight_layout()
        try:
            figure.savefig(path, format="png", dpi=100)
        except OSError as error:
            raise ChartError(f"cannot write the chart to {path}: {error.strerror}") from None
    finally:
        pyplot.close(figure)
    return len(series)

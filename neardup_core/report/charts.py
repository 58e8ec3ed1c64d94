"""Chart geometry for the report's inline SVG: numbers in, rectangles and points out.
Pure (NumPy); the template only draws what these say, so no markup is built here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT = 720, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 12, 36


@dataclass(frozen=True)
class Tick:
    at: float  # SVG coordinate along the axis
    label: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    low: float  # the bin's cosines: [low, high)
    high: float
    count: int


@dataclass(frozen=True)
class Histogram:
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    threshold: float
    threshold_x: float
    total: int
    accept_cosine: float | None = None  # marked only above the threshold (below it, verification is off)
    accept_x: float | None = None


@dataclass(frozen=True)
class CurvePoint:
    x: float
    y: float
    threshold: float
    precision: float
    recall: float


@dataclass(frozen=True)
class Curve:
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    points: list[CurvePoint]
    polyline: str  # "x,y x,y ..." for <polyline points>
    x_ticks: list[Tick]
    y_ticks: list[Tick]


def _step(span: float) -> float:
    """A round tick step giving 4 to 10 ticks over ``span``."""
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if span / step <= 10:
            return step
    return 10 ** math.ceil(math.log10(span))


def histogram(cosines: np.ndarray, threshold: float, accept_cosine: float | None = None, bins: int = 40,
              width: int = WIDTH, height: int = HEIGHT) -> Histogram:
    """Bars of a histogram of pair cosines from a round value at or below the threshold to
    1.0, with the threshold's x position to mark it, and ``accept_cosine``'s where it is
    above the threshold (pairs between the two were kept only when verified).

    Memory: the cosines array and ``bins`` counts.
    """
    cosines = np.asarray(cosines, dtype=np.float64)
    low_value = min(threshold, float(cosines.min())) if len(cosines) else threshold
    low = math.floor(low_value * 20) / 20  # a multiple of 0.05
    high = 1.0 if low < 1.0 else low + 0.05
    counts, edges = np.histogram(np.clip(cosines, low, high), bins=bins, range=(low, high))
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    peak = max(int(counts.max()) if len(counts) else 0, 1)

    def x_of(value: float) -> float:
        return left + (value - low) / (high - low) * (right - left)

    def y_of(count: float) -> float:
        return bottom - count / peak * (bottom - top)

    bars = [Bar(round(x_of(a), 2), round(y_of(c), 2), round(x_of(b) - x_of(a), 2), round(bottom - y_of(c), 2),
                float(a), float(b), int(c))
            for a, b, c in zip(edges[:-1], edges[1:], counts)]
    step = _step(high - low)
    x_ticks = [Tick(round(x_of(v), 2), f"{v:.2f}") for v in np.arange(low, high + step / 2, step)]
    y_step = max(1, math.ceil(peak / 4))
    y_ticks = [Tick(round(y_of(c), 2), f"{c:,}") for c in range(0, peak + 1, y_step)]
    marked = accept_cosine is not None and threshold < accept_cosine <= high
    return Histogram(width, height, left, right, top, bottom, bars, x_ticks, y_ticks, threshold,
                     round(x_of(threshold), 2), len(cosines), accept_cosine if marked else None,
                     round(x_of(accept_cosine), 2) if marked else None)


def pr_curve(points: Sequence[tuple[float, float, float]], width: int = 360, height: int = 300) -> Curve:
    """Precision (y) against recall (x), both 0..1, from (threshold, precision, recall)
    points in any order; the line runs from the highest threshold to the lowest."""
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    placed = [CurvePoint(round(left + r * (right - left), 2), round(bottom - p * (bottom - top), 2), t, p, r)
              for t, p, r in sorted(points, reverse=True)]
    ticks = np.linspace(0.0, 1.0, 6)
    return Curve(width, height, left, right, top, bottom, placed, " ".join(f"{c.x},{c.y}" for c in placed),
                 [Tick(round(left + v * (right - left), 2), f"{v:.1f}") for v in ticks],
                 [Tick(round(bottom - v * (bottom - top), 2), f"{v:.1f}") for v in ticks])

"""The loss curve as a PNG: with matplotlib when it is installed, otherwise drawn here (zlib + struct).

The fallback draws axes, ticks with numeric labels (a built-in 3x5 pixel font), the training loss as a
blue line and the held-out loss before/after training as red dots.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence

Point = tuple[float, float]
Color = tuple[int, int, int]

BLUE: Color = (31, 119, 180)
RED: Color = (214, 39, 40)
GREY: Color = (200, 200, 200)
BLACK: Color = (0, 0, 0)

# 3x5 glyphs, one string of 15 bits (row by row) per character.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "e": "000111111100111", "s": "000111100001111", "t": "010111010010011", "p": "000111101111100",
    "l": "110010010010111", "o": "000111101101111", "a": "000110011101111", "r": "000111100100100",
    "i": "010000010010010", "n": "000110101101101", "v": "000101101101010", "d": "001001111101111",
    "f": "011010111010010", "b": "100100111101111", "m": "000111111101101", ":": "000010000010000",
    "/": "001001010100100", "k": "100101110101101", " ": "000000000000000",
}  # fmt: skip


class Canvas:
    """An RGB image held as rows of bytes; ``(0, 0)`` is the top-left pixel."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]

    def dot(self, x: int, y: int, color: Color, radius: int = 0) -> None:
        """Paint a dot of ``radius`` pixels at ``(x, y)``."""
        for yy in range(y - radius, y + radius + 1):
            for xx in range(x - radius, x + radius + 1):
                if 0 <= xx < self.width and 0 <= yy < self.height:
                    self.pixels[yy][3 * xx : 3 * xx + 3] = bytes(color)

    def line(self, a: tuple[int, int], b: tuple[int, int], color: Color, width: int = 0) -> None:
        """A straight segment from ``a`` to ``b`` (sampled at one point per pixel of length)."""
        steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for i in range(steps + 1):
            self.dot(round(a[0] + (b[0] - a[0]) * i / steps), round(a[1] + (b[1] - a[1]) * i / steps), color, width)

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 2) -> None:
        """Draw ``text`` with its top-left corner at ``(x, y)``; unknown characters are left blank."""
        for n, char in enumerate(text):
            bits = _GLYPHS.get(char.lower(), _GLYPHS[" "])
            for i, bit in enumerate(bits):
                if bit == "1":
                    for dy in range(scale):
                        for dx in range(scale):
                            self.dot(x + (4 * n + i % 3) * scale + dx, y + (i // 3) * scale + dy, color)

    def png(self) -> bytes:
        """The image as PNG bytes (8-bit RGB, no filtering)."""

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        raw = b"".join(b"\x00" + bytes(row) for row in self.pixels)
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
        )


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    span = max(high - low, 1e-12)
    step = 10 ** math.floor(math.log10(span / count))
    step *= next(m for m in (1, 2, 5, 10) if span / (step * m) <= count)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


def draw_loss_curve(train: Sequence[Point], evals: Sequence[Point], width: int = 640, height: int = 400) -> bytes:
    """PNG bytes of the training loss (``(step, loss)`` points) and held-out losses, drawn without matplotlib."""
    canvas = Canvas(width, height)
    left, right, top, bottom = 70, width - 30, 40, height - 50
    points = [*train, *evals]
    x_max = max((p[0] for p in points), default=1.0) or 1.0
    y_max = max((p[1] for p in points), default=1.0) * 1.05 or 1.0

    def to_pixel(p: Point) -> tuple[int, int]:
        return round(left + (right - left) * p[0] / x_max), round(bottom - (bottom - top) * p[1] / y_max)

    for tick in _ticks(0.0, y_max):
        _, y = to_pixel((0.0, tick))
        canvas.line((left, y), (right, y), GREY)
        canvas.text(left - 8 - 8 * len(_label(tick)), y - 5, _label(tick))
    for tick in _ticks(0.0, x_max):
        x, _ = to_pixel((tick, 0.0))
        canvas.line((x, bottom), (x, bottom + 5), BLACK)
        canvas.text(x - 4 * len(_label(tick)), bottom + 10, _label(tick))
    canvas.line((left, top), (left, bottom), BLACK)
    canvas.line((left, bottom), (right, bottom), BLACK)
    for a, b in itertools.pairwise(train):
        canvas.line(to_pixel(a), to_pixel(b), BLUE, 1)
    for p in evals:
        canvas.dot(*to_pixel(p), RED, 4)
    canvas.text(left, 12, "train loss", BLUE)
    canvas.text(left + 100, 12, "eval loss", RED)
    canvas.text((left + right) // 2 - 16, height - 20, "step")
    return canvas.png()


def save_loss_curve(path: str, train: Sequence[Point], evals: Sequence[Point]) -> str:
    """Write the loss curve to ``path``; returns which renderer drew it (``"matplotlib"`` or ``"builtin"``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        with open(path, "wb") as fh:
            fh.write(draw_loss_curve(train, evals))
        return "builtin"
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if train:
        axes.plot(*zip(*train), color="tab:blue", label="train loss")
    if evals:
        axes.plot(*zip(*evals), "o", color="tab:red", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return "matplotlib"

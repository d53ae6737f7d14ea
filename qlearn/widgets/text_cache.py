"""Text drawn from a cache: the Agg canvas the explorers draw on, with the same pixels, faster.

Most of an axes' redraw is text (tick labels, legend, titles), which Agg lays out and rasterizes anew on
each draw. ``TextCacheRenderer`` keeps what it made; ``TextCacheCanvas`` draws with it. Both follow the
private text-drawing code of matplotlib 3.11 and are used only where that code exists (``available``):
on another matplotlib the explorers draw with the plain ``FigureCanvasAgg``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg

__all__ = ["TextCacheRenderer", "TextCacheCanvas", "canvas_class"]


class TextCacheRenderer(RendererAgg):
    """Agg renderer that keeps the glyph bitmaps and text layouts it made: the same pixels, drawn faster.

    Most of an axes' redraw is text (tick labels, legend, titles), which Agg lays out and rasterizes anew
    on each draw. FreeType places a glyph in 1/64 pixel and its bitmap depends only on that position's
    fraction of a pixel, so a bitmap kept under (font, size, dpi, glyph, rotation, fraction, hinting,
    antialiasing) is the one FreeType would make again (checked: pixel-identical figures). This follows
    ``RendererAgg.draw_text`` of matplotlib 3.11 and is used only where that code exists (``available``).
    """

    available = all(hasattr(RendererAgg, a) for a in ("_draw_text_glyphs_and_boxes", "_prepare_font")) and all(
        hasattr(backend_agg, a) for a in ("get_hinting_flag", "RenderMode"))
    MAX_ENTRIES = 50_000  # per cache; a few MB (a glyph bitmap is ~0.2 KB), cleared when full
    _layouts: dict[tuple, list[tuple]] = {}  # (font file, size, dpi, string, flags, ...) -> [(font, glyph, dx, dy)]
    _glyphs: dict[tuple, tuple] = {}  # key above -> (bitmap (h, w) uint8, left, top in whole pixels)

    def draw_text(self, gc: Any, x: float, y: float, s: str, prop: Any, angle: float, ismath: Any = False,
                  mtext: Any = None) -> None:
        if ismath:
            return self.draw_mathtext(gc, x, y, s, prop, angle)
        features = mtext.get_fontfeatures() if mtext is not None else None
        language = mtext.get_language() if mtext is not None else None
        font = self._prepare_font(prop)
        size, flags = prop.get_size_in_points(), backend_agg.get_hinting_flag()
        key = (font.fname, size, self.dpi, s, flags, repr(features), repr(language))
        items = self._layouts.get(key)
        if items is None:
            items = [(i.ft_object, i.glyph_index, i.x, i.y)
                     for i in font._layout(s, flags=flags, features=features, language=language)]
            _remember(self._layouts, key, items)
        self._draw_text_glyphs_and_boxes(gc, x, y, angle, ((f, size, g, 0, 1, dx, dy) for f, g, dx, dy in items), [])

    def _draw_text_glyphs_and_boxes(self, gc: Any, x: float, y: float, angle: float, glyphs: Any,
                                    boxes: Any) -> None:
        if boxes:  # mathtext's rules and boxes: matplotlib's own code
            return super()._draw_text_glyphs_and_boxes(gc, x, y, angle, glyphs, boxes)
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        flags, antialiased = backend_agg.get_hinting_flag(), gc.get_antialiased()
        for font, size, glyph, slant, extend, dx, dy in glyphs:  # dy is upwards, y downwards
            matrix = (0x10000 * np.array([[cos, -sin], [sin, cos]]) @ [[extend, extend * slant], [0, 1]]
                      ).round().astype(int)  # 16.16 fixed point
            tx = round(0x40 * (x + dx * cos - dy * sin))  # 26.6 fixed point: 1/64 pixel
            ty = round(0x40 * (self.height - y + dx * sin + dy * cos))  # FreeType's y is upwards
            key = (font.fname, size, self.dpi, glyph, tuple(matrix.ravel()), tx & 63, ty & 63, flags, antialiased)
            hit = self._glyphs.get(key)
            if hit is None:
                font.set_size(size, self.dpi)
                font._set_transform(matrix, [tx, ty])
                mode = backend_agg.RenderMode.NORMAL if antialiased else backend_agg.RenderMode.MONO
                bitmap = font._render_glyph(glyph, flags, mode)
                buffer = np.array(bitmap.buffer)  # a copy: (h, w) uint8 coverage
                if not antialiased:
                    buffer *= 0xFF
                hit = (buffer, bitmap.left - (tx >> 6), bitmap.top - (ty >> 6))
                _remember(self._glyphs, key, hit)
            buffer, left, top = hit
            self._renderer.draw_text_image(buffer, left + (tx >> 6),
                                           int(self.height) - (top + (ty >> 6)) + buffer.shape[0], 0, gc)


def _remember(cache: dict, key: tuple, value: Any) -> None:
    if len(cache) >= TextCacheRenderer.MAX_ENTRIES:
        cache.clear()
    cache[key] = value


class TextCacheCanvas(FigureCanvasAgg):
    """The Agg canvas, drawing with ``TextCacheRenderer``."""

    def get_renderer(self) -> RendererAgg:
        key = (*self.get_width_height(physical=True), self.figure.dpi)
        if self._lastKey != key:
            self.renderer = TextCacheRenderer(*key)
            self._lastKey = key
        return self.renderer


def canvas_class() -> type[FigureCanvasAgg]:
    """The canvas explorers draw on: the text-caching one where this matplotlib allows it."""
    return TextCacheCanvas if TextCacheRenderer.available else FigureCanvasAgg

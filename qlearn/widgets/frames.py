"""An explorer's picture and numbers in the page, with the frames of the next slider steps drawn ahead.

A slider step costs the kernel a computation, a draw and a JPEG encoding (``Explorer._update``), and
the page a round trip through the widget protocol and a decode: together 100-300 ms on a 2-core
laptop, most of it the round trip and the draw. A learner mostly steps a slider one notch at a time,
back and forth. So while the learner looks at a picture, the kernel draws the pictures one change
away -- a step on every slider, the other options of every dropdown and switch (``neighbour_states``)
-- and sends them to the page, where ``FrameView`` keeps them; a step the page already holds is shown
at once, in the page, without waiting for the kernel. A step it does not hold (a jump, a drag faster
than the kernel) takes the ordinary path. ``DrawAhead`` is the one queue that does this drawing for
every explorer of the kernel, in idle time.

``FrameView`` is a small anywidget (its JavaScript is ``ESM`` below, shipped with the package: it
needs no build step and no network) that shows one <img> and the numbers table under it:

    traits (kernel -> page)   value       bytes  the current picture (JPEG)
                              readout     str    the current numbers (HTML table)
                              key         str    which control values they belong to (``state_key``)
                              generation  int    bumped when held frames become invalid (new data)
                              controls    list   the explorer's controls, watched in the page
    custom messages           page -> kernel   {"type": "ready"}: a view is on screen
                              kernel -> page   {"type": "frame", key, readout, generation} + JPEG buffer

Frames are found by key: the controls' values as the page and the kernel both compute them. A
slider's value becomes its step number, ``round((value - min) / step)`` (exponent steps for a log
slider), so the float arithmetic of the page's slider and of Python need not agree to the last bit;
selections become their index; anything else its JSON value. The key never decides what is
computed: a frame is drawn by the explorer's own ``render`` for the values it stands for.

Without a page (tests, nbclient, Voila before the page loads) no view is ready, nothing is drawn
ahead and nothing is kept: the explorer behaves exactly as one without this module. So it does with
``QLEARN_DRAW_AHEAD=0`` in the kernel's environment (a machine too busy to spend idle time drawing).
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anywidget
import ipywidgets as widgets
import traitlets

CACHE_FRAMES = 48  # frames held per explorer, in the kernel and in the page (~50-150 kB of JPEG each)
# QLEARN_DRAW_AHEAD=0 in the kernel's environment: nothing drawn ahead, nothing kept in the page either
ENABLED = os.environ.get("QLEARN_DRAW_AHEAD", "1") != "0"

# Sliders whose value maps to a step number; selections (Dropdown, SelectionSlider, ToggleButtons)
# map to their index. The page uses the model names, the kernel the classes.
_STEPPED = (widgets.IntSlider, widgets.FloatSlider)
_RANGES = (widgets.IntRangeSlider, widgets.FloatRangeSlider)

ESM = r"""
const PREFIX = "IPY_MODEL_";
const STEPPED = new Set(["IntSliderModel", "FloatSliderModel"]);
const RANGES = new Set(["IntRangeSliderModel", "FloatRangeSliderModel"]);

// One control's part of the key; frames.py's control_key computes the same in Python.
function controlKey(m) {
  const name = m.get("_model_name"), step = m.get("step"), lo = m.get("min");
  if (name === "FloatLogSliderModel" && step) {
    return Math.round((Math.log(m.get("value")) / Math.log(m.get("base")) - lo) / step);
  }
  if (STEPPED.has(name) && step) return Math.round((m.get("value") - lo) / step);
  if (RANGES.has(name) && step) return m.get("value").map((v) => Math.round((v - lo) / step));
  const index = m.get("index");
  return index !== undefined ? index : m.get("value");
}

export default {
  async render({ model, el }) {
    const img = document.createElement("img");
    img.className = "qlearn-frame";
    img.style.cssText = "display:block;width:100%;height:auto";
    const table = document.createElement("div");
    table.className = "qlearn-readout";
    table.style.minHeight = "2em";
    el.append(img, table);

    const frames = new Map();  // key -> {url, readout}, least recently shown first
    let shown = null, generation = model.get("generation"), controls = [];
    let orphan = null;  // the picture on screen after clear(): let go when the next one replaces it
    const stateKey = () => JSON.stringify(controls.map(controlKey));

    function store(key, bytes, readout) {
      if (frames.has(key)) return;
      const url = URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" }));
      frames.set(key, { url, readout });
      const early = new Image();  // decode now, so that showing it later is only a paint
      early.src = url;
      early.decode().catch(() => {});
      evict(key);
    }
    function evict(keep) {  // oldest first; never the frame shown, nor the one just come
      for (const [k, f] of frames) {
        if (frames.size <= model.get("cache_size")) break;
        if (k === shown || k === keep) continue;
        URL.revokeObjectURL(f.url);
        frames.delete(k);
      }
      el.dataset.frames = frames.size;  // how many frames the page holds (tests wait on it)
    }
    function show(key) {
      const f = frames.get(key);
      if (!f) return false;
      if (key !== shown) {
        img.src = f.url;
        table.innerHTML = f.readout;
        shown = key;
        if (orphan) URL.revokeObjectURL(orphan);
        orphan = null;
      }
      frames.delete(key);  // most recently shown: evicted last
      frames.set(key, f);
      evict(null);
      return true;
    }
    function clear() {
      for (const [k, f] of frames) {
        if (k === shown) orphan = f.url;
        else URL.revokeObjectURL(f.url);
      }
      frames.clear();
      shown = null;
      el.dataset.frames = 0;
    }
    function fromKernel() {  // the kernel's current frame: keep it; show it unless a newer one is on screen
      if (model.get("generation") !== generation) {
        generation = model.get("generation");
        clear();
      }
      const key = model.get("key");
      store(key, model.get("value"), model.get("readout"));
      const want = controls.length ? stateKey() : key;
      if (key === want || !frames.has(want)) show(key);
    }
    fromKernel();
    model.on("change", fromKernel);
    model.on("msg:custom", (msg, buffers) => {
      if (msg.type !== "frame" || msg.generation !== generation) return;
      store(msg.key, buffers[0], msg.readout);
      if (controls.length && msg.key === stateKey()) show(msg.key);  // it arrived after the step
    });

    const context = {};
    controls = await Promise.all(
      model.get("controls").map((ref) => model.widget_manager.get_model(ref.slice(PREFIX.length))));
    for (const c of controls) c.on("change", () => show(stateKey()), context);
    model.send({ type: "ready" });
    return () => {
      for (const c of controls) c.off(null, null, context);
      clear();
      if (orphan) URL.revokeObjectURL(orphan);
    };
  },
};
"""


class FrameView(anywidget.AnyWidget):
    """The picture (``value``, JPEG bytes) and the numbers (``readout``, HTML) of one explorer."""

    _esm = ESM
    value = traitlets.Bytes(b"").tag(sync=True)
    readout = traitlets.Unicode("").tag(sync=True)
    key = traitlets.Unicode("").tag(sync=True)
    generation = traitlets.Int(0).tag(sync=True)
    cache_size = traitlets.Int(CACHE_FRAMES if ENABLED else 0).tag(sync=True)
    controls = traitlets.List(traitlets.Instance(widgets.Widget)).tag(sync=True, **widgets.widget_serialization)

    def __init__(self, controls: list[widgets.Widget], **kwargs: Any) -> None:
        super().__init__(controls=list(controls), **kwargs)
        self._ready_callbacks: list[Callable[[], None]] = []
        self.on_msg(self._on_page_message)

    def show(self, key: str, jpeg: bytes, readout: str, *, new_generation: bool = False) -> None:
        """Make (key, jpeg, readout) the current frame, in one message to the page."""
        with self.hold_sync():
            if new_generation:
                self.generation += 1
            self.key, self.value, self.readout = key, jpeg, readout

    def push(self, key: str, jpeg: bytes, readout: str) -> None:
        """Send a frame the page may need next; it keeps it until the controls ask for it."""
        self.send({"type": "frame", "key": key, "readout": readout, "generation": self.generation}, [jpeg])

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a view of this widget appears in a page."""
        self._ready_callbacks.append(callback)

    def _on_page_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ready":
            for callback in self._ready_callbacks:
                callback()


class FrameCache:
    """Frames by key, least recently used dropped first: key -> (jpeg, numbers, readout)."""

    def __init__(self, size: int = CACHE_FRAMES) -> None:
        self.size = size
        self._frames: OrderedDict[str, tuple[bytes, dict[str, Any], str]] = OrderedDict()

    def get(self, key: str) -> tuple[bytes, dict[str, Any], str] | None:
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
        return frame

    def put(self, key: str, jpeg: bytes, numbers: dict[str, Any], readout: str) -> None:
        self._frames[key] = (jpeg, dict(numbers), readout)
        self._frames.move_to_end(key)
        while len(self._frames) > self.size:
            self._frames.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()


class DrawAhead:
    """One queue of drawing ahead for every explorer in the kernel: one frame per turn of the event loop.

    The kernel reads the page's messages between two turns, so a real slider change waits for at
    most one frame drawn ahead, however many explorers a notebook holds. The explorer changed last
    is served first (the learner is there); explorers that just appeared in the page wait their turn.
    During a drag (``hold_s``) nothing is drawn ahead, so each change of the drag is drawn at once.
    An explorer takes part through ``draw_one_ahead() -> bool`` (False: nothing left to draw).
    """

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s  # after a change, first let the kernel send the page its answer
        self.enabled = ENABLED
        self.waiting: list[Any] = []
        self._timer: Any = None
        self._loop: Any = None
        self._not_before = 0.0  # loop time before which no frame is drawn ahead

    def want(self, explorer: Any, loop: Any, *, first: bool, hold_s: float = 0.0) -> None:
        """Queue ``explorer`` (at the front if ``first``), drawing nothing for ``hold_s`` seconds.

        Nothing happens without an event loop.
        """
        if loop is None or not self.enabled:
            return
        self._not_before = max(self._not_before, loop.time() + max(self.delay_s, hold_s))
        if explorer in self.waiting:
            self.waiting.remove(explorer)
        if first:
            self.waiting.insert(0, explorer)
        else:
            self.waiting.append(explorer)
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_at(self._not_before, self._turn)

    def _turn(self) -> None:
        self._timer = None
        if self._loop.time() < self._not_before:  # held since this turn was planned: come back then
            self._timer = self._loop.call_at(self._not_before, self._turn)
            return
        while self.waiting:
            explorer = self.waiting[0]
            try:
                if explorer.draw_one_ahead():
                    break
            except Exception:  # a frame that cannot be drawn is not drawn ahead; the real step will say why
                pass
            self.waiting.pop(0)
        if self.waiting:
            self._timer = self._loop.call_later(0, self._turn)


DRAW_AHEAD = DrawAhead(delay_s=0.06)  # a drag's next change comes sooner: it is seen before a frame starts


# ------------------------------------------------------------------------------------------ keys
def control_key(control: widgets.Widget) -> Any:
    """One control's part of a frame key (the page's ``controlKey`` computes the same)."""
    step = getattr(control, "step", None)
    if isinstance(control, widgets.FloatLogSlider) and step:
        return round((math.log(control.value) / math.log(control.base) - control.min) / step)
    if isinstance(control, _STEPPED) and step:
        return round((control.value - control.min) / step)
    if isinstance(control, _RANGES) and step:
        return [round((v - control.min) / step) for v in control.value]
    if hasattr(control, "index"):
        return control.index
    return control.value


def state_key(parts: list[Any]) -> str:
    """The key of a state from its controls' parts: JSON as the page's ``JSON.stringify`` writes it."""
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def neighbour_states(controls: dict[str, widgets.Widget], first: str | None = None,
                     direction: int = 1) -> list[tuple[str, str, Any]]:
    """The states one change away, most likely next first: (key, control name, value to render).

    ``first`` is the control changed last and ``direction`` (+1/-1) the way a slider moved: a learner
    usually goes on the same way, then comes back, so that slider's next step and its step back come
    first, then its second step on, then one step either way on every other slider, and last the
    other choices of every dropdown and switch (nearest first; of a dropdown with more than
    ``MAX_CHOICES`` options only the next and the previous one, two more if it was changed last).
    """
    names = list(controls)
    parts = [control_key(c) for c in controls.values()]
    order = ([first] if first in controls else []) + [n for n in names if n != first]
    steps: list[tuple[str, Any, Any]] = []
    choices: list[tuple[str, Any, Any]] = []
    for name in order:
        control, part = controls[name], parts[names.index(name)]
        for d in (direction, -direction, 2 * direction) if name == first else (1, -1):
            if isinstance(part, list):  # a range slider: each handle alone, never past the other
                found = [_range_step(control, part, h, d) for h in range(len(part))]
            else:
                found = [_step(control, part, d)]
            steps += [(name, *f) for f in found if f is not None]
        (steps if name == first else choices).extend((name, *c) for c in _choices(control, part, name == first))
    return [(state_key([new if n == name else p for n, p in zip(names, parts)]), name, value)
            for name, new, value in steps + choices]


MAX_CHOICES = 8  # of a dropdown with more options, only the ones next to the current one are drawn ahead


def _choices(control: widgets.Widget, part: Any, changed_last: bool = False) -> list[tuple[Any, Any]]:
    """A switch's other position, or a dropdown's other options, nearest first: [(key part, value)]."""
    if isinstance(part, bool) and isinstance(control.value, bool):  # Checkbox, ToggleButton
        return [(not part, not control.value)]
    if isinstance(control, widgets.SelectionSlider) or not isinstance(part, int) or isinstance(part, bool):
        return []  # a selection slider steps (_step); a range or a value: no choices
    options = getattr(control, "_options_values", None)
    if options is None:
        return []
    others = sorted((j for j in range(len(options)) if j != part), key=lambda j: (abs(j - part), j < part))
    if len(options) > MAX_CHOICES:
        others = others[:4 if changed_last else 2]
    return [(j, options[j]) for j in others]


def _range_step(control: widgets.Widget, part: list[int], handle: int, d: int) -> tuple[list[int], Any] | None:
    """Handle ``handle`` of a range slider moved ``d`` steps: (key part, value) or None."""
    found = _step(control, part[handle], d)
    if found is None:
        return None
    new = list(part)
    new[handle] = found[0]
    if new != sorted(new):
        return None
    values = list(control.value)
    values[handle] = found[1]
    return new, tuple(values)


def _step(control: widgets.Widget, part: Any, d: int) -> tuple[int, Any] | None:
    """(key part, value) ``d`` steps from ``part`` on a slider, or None (not a slider, or off its end)."""
    if not isinstance(part, int) or isinstance(part, bool):
        return None
    i = part + d
    if isinstance(control, widgets.SelectionSlider):
        options = control._options_values  # the values of control.options, in order
        return (i, options[i]) if 0 <= i < len(options) else None
    step = getattr(control, "step", None)
    if not step or not isinstance(control, (*_STEPPED, *_RANGES, widgets.FloatLogSlider)):
        return None
    position = control.min + i * step  # the value, or the exponent of a log slider
    if position < control.min - 1e-9 * step or position > control.max + 1e-9 * step:
        return None
    position = min(max(position, control.min), control.max)
    if isinstance(control, widgets.FloatLogSlider):
        return i, control.base ** position
    return i, (int(position) if isinstance(control, (widgets.IntSlider, widgets.IntRangeSlider)) else float(position))

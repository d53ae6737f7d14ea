"""Frames drawn ahead (qlearn.widgets.frames): keys the page and the kernel agree on, and frames that are
exactly what a real step would draw. The page side (JavaScript) is checked in tests/browser."""
import io

import ipywidgets as widgets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from qlearn.distributions import sample
from qlearn.widgets import clipping_explorer, quantize_explorer
from qlearn.widgets.frames import FrameCache, control_key, neighbour_states, state_key


def _controls():
    return {
        "bits": widgets.IntSlider(4, min=2, max=8),
        "range": widgets.FloatRangeSlider(value=(-1.0, 1.0), min=-3.0, max=3.0, step=0.1),
        "clip": widgets.FloatLogSlider(value=0.01, base=10, min=-4, max=-1, step=0.1),
        "sel": widgets.SelectionSlider(options=[2, 4, 8], value=4),
        "dd": widgets.Dropdown(options=["a", "b"], value="b"),
        "cb": widgets.Checkbox(True),
    }


def test_control_keys_are_step_numbers_indices_or_values():
    c = _controls()
    assert [control_key(w) for w in c.values()] == [2, [20, 40], 20, 1, 1, True]
    c["range"].value = (-1.0 + 0.1 + 1e-15, 1.0)  # the page's float arithmetic: same step
    assert control_key(c["range"]) == [21, 40]


def test_state_key_is_what_javascript_json_stringify_writes():
    assert state_key([2, [20, 40], True, None, "ä"]) == '[2,[20,40],true,null,"ä"]'
    with pytest.raises(ValueError):
        state_key([float("nan")])


def test_neighbours_come_in_the_order_a_learner_moves():
    c = _controls()
    got = [(name, value) for _, name, value in neighbour_states(c, "bits", -1)]
    assert got[:3] == [("bits", 3), ("bits", 5), ("bits", 2)]  # on the same way, back, two on
    names = [name for name, _ in got]
    assert names.index("cb") > names.index("range") and names.index("dd") > names.index("sel")  # choices last
    assert ("dd", "a") in got and ("cb", False) in got  # the other option, the other position
    assert ("sel", 8) in got and ("sel", 2) in got
    ranges = np.array([v for n, v in got if n == "range"])  # each handle one step either way
    assert np.allclose(ranges, [(-0.9, 1.0), (-1.0, 1.1), (-1.1, 1.0), (-1.0, 0.9)])
    c["bits"].value = 8
    assert ("bits", 9) not in [(n, v) for _, n, v in neighbour_states(c, "bits", 1)]  # never past the end


def test_the_control_changed_last_comes_first_and_long_dropdowns_give_their_nearest_options():
    c = {"bits": widgets.IntSlider(4, min=2, max=8), "dd": widgets.Dropdown(options=list("abcd"), value="b"),
         "many": widgets.Dropdown(options=list(range(20)), value=3)}
    got = [(name, value) for _, name, value in neighbour_states(c, "dd")]
    assert got[:3] == [("dd", "c"), ("dd", "a"), ("dd", "d")]  # nearest options first
    assert [v for name, v in got if name == "many"] == [4, 2]  # a long list: only the options next to it
    many = [v for _, name, v in neighbour_states(c, "many") if name == "many"]
    assert many == [4, 2, 5, 1]  # changed last: two on either side


def test_range_handles_never_cross():
    c = {"r": widgets.IntRangeSlider(value=(3, 4), min=0, max=9)}
    values = [v for _, _, v in neighbour_states(c)]
    assert (4, 4) in values and (3, 3) in values and (5, 4) not in values and (3, 5) in values


@settings(max_examples=60, deadline=None)
@given(lo=st.integers(-50, 0), n=st.integers(2, 40), step_dec=st.sampled_from([0.1, 0.05, 0.25, 0.001, 1.0]),
       at=st.floats(0, 1), first=st.sampled_from([None, "f", "i", "log", "dd", "cb"]), direction=st.sampled_from([1, -1]))
def test_a_neighbours_key_is_the_key_of_its_value(lo, n, step_dec, at, first, direction):
    """The oracle: set the control to the value drawn ahead, compute its key the ordinary way."""
    lo_f = lo * step_dec
    c = {
        "f": widgets.FloatSlider(min=lo_f, max=lo_f + n * step_dec, step=step_dec),
        "i": widgets.IntSlider(min=lo, max=lo + n),
        "log": widgets.FloatLogSlider(base=2, min=-n * 0.5, max=0.0, step=0.5),
        "dd": widgets.Dropdown(options=[("two", 2), ("four", 4), ("eight", 8)], value=4),
        "cb": widgets.Checkbox(bool(n % 2)),
    }
    c["f"].value = lo_f + round(at * n) * step_dec
    c["i"].value = lo + round(at * n)
    c["log"].value = 2.0 ** (-0.5 * round(at * n))
    for key, name, value in neighbour_states(c, first, direction):
        old = c[name].value
        c[name].value = value
        assert state_key([control_key(w) for w in c.values()]) == key, (name, value)
        c[name].value = old


def test_frame_cache_drops_the_least_recently_used():
    cache = FrameCache(size=2)
    cache.put("a", b"A", {"x": 1}, "<a>")
    cache.put("b", b"B", {}, "")
    assert cache.get("a")[0] == b"A"  # a is now the most recent
    cache.put("c", b"C", {}, "")
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2


# ------------------------------------------------------------------------ an explorer drawing ahead
def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)


def _draw_everything_ahead(ex, *, ready=True):
    """What a page showing the explorer gets between two steps: every neighbour, drawn and sent."""
    pushed = {}
    ex.image.push = lambda key, jpeg, readout: pushed.__setitem__(key, (jpeg, readout))
    if ready:
        ex._view_ready()  # no event loop here: plan the steps, then draw them one by one
    ex._ahead = neighbour_states(ex.controls, *ex._moved)
    steps = {key: (name, value) for key, name, value in ex._ahead}
    while ex.draw_one_ahead():
        pass
    return {key: (*frame, *steps[key]) for key, frame in pushed.items()}


@pytest.fixture(scope="module")
def small_x():
    return sample("gaussian", 20_000, seed=1)


def test_frames_drawn_ahead_are_what_a_real_step_draws(small_x):
    ex = quantize_explorer(small_x, bits=4)
    numbers0, png0, redraws0 = dict(ex.numbers), ex.png(), ex.redraws
    pushed = _draw_everything_ahead(ex)
    assert len(pushed) >= 6  # bits +-1, both range handles +-1, ...
    # drawing ahead leaves the explorer as it was: its numbers, its picture, its figure
    assert ex.numbers == numbers0 and ex.png() == png0 and ex.redraws == redraws0
    for key, (jpeg, readout, name, value) in pushed.items():
        fresh = quantize_explorer(small_x, bits=4)  # the same step, taken for real without drawing ahead
        fresh.controls[name].value = value
        assert state_key([control_key(w) for w in fresh.controls.values()]) == key
        assert readout == fresh.image.readout, key
        assert np.abs(_pixels(jpeg) - _pixels(fresh.image.value)).mean() < 0.5, key


def test_a_step_drawn_ahead_is_shown_without_drawing(small_x):
    ex = quantize_explorer(small_x, bits=4)
    pushed = _draw_everything_ahead(ex)
    redraws = ex.redraws
    ex.controls["bits"].value = 5
    assert ex.last_update_held and ex.redraws == redraws
    assert (ex.image.value, ex.image.readout) == pushed[ex.image.key][:2]
    assert ex.numbers["zero point Z"] == quantize_explorer(small_x, bits=5).numbers["zero point Z"]
    path_png = ex.png()  # the figure is brought back to the controls' values for the static copy
    assert np.abs(_pixels(ex.image.value) - np.asarray(Image.open(io.BytesIO(path_png)).convert("RGB"),
                                                       dtype=np.int16)).mean() < 1.0
    ex.controls["bits"].value = 2  # two steps away from 4 and not drawn: drawn now
    assert not ex.last_update_held and ex.redraws == redraws + 1


def test_log_slider_steps_drawn_ahead_match_real_steps():
    ex = clipping_explorer(n=20_000)
    pushed = _draw_everything_ahead(ex)
    clip = ex.controls["clip"]
    i = round((np.log(clip.value) / np.log(clip.base) - clip.min) / clip.step)  # the page's slider snaps to its steps
    for value in (clip.base ** (clip.min + (i + d) * clip.step) for d in (1, -1)):
        fresh = clipping_explorer(n=20_000)
        fresh.controls["clip"].value = value
        assert fresh.image.key in pushed
        assert pushed[fresh.image.key][1] == fresh.image.readout


def test_new_data_drops_every_frame_drawn_ahead(small_x):
    ex = quantize_explorer(small_x, bits=4)
    _draw_everything_ahead(ex)
    generation = ex.image.generation
    ex.update()  # what set_run and the like call: the frames drawn before are stale
    assert ex.image.generation == generation + 1 and len(ex._frames) == 1 and ex.image.key in ex._frames  # only the new one
    again = _draw_everything_ahead(ex, ready=False)  # and the page, which dropped its frames too, is sent new ones
    assert len(again) >= 6


def test_without_a_page_nothing_is_drawn_ahead_or_kept(small_x):
    ex = quantize_explorer(small_x, bits=4)
    ex.controls["bits"].value = 5
    ex.controls["bits"].value = 4
    assert not ex._live and len(ex._frames) == 0 and ex.redraws == 3 and not ex.last_update_held


# ------------------------------------------------------------------------ one queue for the kernel
class _Drawer:
    """Stands in for an explorer: ``n`` frames to draw, each logged with the loop time and the loop turn."""

    def __init__(self, name, n, log, loop, turn):
        self.name, self.n, self.log, self.loop, self.turn = name, n, log, loop, turn

    def draw_one_ahead(self):
        if not self.n:
            return False
        self.n -= 1
        self.log.append((self.name, self.loop.time(), self.turn[0]))
        return True


def test_draw_ahead_draws_one_frame_per_turn_the_last_changed_first_and_waits_out_a_drag():
    import asyncio
    import threading

    from qlearn.widgets.frames import DrawAhead

    async def scenario():
        loop = asyncio.get_running_loop()
        turn, log = [0], []

        def tick():  # counts the turns of the event loop: other work the loop does between two frames
            turn[0] += 1
            if turn[0] < 100_000:
                loop.call_soon(tick)

        tick()
        queue = DrawAhead(delay_s=0.0)
        queue.enabled = True
        shown, changed = _Drawer("shown", 3, log, loop, turn), _Drawer("changed", 2, log, loop, turn)
        queue.want(shown, loop, first=False)
        t0 = loop.time()
        queue.want(changed, loop, first=True, hold_s=0.2)  # a drag: nothing for 0.2 s
        while queue.waiting and loop.time() - t0 < 10:
            await asyncio.sleep(0.01)
        turn[0] = 100_000  # stop the ticker
        return log, t0

    # a loop of its own, in a thread of its own: an earlier test may have left this thread's loop running
    out = []
    worker = threading.Thread(target=lambda: out.append(asyncio.run(scenario())))
    worker.start()
    worker.join(timeout=30)
    log, t0 = out[0]
    assert [name for name, _, _ in log] == ["changed", "changed", "shown", "shown", "shown"]
    assert log[0][1] - t0 >= 0.2 - 1e-3
    turns = [t for _, _, t in log]
    assert all(b > a for a, b in zip(turns, turns[1:])), turns  # never two frames in one turn of the loop


def test_draw_ahead_does_nothing_when_switched_off_or_without_a_loop():
    from qlearn.widgets.frames import DrawAhead

    queue = DrawAhead()
    queue.want(object(), None, first=True)
    queue.enabled = False
    queue.want(object(), object(), first=True)
    assert queue.waiting == []


def test_an_error_in_a_step_is_shown_where_the_numbers_are_and_drops_the_frames(small_x, monkeypatch):
    ex = quantize_explorer(small_x, bits=4)
    _draw_everything_ahead(ex)
    generation = ex.image.generation

    def broken(**values):
        raise RuntimeError("a deliberate error")

    monkeypatch.setattr(ex, "render", broken)
    bits = ex.controls["bits"]
    bits.unobserve(ex._on_change, names="value")  # the page changed it; the event loop will call _flush
    bits.value = 2  # not drawn ahead: the explorer must render, and fails
    with pytest.raises(RuntimeError):
        ex._flush()  # what the event loop calls for a change from the page
    assert "a deliberate error" in ex.image.readout and ex.image.key == "error"
    assert ex.image.generation == generation + 1 and len(ex._frames) == 0

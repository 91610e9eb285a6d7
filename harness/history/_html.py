"""A self-contained HTML timeline of a history: ranks as lanes, operations as bars.

Each bar runs from an operation's invocation to its completion (an unknown outcome runs to the
end, hatched).  The operations of the smallest failing part are outlined, the contradiction is
red, and the runner's events (faults, stops) are vertical lines on the time axis.  No scripts
from elsewhere, no fonts to fetch: one file that opens anywhere.
"""

from __future__ import annotations

import html
from pathlib import Path

from ._ops import History, Op

__all__ = ["timeline", "write_timeline"]

_WIDTH = 1150  # px of the time axis (labels may run 300 px past its end)
_BAND = 14  # px of one row of runner-event labels above the lanes
_LANE = 22  # px per row of a lane
_LABEL = 90  # px for the lane names

_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px} .sub{color:#555;margin-bottom:10px;white-space:pre-wrap}
.chart{position:relative;border-top:1px solid #ccc}
.lane{position:relative;border-bottom:1px solid #e4e4e4}
.name{position:absolute;left:0;width:80px;font-weight:600;padding-top:3px}
.op{position:absolute;height:16px;border-radius:3px;background:#9ec5e8;border:1px solid #5b8db8;
 white-space:nowrap;font-size:11px;box-sizing:border-box;min-width:5px}
.op span{position:absolute;left:100%;margin-left:3px;top:0;background:#fffc;padding:0 2px}
.op.bad span{color:#b00020;font-weight:600}
.op.part{background:#ffe08a;border-color:#b8860b}
.op.bad{background:#f28b82;border:2px solid #b00020;z-index:2}
.op.unknown{background:repeating-linear-gradient(45deg,#ddd,#ddd 4px,#f6f6f6 4px,#f6f6f6 8px);
 border-style:dashed}
.op.err{background:#d7c6ec;border-color:#7a5aa6}
.fault{position:absolute;top:0;bottom:0;border-left:2px dashed #c62828;z-index:3}
.fault span{position:absolute;top:-1px;left:3px;font-size:11px;color:#c62828;background:#fffc;
 white-space:nowrap}
.axis{position:relative;height:18px;color:#666;font-size:11px}
.tick{position:absolute;border-left:1px solid #bbb;height:6px;top:0}
.tick span{position:absolute;top:5px;left:-10px;white-space:nowrap}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
.legend span{display:inline-block;padding:0 6px;margin-right:8px;border-radius:3px}
"""


def _rows(ops: list[Op], end: int, ns_per_px: float) -> list[list[Op]]:
    """Greedy rows so that operations of one lane (and their labels) do not hide each other."""
    rows: list[list[Op]] = []
    ends: list[float] = []
    for op in sorted(ops, key=lambda o: o.call):
        label = (len(str(op)) * 6.5 + 12) * ns_per_px
        stop = max(op.ret if op.ret is not None else end, op.call + label)
        for r, last in enumerate(ends):
            if op.call >= last:
                rows[r].append(op)
                ends[r] = stop
                break
        else:
            rows.append([op])
            ends.append(stop)
    return rows or [[]]


def timeline(history: History, title: str = "history") -> str:
    """The HTML page for ``history`` (and its cached verdict, if checked)."""
    verdict = history.verdict
    failure = getattr(verdict, "failure", None)
    part = {o.index for o in failure.ops} if failure else set()
    bad = failure.culprit.index if failure else -1
    start = min([o.call for o in history.ops] + [history.t0 or 2**63])
    end = max(history.end, start + 1)
    scale = _WIDTH / (end - start)

    def x(t: int) -> float:
        return _LABEL + (t - start) * scale

    lanes = []
    for rank in sorted({o.rank for o in history.ops}):
        rows = _rows([o for o in history.ops if o.rank == rank], end, 1 / scale)
        bars = []
        for r, row in enumerate(rows):
            for op in row:
                stop = op.ret if op.ret is not None else end
                cls = ["op"]
                if op.ret is None:
                    cls.append("unknown")
                elif type(op.result).__name__ == "Raised":
                    cls.append("err")
                if op.index in part:
                    cls.append("part")
                if op.index == bad:
                    cls.append("bad")
                tip = (
                    f"rank {op.rank} client {op.client}: {op}\n"
                    f"{(op.call - start) / 1e6:.3f} .. "
                    + ("open" if op.ret is None else f"{(op.ret - start) / 1e6:.3f}")
                    + " ms"
                    + (f"\n{op.error}" if op.error else "")
                )
                left, width = x(op.call), max(3.0, (stop - op.call) * scale)
                bars.append(
                    f'<div class="{" ".join(cls)}" style="left:{left:.1f}px;top:{r * _LANE + 3}px;'
                    f'width:{width:.1f}px" title="{html.escape(tip)}">'
                    f"<span>{html.escape(str(op))}</span></div>"
                )
        height = len(rows) * _LANE + 4
        lanes.append(
            f'<div class="lane" style="height:{height}px"><div class="name">rank {rank}</div>'
            + "".join(bars)
            + "</div>"
        )
    # Event labels get a band of their own above the lanes (a row each where they would
    # overlap), so they never cover an operation's label.
    faults: list[str] = []
    ends: list[float] = []  # per band row, the px where its last label stops
    for when, text in history.events:
        if not start <= when <= end:
            continue
        left = x(when)
        at = next((i for i, last in enumerate(ends) if last < left), len(ends))
        ends[at : at + 1] = [left + len(text) * 6.5 + 12]
        faults.append(
            f'<div class="fault" style="left:{left:.1f}px"><span style="top:{at * _BAND}px">'
            f"{html.escape(text)}</span></div>"
        )
    band = len(ends) * _BAND + (2 if ends else 0)
    ticks = []
    span_ms = (end - start) / 1e6
    step = _nice(span_ms / 10)
    t = 0.0
    while t <= span_ms:
        ticks.append(f'<div class="tick" style="left:{x(start + int(t * 1e6)):.1f}px">'
                     f"<span>{t:g} ms</span></div>")  # fmt: skip
        t += step
    summary = html.escape(str(verdict)) if verdict is not None else "not checked"
    detail = (
        f"<h2>Smallest failing part</h2><pre>{html.escape(failure.text(start))}</pre>"
        if failure
        else ""
    )
    legend = (
        '<div class="legend"><span style="background:#9ec5e8">operation</span>'
        '<span style="background:#ffe08a">in the failing part</span>'
        '<span style="background:#f28b82">contradiction</span>'
        '<span style="background:#d7c6ec">raised (timeout, ...)</span>'
        '<span style="background:#eee;border:1px dashed #888">unknown outcome</span>'
        '<span style="color:#c62828">┆ runner event (fault)</span></div>'
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<div class="sub">{summary}</div>{legend}'
        f'<div class="chart" style="width:{_LABEL + _WIDTH + 300}px;padding-top:{band}px">'
        f"{''.join(faults)}{''.join(lanes)}"
        f'<div class="axis">{"".join(ticks)}</div></div>{detail}</body></html>'
    )


def _nice(step: float) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) near ``step``."""
    if step <= 0:
        return 1.0
    power = 10.0 ** int(f"{step:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if m * power >= step:
            return m * power
    return 10 * power


def write_timeline(history: History, path: str | Path, title: str = "history") -> Path:
    """Write :func:`timeline` to ``path`` (directories made as needed); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(timeline(history, title), encoding="utf-8")
    return out

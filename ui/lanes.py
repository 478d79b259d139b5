"""The lineage graph of one page, drawn as lanes beside the table (as `git log --graph` does).

Rows come newest first. Each version sits in a lane; an edge runs from a version down to its
parent's lane and along it to the parent's row. A parent not on the page keeps its lane open to
the bottom edge, so the reader sees that the history goes on. Each row gets its own small SVG
(the table's rows are all one height), so the drawing needs no script and no absolute layout.

>>> rows = lay_out([{"id": "c", "parents": ["b"]}, {"id": "b", "parents": ["a"]}, {"id": "a", "parents": []}])
>>> [r.column for r in rows], rows[0].segments[0]
([0, 0, 0], ('node-to-lane', 0, 0))
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROW_H = 32
LANE_W = 18
PAD = 12


@dataclass
class RowLayout:
    id: str
    column: int
    width: int  # lanes in use on this row
    # (shape, from lane, to lane): "node-to-lane" leaves the node towards the bottom of a lane,
    # "lane" crosses the whole row, "lane-to-node" arrives from the top of a lane at the node.
    segments: list[tuple[str, int, int]] = field(default_factory=list)

    def svg_width(self) -> int:
        return PAD * 2 + LANE_W * max(self.width - 1, 0)


def x_of(lane: int) -> int:
    return PAD + LANE_W * lane


def lay_out(rows: list[dict]) -> list[RowLayout]:
    """Lanes for ``rows`` (dicts with ``id`` and ``parents``), newest first."""
    lanes: list[str | None] = []  # the version each lane is waiting for
    out: list[RowLayout] = []
    for row in rows:
        vid = row["id"]
        arriving = [i for i, want in enumerate(lanes) if want == vid]
        column = arriving[0] if arriving else _free(lanes)
        _put(lanes, column, None)
        layout = RowLayout(vid, column, 0)
        for i, want in enumerate(lanes):  # lanes passing by, waiting for an older version
            if want is not None and want != vid:
                layout.segments.append(("lane", i, i))
        for i in arriving:
            layout.segments.append(("lane-to-node", i, column))
            lanes[i] = None
        for k, parent in enumerate(row.get("parents") or []):
            waiting = next((i for i, want in enumerate(lanes) if want == parent), None)
            if waiting is None:
                waiting = column if k == 0 and lanes[column] is None else _free(lanes)
                _put(lanes, waiting, parent)
            layout.segments.append(("node-to-lane", column, waiting))
        layout.width = max(len(lanes), column + 1)
        out.append(layout)
        while lanes and lanes[-1] is None:
            lanes.pop()
    return out


def _free(lanes: list[str | None]) -> int:
    """The leftmost lane no one waits in (a new one at the right when all are taken)."""
    for i, want in enumerate(lanes):
        if want is None:
            return i
    return len(lanes)


def _put(lanes: list[str | None], i: int, vid: str | None) -> None:
    while len(lanes) <= i:
        lanes.append(None)
    lanes[i] = vid


def paths(layout: RowLayout) -> list[str]:
    """SVG path data for the row's segments."""
    mid, bottom = ROW_H // 2, ROW_H
    out = []
    for shape, a, b in layout.segments:
        if shape == "lane":
            out.append(f"M{x_of(a)} 0V{bottom}")
        elif shape == "lane-to-node":
            out.append(f"M{x_of(a)} 0L{x_of(b)} {mid}")
        else:
            out.append(f"M{x_of(a)} {mid}L{x_of(b)} {bottom}")
    return out

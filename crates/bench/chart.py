#!/usr/bin/env python3
"""Draws bench-results/summary.svg for `make bench`: crates/bench/bench.py runs this file with
the Python of the chart's virtual environment (matplotlib, pinned there) as

    chart.py last-run/chart.json summary.svg

One panel per figure, the figure beside its same-run reference (or its goal), with the ratio,
the goal and the verdict above the bars; then one panel per CPU profile: the service's own
functions by inclusive time, as in latest.md. The JSON says everything drawn: this file
computes nothing and knows no figure by name.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("svg")  # no display needed

import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)

COLUMNS = 4
ROLE_COLORS = {"figure": "#1f77b4", "reference": "#9e9e9e", "goal": "white"}
VERDICT_COLORS = {"PASS": "#2e7d32", "FAIL": "#c62828", "": "#37474f"}
NAME_WIDTH = 110  # characters of a function name shown


def draw_group(axes: plt.Axes, group: dict) -> None:
    """Bars of one figure and its reference or goal; "n/a" where a value is missing."""
    bars = group["bars"]
    labels = ["\n".join(textwrap.wrap(bar["label"], 16)) for bar in bars]
    values = [bar["value"] or 0.0 for bar in bars]
    colors = [ROLE_COLORS.get(bar["role"], "#1f77b4") for bar in bars]
    hatches = ["//" if bar["role"] == "goal" else "" for bar in bars]
    drawn = axes.bar(labels, values, color=colors, edgecolor="#37474f", linewidth=0.8, hatch=hatches)
    axes.bar_label(drawn, labels=[f"{bar['value']:g}" if bar["value"] is not None else "n/a" for bar in bars])
    axes.set_title("\n".join(textwrap.wrap(group["title"], 34)), fontsize=10)
    axes.set_ylabel(group["unit"])
    axes.set_ylim(0, max(values + [1.0]) * 1.3)  # room for the values and the note
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(axis="x", labelsize=8)
    note = group["ratio"]
    if group["goal"]:
        note += f"\ngoal {group['goal']}: {group['verdict']}"
    axes.text(
        0.5,
        0.97,
        note,
        transform=axes.transAxes,
        ha="center",
        va="top",
        fontsize=9,
        color=VERDICT_COLORS.get(group["verdict"], VERDICT_COLORS[""]),
        fontweight="bold" if group["verdict"] else "normal",
    )


def draw_profile(axes: plt.Axes, profile: dict) -> None:
    """Horizontal bars, the largest share on top, each named over its bar (names are long: as
    tick labels they would push every other panel aside)."""
    rows = profile["rows"][::-1]
    shares = [share for _, share in rows]
    axes.barh(range(len(rows)), shares, color="#fdd0a2", edgecolor="#e6550d", linewidth=0.5)
    for position, (name, share) in enumerate(rows):
        name = name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"
        axes.text(0.3, position, f"{share:.1f}%   {name}", va="center", fontsize=8, family="monospace")
    axes.set_yticks([])
    axes.set_title(profile["title"], fontsize=10, loc="left")
    axes.set_xlabel("% of the instance's CPU samples with the function on the stack")
    axes.set_xlim(0, 100)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.spines[["top", "right", "left"]].set_visible(False)


def main(source: Path, target: Path) -> None:
    data = json.loads(source.read_text())
    groups, profiles = data["groups"], data["profiles"]
    rows = math.ceil(len(groups) / COLUMNS)
    heights = [1.0] * rows + [0.3 + 0.09 * len(profile["rows"]) for profile in profiles]
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    figure = plt.figure(figsize=(17, 4.4 * sum(heights)), layout="constrained")
    grid = figure.add_gridspec(len(heights), COLUMNS, height_ratios=heights)
    for index, group in enumerate(groups):
        draw_group(figure.add_subplot(grid[index // COLUMNS, index % COLUMNS]), group)
    for index, profile in enumerate(profiles):
        draw_profile(figure.add_subplot(grid[rows + index, :]), profile)
    figure.suptitle(data["title"], fontsize=12)
    figure.savefig(target, format="svg", metadata={"Date": None})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chart.py CHART.json SUMMARY.svg")
    main(Path(sys.argv[1]), Path(sys.argv[2]))

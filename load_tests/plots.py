"""The load-test report's PNG plots: capacity (cores used, and headroom, against stacks and
agents), lateness (work and claim), tick duration against the nominal four calls, propagation,
CPU per tick and the share of slots started; each target drawn only at the step it judges."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from load_tests.report import cores
from load_tests.targets import (
    AGENTS_PER_STACK,
    TARGETS,
    Run,
    Target,
    metric,
    nominal_tick_ms,
    series,
    started_share,
)

_PARTS = {"tickwork": "tab:blue", "the SDK's share": "lightsteelblue",
          "tickwork workers": "royalblue", "tickwork dashboard": "tab:cyan",
          "tickwork beat": "navy", "PostgreSQL": "tab:orange", "simulator": "tab:green"}
Line = tuple[str, str, str, Callable[[Run], float | None]]  # label, marker, style, figure


def _by_series(rows: Sequence[Run]) -> dict[str, list[Run]]:
    """The rows of each series, in the order the series come, each by stack count."""
    out: dict[str, list[Run]] = {}
    for row in rows:
        out.setdefault(series(row), []).append(row)
    return {name: sorted(mine, key=lambda r: int(r["stacks"])) for name, mine in out.items()}


def _nominal(row: Run) -> float | None:
    return row.get("nominal_tick_ms") or nominal_tick_ms(row.get("sim_latency_ms"))


def _capacity(plt: Any, rows: Sequence[Run], cpus: int | None, path: Path) -> None:
    """Stacked bars per series: cores used by each part at each step, and the headroom left
    of the machine's cores."""
    groups = _by_series(rows)
    used = {id(r): r.get("cores") or cores(r) for r in rows}
    parts = [*(p for p in _PARTS if any(p in u for u in used.values())),
             *sorted({p for u in used.values() for p in u} - set(_PARTS))]
    widths = [max(2, len(mine)) for mine in groups.values()]
    fig, axes = plt.subplots(1, len(groups), figsize=(1.3 * sum(widths) + 1.5, 4.6),
                             sharey=True, squeeze=False, gridspec_kw={"width_ratios": widths})
    top = max([float(cpus or 0)] + [sum(u.values()) for u in used.values()])
    for ax, (name, mine) in zip(axes[0], groups.items(), strict=True):
        xs = list(range(len(mine)))
        bottom = [0.0] * len(mine)
        for part in parts:
            heights = [used[id(r)].get(part, 0.0) for r in mine]
            ax.bar(xs, heights, bottom=bottom, color=_PARTS.get(part, "tab:gray"), label=part,
                   width=0.6)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        if cpus:
            left = [max(0.0, cpus - b) for b in bottom]
            ax.bar(xs, left, bottom=bottom, color="none", edgecolor="grey", hatch="//",
                   linewidth=0.5, label=f"headroom of {cpus} cores", width=0.6)
            ax.axhline(cpus, color="tab:red", linewidth=1, linestyle="--")
        for x, b in zip(xs, bottom, strict=True):
            note = f"{b:.2f} used" + (f"\n{max(0.0, cpus - b):.2f} left" if cpus else "")
            ax.annotate(note, (x, b), fontsize=6.5, ha="center", va="bottom",
                        xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(xs, [f"{int(r['stacks']):,}\n{int(r['stacks']) * AGENTS_PER_STACK:,}"
                           for r in mine], fontsize=8)
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("stacks / agents", fontsize=8)
        ax.set_ylim(0, top * 1.2 or 1)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"CPU cores used (of {cpus})" if cpus
                          else "CPU cores used (the machine's cores not recorded)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=7)
    missing = [what for what, key in (("the simulator", "sim_cpu_ms_per_tick"),
                                      ("PostgreSQL", "postgres_cpu_ms_per_tick"))
               if not any(r.get(key) is not None for r in rows)]
    fig.suptitle("Capacity: CPU cores used (ms a tick × ticks started a second)", fontsize=11)
    fig.text(0.01, 0.0, "Not measured: " + ", ".join([*missing, "Redis"]) + ".",
             fontsize=7, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _marks(ax: Any, colours: dict[str, Any], labels: dict[str, str],
           span: Callable[[Target], tuple[float, float] | None]) -> None:
    """Each target on the metrics of `labels` ({metric: label, formatted with the target as
    `t`}) as a short mark at its own stack count, in the colour of the series it judges
    (series present only): a segment at the limit, or a band where `span` gives one."""
    seen: dict[tuple[int, float], int] = {}
    for t in TARGETS:
        key = f"{t.setup} {t.llm}"
        if t.metric not in labels or key not in colours or (extent := span(t)) is None:
            continue
        low, high = extent
        nth = seen.get((t.stacks, high), 0)  # marks at the same place: dashed, label above
        seen[(t.stacks, high)] = nth + 1
        style = "solid" if nth == 0 else (0, (2, 2))
        if low == high:
            ax.hlines(low, t.stacks / 1.3, t.stacks * 1.3, colors=[colours[key]], linewidth=3,
                      linestyles=[style])
        else:
            ax.vlines(t.stacks, low, high, colors=[colours[key]], linewidth=3,
                      linestyles=[style])
        ax.annotate(labels[t.metric].format(t=t), (t.stacks, high), fontsize=7,
                    color=colours[key], ha="center", va="bottom", xytext=(0, 3 + 9 * nth),
                    textcoords="offset points")


def _draw(ax: Any, rows: Sequence[Run], colours: dict[str, Any],
          lines: Sequence[Line]) -> list[float]:
    """One line per series and figure, and two legends (series by colour, figures by
    style); returns the values drawn."""
    from matplotlib.lines import Line2D

    drawn: list[float] = []
    for name, mine in _by_series(rows).items():
        for _, marker, style, get in lines:
            points = [(int(r["stacks"]), v) for r in mine if (v := get(r)) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=marker, linestyle=style, color=colours[name],
                        markersize=4)
                drawn += ys
    fig = ax.get_figure()
    fig.legend(handles=[Line2D([], [], color=c, linewidth=2, label=n) for n, c in colours.items()],
               title="step", fontsize=7, title_fontsize=7, loc="outside right upper")
    fig.legend(handles=[Line2D([], [], color="black", marker=m, linestyle=cast(Any, s),
                               label=label) for label, m, s, _ in lines],
               title="figure", fontsize=7, title_fontsize=7, loc="outside right lower")
    return drawn


def _axes(ax: Any, rows: Sequence[Run], title: str, unit: str, values: Sequence[float],
          log: bool) -> None:
    sizes = sorted({int(r["stacks"]) for r in rows})
    ax.set_xscale("log")
    ax.set_xlim(min(sizes) / 2, max(sizes) * 2)
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    positive = [v for v in values if v > 0]
    if log and positive and len(positive) == len(values) and max(values) / min(values) > 30:
        ax.set_yscale("log")
    else:
        low = min(values, default=0.0)  # shares: zoomed in when all are above one half
        bottom = 0 if unit != "share" or low < 0.5 else math.floor(low * 50 - 1) / 50
        ax.set_ylim(bottom, 1 + (1 - bottom) * 0.08 if unit == "share"
                    else max([*values, 0.0]) * 1.15 or 1)
    if unit == "share":
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("running stacks (4 agents each)")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def plots(rows: Sequence[Run], directory: Path, cpus: int | None = None) -> list[Path]:
    """Write the PNGs for the per-step medians (`cpus`: the machine's cores, for the
    headroom); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    cycle = plt.get_cmap("tab10")
    colours = {name: cycle(i % 10) for i, name in enumerate(_by_series(rows))}
    written = [directory / "capacity.png"]
    _capacity(plt, rows, cpus, written[0])

    def limit(t: Target) -> tuple[float, float]:
        return (t.limit, t.limit)

    def nominal_band(t: Target) -> tuple[float, float] | None:
        mine = [r for r in rows if series(r) == f"{t.setup} {t.llm}"]
        row = next((r for r in mine if t.applies(r)), mine[0] if mine else None)
        nominal = None if row is None else _nominal(row)
        return None if not nominal else (nominal * (1 - t.limit) / 1000,
                                         nominal * (1 + t.limit) / 1000)

    def s(value: float | None) -> float | None:
        return None if value is None else value / 1000

    figures: list[tuple[str, str, str, list[Line], dict[str, str], Any]] = [
        ("lateness.png", "Lateness: the first agent step's start, and the claim, − the slot",
         "ms", [("p50", "o", "--", lambda r: metric(r, "lateness_p50")),
                ("p99", "^", "-", lambda r: metric(r, "lateness_p99")),
                ("claim p50", "o", ":", lambda r: metric(r, "claim_p50")),
                ("claim p99", "^", "-.", lambda r: metric(r, "claim_p99"))],
         {"lateness_p99": "p99 ≤ {t.limit:g}"}, limit),
        ("tick_duration.png", "Tick duration (claim → finished), nominal four calls dotted",
         "s", [("p50", "o", "-", lambda r: s(metric(r, "tick_p50"))),
               ("p99", "^", "--", lambda r: s(metric(r, "tick_p99")))],
         {"tick_p50_off": "p50 ±{t.limit:.0%}"}, nominal_band),
        ("cpu_per_tick.png", "tickwork's CPU per tick (median)", "ms",
         [("CPU", "o", "-", lambda r: r.get("cpu_ms_per_tick")),
          ("without the SDK's share", "s", "--",
           lambda r: r.get("cpu_ms_per_tick_without_sdk"))],
         {"cpu_ms_per_tick": "≤ {t.limit:g}", "engine_cpu_ms_per_tick": "≤ {t.limit:g}"},
         limit),
        ("started.png", "Share of the slots' ticks started (the rest: busy skips)", "share",
         [("started", "o", "-", started_share)],
         {"busy_share": "busy ≤ {t.limit:.1%}"}, lambda t: (1 - t.limit, 1 - t.limit)),
    ]
    if any(r.get("propagation_ms") for r in rows):
        figures.append(
            ("propagation.png", "Propagation: commit → event-stream client", "ms",
             [("p50", "o", ":", lambda r: metric(r, "propagation_p50")),
              ("p95", "s", "-", lambda r: metric(r, "propagation_p95")),
              ("p99", "^", "--", lambda r: metric(r, "propagation_p99"))],
             {"propagation_p95": "p95 ≤ {t.limit:g}", "propagation_p99": "p99 ≤ {t.limit:g}"},
             limit))
    for name, title, unit, lines, labels, span in figures:
        fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
        drawn = _draw(ax, rows, colours, lines)
        marks = [v for t in TARGETS if t.metric in labels and f"{t.setup} {t.llm}" in colours
                 for v in span(t) or ()]
        if name == "tick_duration.png":
            for nominal in sorted({n for r in rows if (n := _nominal(r))}):
                ax.axhline(nominal / 1000, color="grey", linestyle=":", linewidth=1)
                ax.annotate(f"nominal {nominal / 1000:.2f} s", (0.005, nominal / 1000),
                            xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                            va="bottom")
                drawn.append(nominal * 1.1 / 1000)
        log = name in ("lateness.png", "cpu_per_tick.png", "propagation.png")
        _axes(ax, rows, title, unit, drawn + marks, log)
        _marks(ax, colours, labels, span)
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        written.append(directory / name)
    return written

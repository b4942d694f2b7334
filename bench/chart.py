"""The results of one run as one PNG (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.report import FLOOR, FLOOR_GATEWAY, GATEWAY, LABELS, MLFLOW, NIMBUS

COLORS = {
    NIMBUS: "#1f77b4",
    GATEWAY: "#6baed6",
    MLFLOW: "#d62728",
    FLOOR: "#7f7f7f",
    FLOOR_GATEWAY: "#bdbdbd",
}
SHORT = {
    NIMBUS: "Nimbus",
    GATEWAY: "Nimbus\nvia gateway",
    MLFLOW: "mlflow\nserve",
    FLOOR: "floor",
    FLOOR_GATEWAY: "floor\nvia gateway",
}


def draw(results: dict[str, Any], path: Path) -> None:
    """Eight panels: predict throughput, latency, memory, connections; batch by size, by
    workers, where its time goes; cold start."""
    figure, axes = plt.subplots(2, 4, figsize=(22, 10))
    servers = results["predict"]["servers"]
    names = list(servers)
    colors = [COLORS.get(name, "#999999") for name in names]
    labels = [SHORT.get(name, name) for name in names]
    positions = range(len(names))

    ax = axes[0][0]
    ax.bar(positions, [servers[n]["summary"]["requests_per_s"] for n in names], color=colors)
    for index, name in enumerate(names):
        rounds = [r["requests_per_s"] for r in servers[name]["rounds"]]
        ax.scatter([index] * len(rounds), rounds, color="black", s=12, zorder=3)
    ax.set_xticks(positions, labels)
    ax.set_ylabel("req/s (bar: median, dots: rounds)")
    ax.set_title(f"predict throughput, {results['predict']['connections']} connections")

    ax = axes[0][1]
    width = 0.38
    p50 = [servers[n]["summary"]["p50_ms"] for n in names]
    p99 = [servers[n]["summary"]["p99_ms"] for n in names]
    ax.bar([p - width / 2 for p in positions], p50, width, color=colors, label="p50")
    ax.bar([p + width / 2 for p in positions], p99, width, color=colors, alpha=0.45, label="p99")
    ax.set_xticks(positions, labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("predict latency: p50 (solid), p99 (light)")

    ax = axes[0][2]
    rss = [servers[n]["summary"]["rss_mib"] for n in names]
    pss = [servers[n]["summary"]["pss_mib"] for n in names]
    ax.bar([p - width / 2 for p in positions], rss, width, color=colors)
    ax.bar([p + width / 2 for p in positions], pss, width, color=colors, alpha=0.45)
    ax.set_xticks(positions, labels)
    ax.set_ylabel("MiB")
    ax.set_title("peak memory of the process tree: RSS (solid), PSS (light)")

    ax = axes[0][3]
    for name, by_count in results["connections"].items():
        counts = sorted(by_count, key=int)
        ax.plot(
            [int(c) for c in counts],
            [by_count[c]["requests_per_s"] for c in counts],
            marker="o",
            color=COLORS.get(name),
            label=LABELS.get(name, name),
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("wrk connections")
    ax.set_ylabel("req/s")
    ax.set_title("predict throughput by concurrency")
    ax.legend(fontsize=8)

    batch = results["batch"]
    ax = axes[1][0]
    sizes = sorted(batch["sizes"], key=int)
    ax.plot(
        [int(s) for s in sizes],
        [batch["sizes"][s]["nimbus_rows_per_s"] for s in sizes],
        marker="o",
        color=COLORS[NIMBUS],
        label="Nimbus job, submit → SUCCESS",
    )
    ax.plot(
        [int(s) for s in sizes],
        [batch["sizes"][s]["floor_rows_per_s"] for s in sizes],
        marker="o",
        color=COLORS[FLOOR],
        label="floor: decode, predict, encode",
    )
    large = batch.get("large")
    if large:
        ax.scatter(
            [large["rows"]], [large["nimbus_rows_per_s"]], marker="s", color=COLORS[NIMBUS],
            label="Nimbus input_uri job (GCS in and out)",
        )  # fmt: skip
        ax.scatter(
            [large["rows"]], [large["floor_rows_per_s"]], marker="s", color=COLORS[FLOOR],
            label="floor: JSON lines in and out",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows per job")
    ax.set_ylabel("rows/s")
    ax.set_title("batch throughput by job size")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    counts = list(batch["workers"])
    ax.bar(
        [i - width / 2 for i in range(len(counts))],
        [batch["workers"][c]["rows_per_s"] for c in counts],
        width,
        color=COLORS[NIMBUS],
        label="submit → last SUCCESS",
    )
    ax.bar(
        [i + width / 2 for i in range(len(counts))],
        [batch["workers"][c]["workers_rows_per_s"] for c in counts],
        width,
        color=COLORS[GATEWAY],
        label="workers' side: first claim → last result",
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(counts)), [f"{c} worker{'s' if c != '1' else ''}" for c in counts])
    first = batch["workers"][counts[0]]
    ax.set_ylabel("rows/s")
    ax.set_title(f"batch throughput, {first['jobs']} jobs x {first['rows_per_job']:,} rows at once")

    ax = axes[1][2]
    inline = batch["inline"]
    parts = inline["median_parts_s"]
    bottom = 0.0
    for part, color in (
        ("receive_s", "#9ecae1"),
        ("queue_s", "#fdae6b"),
        ("run_s", "#1f77b4"),
        ("notice_s", "#c7c7c7"),
    ):
        ax.bar([0], [parts[part]], bottom=bottom, color=color, label=part.removesuffix("_s"))
        bottom += parts[part]
    floor_seconds = inline["rows"] / inline["floor_rows_per_s"]
    ax.bar([1], [floor_seconds], color=COLORS[FLOOR], label="floor")
    ax.set_xticks([0, 1], ["Nimbus job", "floor"])
    ax.set_ylabel("seconds")
    ax.set_title(f"where a {inline['rows']:,}-row job's time goes")
    ax.legend(fontsize=8)

    ax = axes[1][3]
    cold = results["cold_start"]
    cold_names = ["nimbus_predict", "mlflow_serve"]
    ax.bar(
        [0, 1],
        [cold["median_s"][n] for n in cold_names],
        color=[COLORS[NIMBUS], COLORS[MLFLOW]],
    )
    for index, name in enumerate(cold_names):
        values = cold["seconds"][name]
        ax.scatter([index] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks([0, 1], ["Nimbus predict", "mlflow serve"])
    ax.set_ylabel("seconds")
    ax.set_title(f"cold start to first prediction (ratio {cold['ratio']:.2f})")

    machine = results["machine"]
    figure.suptitle(
        f"Nimbus bench {results['date']}: {machine['cores']} cores, {machine['cpu']}"
        + ("  (quick run)" if results["quick"] else ""),
        fontsize=13,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)

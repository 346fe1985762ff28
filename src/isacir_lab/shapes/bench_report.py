"""What ``bench shapes`` reports: the goals it checks, its Markdown tables and its bar chart."""

from __future__ import annotations

from pathlib import Path

#: Columns of every results table (the bench's metrics).
METRICS = ("R@1", "R@5", "R@10", "R@50", "mAP@10")


def checklist(goals: dict[str, bool]) -> str:
    """Goals as a Markdown task list."""
    return "".join(f"- [{'x' if ok else ' '}] {g}\n" for g, ok in goals.items())


def language_goals(per_language: dict[str, dict]) -> dict[str, bool]:
    """ISA with Japanese modifiers: R@10 within 5 points of English, above both symmetric baselines."""
    if not {"en", "ja"} <= set(per_language):
        return {}
    en, ja = per_language["en"]["methods"], per_language["ja"]["methods"]
    if "isa" not in ja:
        return {}
    goals = {"isa ja R@10 >= isa en R@10 - 5": ja["isa"]["R@10"] >= en["isa"]["R@10"] - 5}
    for base in ("pic2word", "isa_symmetric"):
        if base in ja:
            goals[f"isa ja R@10 > {base} ja R@10"] = ja["isa"]["R@10"] > ja[base]["R@10"]
    return goals


def check_goals(results: dict[str, dict]) -> dict[str, bool]:
    """The project's quality goals for ``isa`` (only those whose methods were run)."""
    isa = results.get("isa")
    if isa is None:
        return {}
    goals = {}
    for base in ("pic2word", "isa_symmetric"):
        if base in results:
            goals[f"isa R@10 >= {base} R@10"] = isa["R@10"] >= results[base]["R@10"]
    if "image_only" in results:
        goals["isa R@1 >= 2 x image_only R@1"] = isa["R@1"] >= 2 * results["image_only"]["R@1"]
    if "image_plus_text" in results:
        goals["isa R@1 >= 1.5 x image_plus_text R@1"] = isa["R@1"] >= 1.5 * results["image_plus_text"]["R@1"]
    if "pixel_only" in results:
        goals["isa R@1 >= pixel_only R@1"] = isa["R@1"] >= results["pixel_only"]["R@1"]
    return goals


def markdown_table(
    results: dict[str, dict],
    by_kind: dict[str, dict],
    goals: dict[str, bool],
    seed: int,
    oracles: dict[str, dict] | None = None,
    response: dict[str, dict] | None = None,
    title: str | None = None,
) -> str:
    lines = [
        f"## {title or f'Shapes-CIR, seed {seed}'}",
        "",
        "| method | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for m, r in results.items():
        lines.append(f"| {m} | " + " | ".join(f"{r[k]:.1f}" for k in METRICS) + " |")
    for m, r in (oracles or {}).items():
        lines.append(f"| *{m}* (upper bound) | " + " | ".join(f"{r[k]:.1f}" for k in METRICS) + " |")
    kinds = sorted({k for v in by_kind.values() for k in v})
    if kinds:
        lines += ["", "R@1 by edit type:", "", "| method | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for m, v in by_kind.items():
            lines.append(f"| {m} | " + " | ".join(f"{v.get(k, 0):.1f}" for k in kinds) + " |")
    if response:
        kinds = list(next(iter(response.values())))
        lines += [
            "",
            "Modifier response: how far the modifier moves each trained method's query, as a fraction "
            "of how far it moves the reference's true caption (shift ratio / cosine of the two shifts):",
            "",
            "| method | " + " | ".join(kinds) + " |",
            "|---|" + "---:|" * len(kinds),
        ]
        for m, v in response.items():
            lines.append(
                f"| {m} | "
                + " | ".join(f"{v[k]['shift_ratio']:.2f} / {v[k]['direction_cos']:.2f}" for k in kinds)
                + " |"
            )
    if goals:
        lines += ["", "Goals:", "", checklist(goals).rstrip("\n")]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict[str, dict], path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results)
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods)), 3.6), dpi=120)
    for j, k in enumerate(("R@1", "R@10", "R@50")):
        ax.bar(x + (j - 1) * 0.27, [results[m][k] for m in methods], 0.27, label=k)
    ax.set_xticks(x, methods, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"Shapes-CIR (seed {seed}), held-out modifier phrasings")
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)

"""The paper's figures and a Markdown summary, from a results directory alone.

Every number drawn or printed comes from ``results.parquet`` /
``aggregate.parquet``, so the table, the figures and the terminal agree.

Figures (PNG):
* ``accuracy_vs_size.png``: GT test accuracy against strong-model size, one
  line per weak model (its students), the strong ceiling in black and each
  weak model's own accuracy as a marker (paper Fig. 3 layout);
* ``pgr_heatmap.png``: mean PGR over weak × strong, one panel per loss;
* ``pgr_by_loss.png``: mean PGR per pair and loss, with confidence intervals;
* ``pgr_vs_size.png``: mean PGR against strong-model size with its interval,
  one line per weak model (paper Fig. 3, bottom row).

A model trained as a linear probe (``finetune``) is named ``<model> [probe]``
in every figure, so probe and fine-tuned students are never averaged together.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pandas as pd

from w2s_ray.config import NOT_ADAPTED

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURES = ("accuracy_vs_size.png", "pgr_heatmap.png", "pgr_by_loss.png", "pgr_vs_size.png")
PROBE = " [probe]"
ADAPTED = " [adapted]"  # the strong model after generative finetuning
VARIANTS = {"": ("-", ""), PROBE: ("--", " (probe students)"), ADAPTED: (":", " (adapted students)")}  # line, label


def base_name(name: str) -> str:
    """A model name without the suffixes :func:`with_modes` adds."""
    for suffix in (ADAPTED, PROBE):
        name = name.removesuffix(suffix)
    return name


def variant_of(name: str) -> str:
    """The suffix :func:`with_modes` gave a name ("" for a fully fine-tuned, unadapted model)."""
    return name[len(base_name(name)):]


def loss_label(row: dict[str, Any] | pd.Series) -> str:
    method = row.get("method", "fixed")
    if isinstance(method, str) and method.startswith("search"):
        return f"logconf, alpha searched ({method.split(':')[1]} objective)"
    loss = (f"{row['loss']} a={row['alpha_max']:g} w={row['warmup_frac']:g}" if row["loss"] in ("logconf", "entropy")
            else str(row["loss"]))
    return f"bootstrap ({loss})" if method == "bootstrap" else loss


def with_modes(frame: pd.DataFrame) -> pd.DataFrame:
    """``weak`` / ``strong`` suffixed with `` [probe]`` where that role was a linear probe on frozen features,
    and ``strong`` with `` [adapted]`` where generative finetuning adapted it first."""
    if "finetune" not in frame:
        return frame
    if "generative_finetune" in frame:
        adapted = frame["generative_finetune"].fillna(NOT_ADAPTED).astype(str) != NOT_ADAPTED
        strong = frame["strong"].astype(str)
        frame = frame.assign(strong=strong.where(~adapted | strong.str.endswith(ADAPTED), strong + ADAPTED))
    mode = frame["finetune"].fillna("full").astype(str)
    weak_probe = (mode == "probe") | mode.str.startswith("weak=probe")
    strong_probe = (mode == "probe") | mode.str.endswith("strong=probe")
    def mark(names: pd.Series, probed: pd.Series) -> pd.Series:  # idempotent: a marked name stays as it is
        return names.where(~probed | names.str.endswith(PROBE), names + PROBE)

    from w2s_ray.models import supervisor_only

    weak_probe &= ~frame["weak"].astype(str).map(supervisor_only)  # TF-IDF and the controls are no probes

    return frame.assign(weak=mark(frame["weak"], weak_probe), strong=mark(frame["strong"], strong_probe))


def model_size(name: str) -> float:
    """Millions of parameters for plotting (a probe's backbone counts); NaN when unknown: plot by order."""
    from w2s_ray.presets import size_of

    return size_of(base_name(name))


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ordered_models(cells: pd.DataFrame) -> list[str]:
    from w2s_ray.presets import by_size

    return by_size(list(cells["weak"]) + list(cells["strong"]), model_size)


def _save(fig: Figure, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # many panels: matplotlib warns it cannot shrink margins further
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _size_panels(agg: pd.DataFrame) -> tuple[Any, list[tuple[Any, tuple[str, str], pd.DataFrame]], dict[str, float]]:
    """One panel per (dataset, loss) with strong-model size on x: (figure, [(axes, key, rows)], x of each model)."""
    panels = list(agg.groupby(["dataset", agg.apply(loss_label, axis=1)], sort=False))
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    x_of = {m: (model_size(m) if not math.isnan(model_size(m)) else i + 1) for i, m in enumerate(_ordered_models(agg))}
    return fig, [(ax, key, g) for ax, (key, g) in zip(axes[0], panels)], x_of


def plot_accuracy_vs_size(agg: pd.DataFrame, out: Path) -> Path:
    fig, panels, x_of = _size_panels(agg)
    for ax, (dataset, loss), g in panels:
        variant = g["strong"].map(variant_of)
        for v, part in g.groupby(variant, sort=False):  # one ceiling line per mode
            ceil = part.groupby("strong")["ceiling_acc_mean"].mean().sort_index(key=lambda s: s.map(x_of))
            ax.plot([x_of[m] for m in ceil.index], ceil.values, f"k{VARIANTS[v][0]}o",
                    label=f"strong ceiling (GT{VARIANTS[v][1]})", zorder=3)
        colors: dict[str, Any] = {}
        for (weak, v), gw in g.groupby(["weak", variant], sort=False):
            gw = gw.sort_values("strong", key=lambda s: s.map(x_of))
            line, = ax.plot([x_of[m] for m in gw["strong"]], gw["student_acc_mean"], f"{VARIANTS[v][0]}o",
                            color=colors.get(weak), label=f"weak {weak}{VARIANTS[v][1]}")
            colors.setdefault(weak, line.get_color())
            ax.plot([x_of[weak]], [gw["weak_acc_mean"].iloc[0]], "*", ms=12, color=colors[weak])
        ax.set_xscale("log")
        ax.set_xlabel("strong model size (M parameters)")
        ax.set_ylabel("test accuracy (GT)")
        ax.set_title(f"{dataset}\n{loss}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / FIGURES[0])


def plot_pgr_heatmap(agg: pd.DataFrame, out: Path) -> Path:
    plt = _pyplot()
    panels = list(agg.groupby(["dataset", agg.apply(loss_label, axis=1)], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    order = _ordered_models(agg)
    weaks = [m for m in order if m in set(agg["weak"])]
    strongs = [m for m in order if m in set(agg["strong"])]
    for ax, ((dataset, loss), g) in zip(axes[0], panels):
        grid = g.pivot_table(index="weak", columns="strong", values="pgr_mean", aggfunc="mean")
        grid = grid.reindex(index=weaks, columns=strongs)
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="RdYlGn", vmin=-0.5, vmax=1.0)
        ax.set_xticks(range(len(strongs)), strongs, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(weaks)), weaks, fontsize=8)
        ran = set(zip(g["weak"], g["strong"]))
        for i, w in enumerate(weaks):
            for j, s in enumerate(strongs):
                v = grid.loc[w, s]
                text = "" if (w, s) not in ran else "n/a" if pd.isna(v) else f"{v:.2f}"  # n/a: degenerate gap
                ax.text(j, i, text, ha="center", va="center", fontsize=8)
        ax.set_xlabel("strong")
        ax.set_ylabel("weak")
        ax.set_title(f"PGR: {dataset}\n{loss}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, out / FIGURES[1])


def plot_pgr_by_loss(agg: pd.DataFrame, out: Path) -> Path:
    plt = _pyplot()
    agg = agg.assign(loss_label=agg.apply(loss_label, axis=1), pair=agg["weak"] + " → " + agg["strong"])
    pairs = list(dict.fromkeys(agg["pair"]))
    losses = list(dict.fromkeys(agg["loss_label"]))
    width = 0.8 / max(len(losses), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(pairs) * max(len(losses), 1) / 2), 4))
    for k, loss in enumerate(losses):
        g = agg[agg["loss_label"] == loss].groupby("pair").first().reindex(pairs)
        xs = [i + (k - (len(losses) - 1) / 2) * width for i in range(len(pairs))]
        mean = g["pgr_mean"].astype(float)
        err = [(mean - g["pgr_ci_low"].astype(float)).clip(lower=0).fillna(0),
               (g["pgr_ci_high"].astype(float) - mean).clip(lower=0).fillna(0)]
        ax.bar(xs, mean.fillna(0), width, yerr=err, capsize=3, label=loss)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(pairs)), pairs, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("PGR (mean over seeds, 95% CI)")
    ax.set_title("Performance gap recovered by loss")
    ax.legend(fontsize=8)
    return _save(fig, out / FIGURES[2])


def plot_pgr_vs_alpha(trials: pd.DataFrame, cells: pd.DataFrame, out: Path) -> Path:
    """Per pair: every search trial's test PGR against its alpha_max, the selected ones starred,
    and the fixed-loss students of the same pair as horizontal lines."""
    plt = _pyplot()
    pairs = list(dict.fromkeys(zip(trials["dataset"], trials["weak"], trials["strong"])))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, (dataset, weak, strong) in zip(axes[0], pairs):
        t = trials[(trials["dataset"] == dataset) & (trials["weak"] == weak) & (trials["strong"] == strong)]
        for method, g in t.groupby("method"):
            pts = ax.scatter(g["alpha_max"], g["pgr"], alpha=0.7, label=f"trials, {method}")
            sel = g[g["selected"]]
            ax.scatter(sel["alpha_max"], sel["pgr"], marker="*", s=250, color=pts.get_facecolor()[0],
                       edgecolor="k", label=f"selected, {method}")
        fixed = cells[(cells["dataset"] == dataset) & (cells["weak"] == weak) & (cells["strong"] == strong)
                      & (cells["method"] == "fixed")]
        for r in fixed.groupby(fixed.apply(loss_label, axis=1))["pgr"].mean().items():
            ax.axhline(r[1], ls="--", lw=1, color="gray")
            ax.text(0.01, r[1], f" {r[0]}", fontsize=7, va="bottom", transform=ax.get_yaxis_transform())
        ax.set_xlabel("alpha_max")
        ax.set_ylabel("test PGR (measured after selection)")
        ax.set_title(f"{dataset}: {weak} → {strong}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "pgr_vs_alpha.png")


def plot_agreement(agg: pd.DataFrame, out: Path) -> Path:
    """Student-weak agreement where the weak label is right vs wrong, per pair and loss (paper §5)."""
    plt = _pyplot()
    agg = agg.assign(variant=agg["weak"] + " → " + agg["strong"] + "\n" + agg.apply(loss_label, axis=1))
    labels = list(dict.fromkeys(agg["variant"]))
    g = agg.groupby("variant", sort=False)[["agreement_weak_right_mean", "agreement_weak_wrong_mean"]].mean()
    g = g.reindex(labels).astype(float)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], g["agreement_weak_right_mean"].fillna(0), 0.4, label="weak label right")
    ax.bar([x + 0.2 for x in xs], g["agreement_weak_wrong_mean"].fillna(0), 0.4, label="weak label wrong")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("student-weak agreement (GT test)")
    ax.set_title("Does the student imitate its supervisor's mistakes?")
    ax.legend(fontsize=8)
    return _save(fig, out / "agreement.png")


def plot_training_curves(cells: pd.DataFrame, out: Path) -> Path:
    """Students' GT test accuracy during training (logged for analysis, never selected on), per pair."""
    plt = _pyplot()
    curves = cells[cells["student_gt_test_acc_by_epoch"].notna()]
    pairs = list(dict.fromkeys(zip(curves["weak"], curves["strong"])))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
    for ax, (weak, strong) in zip(axes[0], pairs):
        g = curves[(curves["weak"] == weak) & (curves["strong"] == strong)]
        for r in g.to_dict("records"):
            if r.get("curve_epochs") is not None and not _missing(r["curve_epochs"]):  # several points per epoch
                xs, ys = list(r["curve_epochs"]), list(r["curve_acc"])
            else:
                ys = list(r["student_gt_test_acc_by_epoch"])
                xs = list(range(1, len(ys) + 1))
            ax.plot(xs, ys, lw=1, label=f"{loss_label(r)} seed {r['seed']}")
        ax.axhline(g["weak_acc"].mean(), color="gray", ls=":", label="weak")
        ax.axhline(g["ceiling_acc"].mean(), color="k", ls="--", label="ceiling")
        ax.set_xlabel("epoch")
        ax.set_ylabel("student GT test accuracy")
        ax.set_title(f"{weak} → {strong}", fontsize=10)
        ax.legend(fontsize=6)
    return _save(fig, out / "training_curves.png")


def plot_pgr_vs_size(agg: pd.DataFrame, out: Path) -> Path:
    """Mean PGR against strong-model size, one line per weak model, error bars = each row's named interval."""
    fig, panels, x_of = _size_panels(agg)
    methods = sorted({str(m) for m in agg.get("pgr_ci_method", pd.Series(dtype=str)).dropna()})
    for ax, (dataset, loss), g in panels:
        for (weak, v), gw in g.groupby(["weak", g["strong"].map(variant_of)], sort=False):
            gw = gw.sort_values("strong", key=lambda s: s.map(x_of))
            mean = gw["pgr_mean"].astype(float)
            err = [(mean - gw["pgr_ci_low"].astype(float)).clip(lower=0).fillna(0),
                   (gw["pgr_ci_high"].astype(float) - mean).clip(lower=0).fillna(0)]
            ax.errorbar([x_of[m] for m in gw["strong"]], mean, yerr=err, fmt=f"{VARIANTS[v][0]}o",
                        capsize=3, label=f"weak {weak}{VARIANTS[v][1]}")
        ax.axhline(0, color="k", lw=0.8)
        if g["pgr_mean"].astype(float).notna().any():  # every PGR n/a (degenerate gaps): nothing to scale
            ax.set_xscale("log")
        ax.set_xlabel("strong model size (M parameters)")
        ax.set_ylabel("PGR (mean over seeds)")
        ax.set_title(f"{dataset}\n{loss}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("error bars: " + (", ".join(methods) or "none (one value)"), fontsize=8, y=0.02)
    return _save(fig, out / FIGURES[3])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in frame.to_dict("records"):
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary_markdown(cells: pd.DataFrame, agg: pd.DataFrame) -> str:
    agg = with_modes(agg)
    columns = ["dataset", "weak", "strong", "loss", "n_seeds", "weak_acc_mean", "student_acc_mean",
               "ceiling_acc_mean", "pgr_mean", "pgr_ci_low", "pgr_ci_high", "pgr_best_mean"]
    show = agg.assign(loss=agg.apply(loss_label, axis=1))[[c for c in columns if c in agg]]
    degenerate = cells[cells["pgr"].isna()]
    methods = sorted({str(m) for m in agg.get("pgr_ci_method", pd.Series(dtype=str)).dropna()})
    parts = [
        "# Weak-to-strong sweep report", "",
        f"{len(cells)} cell(s), {cells['seed'].nunique()} seed(s), test set of {int(cells['n_test'].iloc[0])} "
        "GT rows per dataset. PGR = (student - weak) / (ceiling - weak), per seed, then averaged; "
        f"CI: {', '.join(methods) or 'none'}. `pgr_best_mean` is an ORACLE (the best point of the student's GT "
        "test curve, analysis only).", "",
        markdown_table(show), "",
    ]
    if len(degenerate):
        parts += [f"{len(degenerate)} cell(s) have a degenerate gap (ceiling <= weak): PGR n/a.", ""]
    for name, title in zip(FIGURES, ("Accuracy against strong-model size", "PGR over weak x strong",
                                     "PGR by loss", "PGR against strong-model size")):
        parts += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(parts)


def _controls_section(agg: pd.DataFrame) -> str:
    """The synthetic supervisors' PGRs: can the engine tell an effect (random flips) from none (learnable flips)?"""
    from w2s_ray.models import is_control

    controls = agg[agg["weak"].map(base_name).map(is_control)]
    if controls.empty:
        return ""
    cols = ["dataset", "weak", "strong", "loss", "n_seeds", "weak_acc_mean", "student_acc_mean", "pgr_mean",
            "pgr_ci_low", "pgr_ci_high", "agreement_mean"]
    return ("\n## Controls\n\nSynthetic supervisors that check the engine (left out of the paper's claims below): "
            "`random-flips@r` flips GT at random (nothing predicts its errors: PGR should be well above 0), "
            "`learnable-flips@r` is a hyperplane in the strong model's features (a probe copies it: PGR should "
            "be near 0). Where their intervals overlap, this data cannot tell an effect from its absence.\n\n"
            + markdown_table(controls[[c for c in cols if c in controls]]) + "\n")


def _claims_section(cells: pd.DataFrame, results_dir: Path) -> str:
    """The paper's claims this table can test (``claims.csv``: every comparison), summarised per dataset;
    the controls are compared with each other, never counted for the paper."""
    from w2s_ray.claims import comparisons, summary

    if cells.empty:
        return ""
    comps = comparisons(cells.assign(weak=cells["weak"].map(base_name), strong=cells["strong"].map(base_name)))
    if comps.empty:
        return ""
    comps.to_csv(results_dir / "claims.csv", index=False)
    return ("\n## The paper's claims, tested\n\nEach comparison is a seed-paired difference (or a PGR) with its "
            f"{comps['interval'].iloc[0]}; it supports a claim when the interval excludes 0 in the paper's "
            "direction. Every comparison: `claims.csv`.\n\n" + markdown_table(summary(comps)) + "\n")


def write_report(results_dir: Path) -> dict[str, Path]:
    """Figures + ``report.md`` into ``results_dir``; returns their paths."""
    from w2s_ray.results import read_results

    results_dir = Path(results_dir)
    cells, agg = read_results(results_dir)
    if "status" in cells:  # failed or blocked cells have no numbers to plot (results.csv lists them)
        cells = cells[cells["status"] == "ok"]
    cells, agg = with_modes(cells), with_modes(agg)
    paths = {
        "accuracy_vs_size": plot_accuracy_vs_size(agg, results_dir),
        "pgr_heatmap": plot_pgr_heatmap(agg, results_dir),
        "pgr_by_loss": plot_pgr_by_loss(agg, results_dir),
        "pgr_vs_size": plot_pgr_vs_size(agg, results_dir),
    }
    text = summary_markdown(cells, agg)
    if "agreement_weak_wrong_mean" in agg and agg["agreement_weak_wrong_mean"].notna().any():
        paths["agreement"] = plot_agreement(agg, results_dir)
        text += ("\n## Agreement with the supervisor, by whether its label was right\n\nLow agreement where "
                 "the weak label is wrong means the student did not learn its supervisor's errors.\n\n"
                 "![agreement](agreement.png)\n")
    if "student_gt_test_acc_by_epoch" in cells and cells["student_gt_test_acc_by_epoch"].notna().any():
        paths["training_curves"] = plot_training_curves(cells, results_dir)
        text += ("\n## Student test accuracy over training\n\nGT test accuracy after each epoch, logged for "
                 "analysis only (nothing selects on it): a curve that rises then falls is the student "
                 "overfitting to its weak labels.\n\n![training curves](training_curves.png)\n")
    text += _controls_section(agg)
    text += _claims_section(cells, results_dir)
    trials_path = results_dir / "trials.parquet"
    if trials_path.is_file():
        paths["pgr_vs_alpha"] = plot_pgr_vs_alpha(pd.read_parquet(trials_path), cells, results_dir)
        text += ("\n## Alpha search: PGR against alpha_max\n\nEvery trial's test PGR, measured after the search "
                 "(selection used validation only; `oracle` selection used GT validation labels).\n\n"
                 "![PGR against alpha_max](pgr_vs_alpha.png)\n")
    md = results_dir / "report.md"
    md.write_text(text)
    paths["report"] = md
    return paths

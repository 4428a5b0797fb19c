"""The benchmark's Markdown table and PNG plot, written to benchmarks/results/."""

from __future__ import annotations

from pathlib import Path

from benchmarks.detection.run import BAD_CASES, POLICIES, Results, Summary
from benchmarks.detection.traffic import CASES, Setting

MARKDOWN = "detection.md"
PLOT = "detection.png"


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _row(case: str, policy: str, s: Summary) -> str:
    exposure = "–" if case == "good" else f"{_num(s.exposure_mean)} / {_num(s.exposure_p95)}"
    promotion = f"{_num(s.promotion_mean, 1)} / {_num(s.promotion_p95, 1)}"
    cells = [case, policy, _pct(s.rolled_back), _pct(s.promoted), exposure, promotion]
    return "| " + " | ".join(cells) + " |"


def render_markdown(results: Results, *, runs: int, seed: int) -> str:
    setting = results.setting
    shares = " -> ".join(f"{share:.0%}" for share in setting.shares)
    lines = [
        "# Detection benchmark",
        "",
        f"Reproduce: `python -m benchmarks.detection --runs {runs} --seed {seed}` "
        "(this file and `detection.png` are rewritten).",
        "",
        f"An endpoint at {setting.requests_per_s:g} requests/s whose stable fails "
        f"{setting.stable_error_rate:.1%} of requests; the candidate goes {shares} with "
        f"{setting.bake_minutes}-minute bakes. {runs:,} runs per case; every policy sees the "
        "same requests. The sequential gate runs with "
        f"`false_rollback_rate: {setting.alpha:g}`, `min_effect: {setting.min_effect}`, "
        f"`min_requests: {setting.min_requests}` and `promote_early: true`; Wald's SPRT knows "
        f"stable's rate and is designed at min_effect with alpha {setting.alpha:g}, beta "
        f"{setting.beta:g}.",
        "",
        "Exposure: requests served by the candidate before its rollback (mean / p95, over the "
        "runs rolled back). Promotion: minutes to full promotion (mean / p95, over the runs "
        "promoted).",
        "",
        "| case | policy | rolled back | promoted | exposure mean / p95 | promotion min "
        "mean / p95 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for case in CASES:
        for policy in POLICIES:
            lines.append(_row(case, policy, results.summaries[(case, policy)]))
    lines += [
        "",
        "## Wald's expected sample number",
        "",
        "| case | candidate error rate | requests (per request) | budget per minute: "
        "Wald + 2 minutes |",
        "| --- | ---: | ---: | ---: |",
    ]
    for case in CASES:
        if case == "good":
            continue
        lines.append(
            f"| {case} | {CASES[case]:.1%} | {results.wald_number(case):,.0f} | "
            f"{results.wald_minute_budget(case):,.0f} |"
        )
    lines += [
        "",
        "The per-minute budget is the candidate's expected requests two minutes after the "
        "schedule has given it Wald's number.",
        "",
        "## Targets",
        "",
        "| target | figure | holds |",
        "| --- | --- | --- |",
    ]
    for target in results.targets():
        lines.append(f"| {target.claim} | {target.figure} | {'yes' if target.holds else 'NO'} |")
    return "\n".join(lines) + "\n"


def draw_plot(results: Results, path: Path) -> None:
    """Exposure of bad versions, and rollbacks and promotion time of good ones."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    policies = list(POLICIES)
    bad = [*BAD_CASES, "crash"]
    figure, (left, middle, right) = plt.subplots(
        1, 3, figsize=(17, 6), gridspec_kw={"width_ratios": [2.4, 1, 1]}, layout="constrained"
    )
    width = 0.8 / len(policies)
    for i, policy in enumerate(policies):
        means = [results.summaries[(c, policy)].exposure_mean or 0 for c in bad]
        p95 = [results.summaries[(c, policy)].exposure_p95 or 0 for c in bad]
        spots = [j + (i - len(policies) / 2 + 0.5) * width for j in range(len(bad))]
        bars = left.bar(spots, means, width, label=policy)
        left.scatter(spots, p95, marker="_", s=120, color=bars.patches[0].get_facecolor())
    for j, case in enumerate(bad):
        wald = results.wald_number(case)
        left.hlines(wald, j - 0.45, j + 0.45, colors="black", linestyles="dotted")
    left.set_yscale("log")
    left.set_xticks(range(len(bad)), bad)
    left.set_ylabel("requests served by the candidate before rollback")
    left.set_title("Bad versions: exposure (bars mean, ticks p95, dotted Wald's number)")
    left.legend(fontsize=8, loc="upper right")

    good = [results.summaries[("good", p)] for p in policies]
    rolled = [100 * s.rolled_back for s in good]
    middle.barh(policies, rolled, color="tab:red")
    middle.axvline(100 * results.setting.alpha, color="black", linestyle="dotted")
    for y, value in enumerate(rolled):
        middle.text(value + 1, y, f"{value:.2f} %", va="center", fontsize=8)
    middle.set_xlim(0, 115)
    middle.set_title("Good versions: rolled back (%)")
    middle.invert_yaxis()
    minutes = [s.promotion_mean for s in good]
    right.barh(range(len(policies)), [m or 0 for m in minutes], color="tab:green")
    for y, value in enumerate(minutes):
        label = "never promoted" if value is None else f"{value:.1f} min"
        right.text((value or 0) + 0.3, y, label, va="center", fontsize=8)
    right.set_xlim(0, 25)
    right.set_yticks(range(len(policies)), [""] * len(policies))
    right.set_title("Good versions: minutes to promotion (mean)")
    right.invert_yaxis()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(
    results: Results, setting: Setting, out: Path, *, runs: int, seed: int
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / MARKDOWN
    markdown.write_text(render_markdown(results, runs=runs, seed=seed), encoding="utf-8")
    draw_plot(results, out / PLOT)
    return [markdown, out / PLOT]

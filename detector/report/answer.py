"""The report's answer first: how far can the detector be pruned, and what does that cost and save?

One row per pruned model against the reference (the equal-budget control ``dense-ft`` where the run has one,
else the baseline, which trained fewer epochs): the paired accuracy difference on the primary set with its
95 % interval and a verdict at the non-inferiority margin (``evaluate.margin``), what pruning alone cost
before any fine-tuning, the worst robustness difference, the video-level AUC difference on Celeb-DF's
videos, and the size and speed that pruning buys. Then one sentence: the largest non-inferior sparsity and
its price; and, where the test set is too small to decide, about how many test images would.

Verdicts at margin M on the interval [low, high] of accuracy(model) - accuracy(reference):
non-inferior when low > -M, inferior when high < -M, inconclusive otherwise (the interval reaches across -M).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable

from detector.report.robustness import perturbations
from detector.report.roles import (comparison_key, control, labelled, no_control_note, pruned_models, reference,
                                   reference_words, role)
from detector.report.statistics import CONFIDENCE, set_words, timing_ratio
from detector.report.tables import Column, Section, Table, fixed, markdown, thousands

FIGURE = "answer.png"
POWER = 0.8  # 1 - beta of the sample-size estimate
VERDICTS = ("non-inferior", "inconclusive", "inferior")
SAMPLE_SIZE_SOURCE = ("Connor (1987, Biometrics 43:207), the paired-proportion sample size of a McNemar-type test, "
                      "with the null difference at -margin as in Nam (1997, Biometrics 53:1422)")


def verdict(difference: dict[str, Any] | None, margin: float) -> str:
    """Non-inferior, inferior or inconclusive at ``margin``, from the interval of the accuracy difference
    (model - reference); "not compared" without one.

    >>> [verdict({"low": low, "high": high}, 0.01) for low, high in ((-0.005, 0.01), (-0.03, -0.012),
    ...                                                             (-0.02, 0.0), (-0.01, 0.0))]
    ['non-inferior', 'inferior', 'inconclusive', 'inconclusive']
    """
    if not difference or difference.get("low") is None:
        return "not compared"
    if difference["low"] > -margin:
        return "non-inferior"
    if difference["high"] < -margin:
        return "inferior"
    return "inconclusive"


def images_to_decide(b: int, c: int, n: int, margin: float, *, confidence: float = CONFIDENCE,
                     power: float = POWER) -> int | None:
    """About how many test images would decide the verdict at ``margin``, if the share of discordant images
    (b + c) / n and the difference (c - b) / n stayed as observed: n = (z_{1-a} + z_{1-b})^2 psi /
    (delta + margin)^2, with one-sided alpha = (1 - confidence) / 2 (the lower end of the two-sided interval
    the verdict reads) and power 1 - beta (``SAMPLE_SIZE_SOURCE``). None where no number would: no
    discordant image seen (psi unknown), or a difference exactly at -margin.

    >>> images_to_decide(12, 8, 1000, 0.01)  # psi = 2 %, delta = -0.4 pp: (1.96 + 0.84)^2 0.02 / 0.006^2
    4361
    >>> images_to_decide(30, 20, 1000, 0.01) is None  # delta = -1 pp: at the margin, no n decides
    True
    """
    psi, delta = (b + c) / n, (c - b) / n
    if psi == 0 or math.isclose(delta + margin, 0.0, abs_tol=1e-12):
        return None
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2) + NormalDist().inv_cdf(power)
    return math.ceil(z * z * psi / (delta + margin) ** 2)


def add_video_differences(models: list[dict[str, Any]]) -> None:
    """Add ``video_vs_reference`` to each pruned model: per source whose test images are video frames, the
    video-level AUC difference from the reference (a video scored by the mean of its frames), as the
    statistics drew it (``add_statistics``: bootstrapped over videos, paired with the reference on the same
    draws); None where the run has no reference or no video frames."""
    ref = reference(models)
    for m in models:
        m["video_vs_reference"] = None
    sources = sorted((ref or {}).get("video_intervals") or {})
    for m in pruned_models(models) if sources else []:
        out = {}
        for source in sources:
            iv = (m.get("video_intervals") or {}).get(source) or {}
            difference = (iv.get("difference") or {}).get("auc")
            out[source] = ({"unpaired": "the two models' predictions hold different videos"} if difference is None
                           else {"videos": int(iv["clusters"]), "auc_difference": difference,
                                 "method": "percentile bootstrap over videos, both models on the same draws"})
        m["video_vs_reference"] = {"reference": ref["name"], "sources": out}


def _accuracy_before(model: dict[str, Any], primary: str) -> float | None:
    before = model.get("before_finetune") or {}
    if before.get("status") != "measured" or primary not in before.get("metrics", {}):
        return None
    return before["metrics"][primary]["accuracy"]


def _unpruned_accuracy(models: list[dict[str, Any]], primary: str) -> float | None:
    """The accuracy of the weights every pruned model starts from, before any fine-tune: the control's
    ``before_finetune`` (the baseline's weights, scored as the control's starting point), else the
    baseline's own."""
    ctrl = control(models)
    if ctrl is not None and _accuracy_before(ctrl, primary) is not None:
        return _accuracy_before(ctrl, primary)
    base = next((m for m in models if role(m) == "baseline"), None)
    return base["metrics"][primary]["accuracy"] if base else None


def _worst_robustness(model: dict[str, Any], key: str, found: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The perturbation under which the model loses most against the reference, with its interval."""
    paired = {p: vs["accuracy_difference"] for p, vs in (model.get(f"robustness_{key}") or {}).items()
              if "accuracy_difference" in vs}
    if not paired:
        return None
    p, d = min(paired.items(), key=lambda x: x[1]["estimate"])
    return {**d, "label": found[p]["label"]}


def answer_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per pruned model (intervals also as dicts, for the Markdown cells)."""
    models, primary = data["models"], data["primary"]["set"]
    margin = data["run"]["margin"]
    ref = reference(models)
    key = comparison_key(ref)
    found, unpruned = perturbations(models), _unpruned_accuracy(models, primary)
    rows = []
    for m in pruned_models(models):
        vs = (m.get(key) or {}).get(primary) if "unpaired" not in (m.get(key) or {}) else None
        d = (vs or {}).get("accuracy_difference")
        t = (vs or {}).get("mcnemar") or {}
        before = _accuracy_before(m, primary)
        worst = _worst_robustness(m, key, found)
        videos = (m.get("video_vs_reference") or {}).get("sources") or {}
        e = m["efficiency"]
        call = verdict(d, margin)
        rows.append({
            "model": m["name"], "sparsity": m["sparsity"], "reference": ref["name"] if ref else None,
            "difference": d, "diff_estimate": (d or {}).get("estimate"), "diff_low": (d or {}).get("low"),
            "diff_high": (d or {}).get("high"),
            "pruning_alone": None if before is None or unpruned is None else before - unpruned,
            "robustness": worst, "robustness_worst": (worst or {}).get("label"),
            "robustness_estimate": (worst or {}).get("estimate"), "robustness_low": (worst or {}).get("low"),
            "robustness_high": (worst or {}).get("high"),
            "video_auc": videos, **_video_columns(videos),
            "nonzero_params": e.get("nonzero_params"), "sparse_mib": e.get("sparse_size_mb"),
            "size_mib": e.get("size_mb"), "latency_ms": e.get("latency_ms"), "verdict": call,
            "images_to_decide": (images_to_decide(t["b"], t["c"], m["metrics"][primary]["samples"], margin)
                                 if call == "inconclusive" and "b" in t and _per_image(vs) else None),
            "test_images": m["metrics"][primary].get("samples"), "unit": (vs or {}).get("unit", "image"),
        })
    return rows


def _per_image(vs: dict[str, Any] | None) -> bool:
    """Whether the test counted images one by one: the sample-size formula takes independent images, not
    a video's frames, which the cluster-adjusted test counts together (``unit`` "video")."""
    return (vs or {}).get("unit", "image") == "image"


def _video_columns(videos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The CSV's flat video columns: the first source's AUC difference (Celeb-DF is the one video source)."""
    paired = [(s, v) for s, v in sorted(videos.items()) if "auc_difference" in v]
    if not paired:
        return {"video_source": None, "video_auc_estimate": None, "video_auc_low": None, "video_auc_high": None}
    s, v = paired[0]
    d = v["auc_difference"]
    return {"video_source": s, "video_auc_estimate": d.get("estimate"), "video_auc_low": d.get("low"),
            "video_auc_high": d.get("high")}


def _pp_ci(d: dict[str, Any] | None) -> str:
    if not d or d.get("estimate") is None:
        return "n/a"
    return f"{100 * d['estimate']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def _robustness_cell(worst: dict[str, Any] | None) -> str:
    return "not measured" if not worst else f"{_pp_ci(worst)} ({worst['label']})"


def _video_cell(videos: dict[str, dict[str, Any]]) -> str:
    if not videos:
        return "no video frames"
    cells = []
    for source, v in sorted(videos.items()):
        d = v.get("auc_difference") or {}
        if d.get("estimate") is None:
            cells.append(f"{source}: {v.get('unpaired', 'undefined (one class)')}")
        else:
            cells.append(f"{d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] ({source}, {v['videos']} videos)")
    return "; ".join(cells)


ANSWER_CSV = [Column(k) for k in (
    "model", "sparsity", "reference", "diff_estimate", "diff_low", "diff_high", "verdict", "images_to_decide",
    "test_images", "pruning_alone", "robustness_worst", "robustness_estimate", "robustness_low", "robustness_high",
    "video_source", "video_auc_estimate", "video_auc_low", "video_auc_high", "nonzero_params", "sparse_mib",
    "size_mib", "latency_ms")]


def _columns(ref_name: str) -> list[Column]:
    return [
        Column("sparsity", "Sparsity", lambda s: f"{100 * s:g} %"),
        Column("difference", f"Accuracy vs {ref_name} (pp, 95 % CI)", _pp_ci),
        Column("verdict", "Verdict"),
        Column("pruning_alone", "Pruning alone, before fine-tuning (pp)",
               lambda x: "not measured" if x is None else f"{100 * x:+.2f}"),
        Column("robustness", f"Worst robustness vs {ref_name} (pp, 95 % CI)", _robustness_cell),
        Column("video_auc", f"Video AUC vs {ref_name} (95 % CI)", _video_cell),
        Column("nonzero_params", "Non-zero weights", thousands),
        Column("sparse_mib", "Sparse file (MiB)", fixed(2)),
        Column("latency_ms", "Latency, batch 1 (ms)", fixed(2))]


def _ratio(e: dict[str, Any], r: dict[str, Any], key: str) -> str:
    return "n/a" if not e.get(key) or not r.get(key) else f"{e[key]:.2f} against {r[key]:.2f}"


def _answer_sentence(rows: list[dict[str, Any]], data: dict[str, Any]) -> str:
    """The largest non-inferior sparsity, what it costs and what it saves; or that none is."""
    models, margin = data["models"], data["run"]["margin"]
    ref = reference(models)
    against = reference_words(models)
    ok = [r for r in rows if r["verdict"] == "non-inferior"]
    if not ok:
        return (f"**No pruned model is non-inferior to {against} at the {100 * margin:g} pp margin** on "
                f"{set_words(data['primary']['set'])}.")
    best = max(ok, key=lambda r: r["sparsity"])
    m = next(x for x in models if x["name"] == best["model"])
    e, r = m["efficiency"], ref["efficiency"]
    latency = timing_ratio(e, r, "latency")
    speed = (f"batch-1 latency {_ratio(e, r, 'latency_ms')} ms ({latency[0]:.2f}x, {latency[1]})" if latency
             else "batch-1 latency not measured")
    if m.get("pruning_method") == "unstructured":
        speed += ": unstructured pruning keeps the dense arithmetic, so no speed-up is expected"
    name = m["name"] if role(ref) == "control" else labelled(m, models)
    return (f"**The largest sparsity non-inferior to {against} at the {100 * margin:g} pp margin is "
            f"{100 * best['sparsity']:g} %**, {name}: accuracy {_pp_ci(best['difference'])} pp against it; "
            f"sparse file {_ratio(e, r, 'sparse_size_mb')} MiB; {speed}.")


def _sample_size_lines(rows: list[dict[str, Any]], margin: float) -> list[str]:
    """Where the test set is too small to decide: about how many test images would."""
    open_rows = [r for r in rows if r["verdict"] == "inconclusive"]
    sized = [r for r in open_rows if r["images_to_decide"]]
    lines = []
    if sized:
        lines.append(
            "Too few test images to decide " + "; ".join(
                f"{r['model']}: about {r['images_to_decide']:,} test images would decide it (it was tested on "
                f"{r['test_images']:,})" for r in sized)
            + f". That is the sample size that would decide at the {100 * margin:g} pp margin with power "
            f"{100 * POWER:g} % at one-sided alpha {(1 - CONFIDENCE) / 2:g}, were the share psi of images the "
            "two models disagree on and their difference delta as observed: n = (z_0.975 + z_0.8)^2 psi / "
            f"(delta + margin)^2, with the images taken as independent ({SAMPLE_SIZE_SOURCE}).")
    for r in open_rows:
        if r["images_to_decide"]:
            continue
        if r["unit"] != "image":
            lines.append(f"{r['model']}: its test counts a video's frames together, and the formula counts "
                         "independent images, so no size is estimated; more test videos would decide.")
        elif r["diff_estimate"]:  # images_to_decide's two cases
            lines.append(f"{r['model']}: its difference sits at -margin, where no number of images decides.")
        else:
            lines.append(f"{r['model']}: the two models disagree on none of its {r['test_images']:,} test images, "
                         "so the share that sets the sample size is unknown; more test images would decide.")
    return [" ".join(lines), ""] if lines else []


def model_to_use(data: dict[str, Any]) -> str | None:
    """The model a run recommends (``data``: ``report.json``): the largest sparsity non-inferior to the
    reference, else the equal-budget control (dense-ft), else the baseline; None when no model was evaluated."""
    ok = [r for r in answer_rows(data) if r["verdict"] == "non-inferior"] if has_answer(data) else []
    if ok:
        return max(ok, key=lambda r: r["sparsity"])["model"]
    fallback = reference(data["models"])  # the control where the run has one, else the baseline
    return fallback["name"] if fallback else None


def has_answer(data: dict[str, Any]) -> bool:
    """Whether the run has something to answer with: a pruned model and a reference, both evaluated."""
    return bool(pruned_models(data["models"])) and reference(data["models"]) is not None


def answer_section(data: dict[str, Any]) -> Section:
    if not has_answer(data):
        return Section()
    models, primary, margin = data["models"], data["primary"]["set"], data["run"]["margin"]
    ref = reference(models)
    rows = answer_rows(data)
    md = [f"Each pruned model against {reference_words(models)} on the same images of {set_words(primary)} "
          f"(the primary set), at a non-inferiority margin of {100 * margin:g} pp of accuracy "
          "(`evaluate.margin`): non-inferior where the 95 % interval of the difference lies above -margin, "
          "inferior where it lies below, inconclusive where it reaches across. \"Pruning alone\": the pruned "
          "model before its fine-tune against the unpruned weights it came from; robustness: the perturbation "
          "it loses most under" + ("; video AUC: Celeb-DF videos, each scored by the mean of its frames, "
                                   "bootstrapped over videos." if ref.get("video_intervals") else "."), ""]
    note = no_control_note(models)
    if note:
        md += [f"**Against the baseline, not an equal-budget control.** {note}", ""]
    md += [markdown(rows, _columns(ref["name"])), _answer_sentence(rows, data), ""]
    use = model_to_use(data)
    md += [f"The model to use: {use}, `RUN/models/{use}.pt`; `detector predict --checkpoint RUN/models/{use}.pt "
           "IMAGES` scores image files with it (the demo leaves a few in `RUN/samples/`).", ""]
    md += _sample_size_lines(rows, margin)
    md += [f"![answer]({FIGURE})", ""]
    return Section("The answer: how far can it be pruned?", md, [Table("answer.csv", rows, ANSWER_CSV)])


VERDICT_STYLE = {"non-inferior": ("tab:green", "o"), "inconclusive": ("0.45", "s"), "inferior": ("tab:red", "v"),
                 "not compared": ("0.75", "x")}


def answer_figure(data: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """Left: the accuracy difference against the reference with its interval, per sparsity, the margin shaded
    and each verdict in its colour. Right: what pruning buys, size and batch-1 latency per sparsity."""
    if not has_answer(data):
        return
    import matplotlib.pyplot as plt

    models, margin = data["models"], data["run"]["margin"]
    ref = reference(models)
    rows = answer_rows(data)
    fig, (acc, size, speed) = plt.subplots(1, 3, figsize=(13, 4), layout="constrained",
                                           gridspec_kw={"width_ratios": [1.4, 1, 1]})
    xs = [100 * r["sparsity"] for r in rows]
    span = max(xs) if xs else 1
    acc.axhspan(-100 * margin, 0, color="tab:green", alpha=0.12, label=f"within the margin ({100 * margin:g} pp)")
    acc.axhline(0, color="k", lw=1, label=f"{ref['name']} (the reference)")
    acc.axhline(-100 * margin, color="tab:green", lw=1, ls="--")
    for call in (*VERDICTS, "not compared"):
        mine = [r for r in rows if r["verdict"] == call and r["difference"]]
        if not mine:
            continue
        colour, marker = VERDICT_STYLE[call]
        d = [r["difference"] for r in mine]
        acc.errorbar([100 * r["sparsity"] for r in mine], [100 * x["estimate"] for x in d],
                     yerr=[[100 * (x["estimate"] - x["low"]) for x in d],
                           [100 * (x["high"] - x["estimate"]) for x in d]],
                     fmt=marker, color=colour, ms=7, capsize=4, label=call)
        for r in mine:  # the verdict beside its point too: the legend is far from the right-hand points
            acc.annotate(call, (100 * r["sparsity"], 100 * r["difference"]["high"]), textcoords="offset points",
                         xytext=(0, 5), ha="center", fontsize=7, color=colour)
    acc.margins(y=0.12)  # room above the highest interval for its verdict
    acc.set_xticks(xs)
    acc.set_xlim(-0.08 * span + min(xs), max(xs) + 0.08 * span)
    acc.set_xlabel("sparsity (% of prunable weights removed)")
    acc.set_ylabel(f"accuracy − {ref['name']}'s (pp)")
    like = "" if role(ref) == "control" else "; it ran fewer epochs: not like-for-like"
    acc.set_title(f"Accuracy against {labelled(ref, models) if like else ref['name']}, 95 % CI\n"
                  f"({data['primary']['set']}, same images{like})", fontsize=10)
    acc.legend(fontsize=8, loc="lower left")
    _cost_panels(size, speed, models, rows)
    fig.suptitle("How far can it be pruned? The verdict at the margin, and what it buys")
    save(fig, FIGURE)


def _cost_panels(size: Any, speed: Any, models: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Model size and batch-1 latency against sparsity, the reference at 0 %."""
    ref = reference(models)
    shown = [ref, *(m for m in pruned_models(models) if m["name"] in {r["model"] for r in rows})]
    xs = [100 * m["sparsity"] for m in shown]
    eff = [m["efficiency"] for m in shown]
    for key, label, style in (("sparse_size_mb", "sparse file", "o-"), ("size_mb", "dense state dict", "s--")):
        if all(e.get(key) is not None for e in eff):
            size.plot(xs, [e[key] for e in eff], style, label=label)
    size.set_ylim(bottom=0)
    size.set_xlabel("sparsity (%)")
    size.set_ylabel("size (MiB)")
    size.set_title(f"Model size (0 %: {ref['name']})", fontsize=10)
    size.legend(fontsize=8)
    if all(e.get("latency_ms") is not None for e in eff):
        lat = [e["latency_ms"] for e in eff]
        low = [e["latency_ms"] - e.get("latency_p10_ms", e["latency_ms"]) for e in eff]
        high = [e.get("latency_p90_ms", e["latency_ms"]) - e["latency_ms"] for e in eff]
        speed.errorbar(xs, lat, yerr=[low, high], fmt="o-", capsize=3, label="median (bars: p10-p90)")
        speed.legend(fontsize=8, loc="lower right")
    speed.set_ylim(bottom=0)
    speed.set_xlabel("sparsity (%)")
    speed.set_ylabel("latency, batch 1 (ms)")
    speed.set_title(f"Batch-1 latency on {eff[0].get('device', 'the test device')}", fontsize=10)
    for ax in (size, speed):
        ax.set_xticks(xs)

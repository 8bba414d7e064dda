"""Report sections beyond the paper's tables: which set is primary, errors by direction, the calibrated
threshold, video-level Celeb-DF, SynthBuster per generator, the shortcut audit, and the paper's own numbers.

Each function takes the collected data (``detector.report.collect``) and returns its ``Section``: report.md
lines under a heading, with the tables it showed (their CSV goes beside report.md); an empty one where the
run has nothing for it (no evaluated model).
"""

from __future__ import annotations

from typing import Any, Callable

from detector.report.roles import baseline
from detector.report.statistics import set_words
from detector.report.tables import Column, Section, Table, fixed, markdown, pct, thousands

# The paper's numbers on the balanced 140k test set (Table 5, Table 7, Fig 5), and its Table 3.
PAPER_TABLE5 = {"baseline": 0.9548, "prune-10": 0.9883, "prune-20": 0.9887, "prune-30": 0.9881, "prune-40": 0.9886}
PAPER_TABLE3_BASELINE = 0.9879
PAPER_FIG5_BASELINE = {"fake predicted real": 452, "real predicted fake": 452}
PAPER_FIG5_PRUNE10 = {"fake predicted real": 106, "real predicted fake": 127}
PAPER_TEST_IMAGES = 20_000

ERROR_NAMING = ("With real as the positive class (as precision and recall here), a fake predicted real is a false "
                "positive and a real predicted fake a false negative. The paper, which takes fake as the positive "
                "class when it names errors, calls a fake predicted real a *false negative* (its Fig 5: \"452 False "
                "Negatives (misclassifying 'Fake' as 'Real')\"). So this report names every error by its direction.")


def primary_section(data: dict[str, Any]) -> Section:
    if not data["models"]:
        return Section()
    p = data["primary"]
    return Section(lines=[
        f"**Primary set: `{p['set']}`**, {p['description']} (`evaluate.primary_set: {p['configured']}`). Fig 5, "
        "Table 5's first column, the pruning table and the conclusions are on it; the combined test set and "
        "each source's test set are further views, labelled by name.", ""])


def errors_section(data: dict[str, Any]) -> Section:
    """Fig 5 in numbers: every model's errors on the primary set, by direction."""
    models, primary = data["models"], data["primary"]["set"]
    if not models:
        return Section()
    rows = []
    for m in models:
        v = m["metrics"][primary]
        cells = (v.get("confusion_matrix") or {}).get("cells") or {}
        per = v.get("per_class") or {}
        rows.append({"model": m["name"], "data_set": primary, **{k.replace(" ", "_"): cells.get(k) for k in (
            "fake predicted real", "real predicted fake", "fake predicted fake", "real predicted real")},
            "recall_fake": (per.get("fake") or {}).get("recall"), "recall_real": (per.get("real") or {}).get("recall")})
    table = Table("errors_by_direction.csv", rows, [
        Column("model", "Model"), Column("fake_predicted_real", "Fake predicted real", thousands),
        Column("real_predicted_fake", "Real predicted fake", thousands),
        Column("fake_predicted_fake", "Fake predicted fake", thousands),
        Column("real_predicted_real", "Real predicted real", thousands),
        Column("recall_fake", "Recall (fake)", pct), Column("recall_real", "Recall (real)", pct)], extra_csv=("data_set",))
    return Section(f"Fig 5 in numbers: errors by direction on {set_words(primary)} (primary)",
                   [table.markdown(), ERROR_NAMING, ""], [table])


def threshold_section(data: dict[str, Any]) -> Section:
    """Accuracy at 0.5 beside accuracy at the threshold calibrated on the validation set."""
    models, primary = data["models"], data["primary"]["set"]
    if not models:
        return Section()
    rows = []
    for m in models:
        t = m.get("threshold") or {}
        val, test = m["metrics"].get("combined_val") or {}, m["metrics"][primary]
        rows.append({"model": m["name"], "method": t.get("method"), "threshold": t.get("value"),
                     "val_at_05": val.get("accuracy"), "val_calibrated": (val.get("at_calibrated") or {}).get("accuracy"),
                     "test_at_05": test.get("accuracy"),
                     "test_calibrated": (test.get("at_calibrated") or {}).get("accuracy"), "note": t.get("note")})
    if not any(r["threshold"] is not None for r in rows):
        notes = sorted({r["note"] or "not recorded (evaluated before calibration existed)" for r in rows})
        return Section("Accuracy at a calibrated threshold", [f"No calibrated threshold: {'; '.join(notes)}.", ""])
    table = Table("thresholds.csv", rows, [
        Column("model", "Model"), Column("threshold", "Threshold (chosen on combined_val)", fixed(4)),
        Column("val_at_05", "Val accuracy at 0.5", pct), Column("val_calibrated", "Val accuracy at threshold", pct),
        Column("test_at_05", f"{primary} accuracy at 0.5", pct),
        Column("test_calibrated", f"{primary} accuracy at threshold", pct)], extra_csv=("method", "note"))
    methods = sorted({str(r["method"]) for r in rows})
    how = {"eer": "where fakes predicted real are as frequent as reals predicted fake (the EER point)",
           "accuracy": "with the highest validation accuracy"}
    return Section("Accuracy at 0.5 and at a threshold calibrated on validation", [
        table.markdown(),
        f"Each model's threshold is chosen on the combined validation set only ({'; '.join(how.get(x, x) for x in methods)}; "
        "`evaluate.threshold_calibration`), never on test images, then applied unchanged to every test set "
        "(metrics.csv: accuracy at it for every set). A detector whose scores drift between data sets gains "
        "here what a fixed 0.5 loses; the gap between the two test columns is that drift.", ""], [table])


def _celebdf_protocol(data: dict[str, Any]) -> str:
    opts = (((data["run"].get("data") or {}).get("import_options") or {}).get("sources") or {}).get("celebdf") or {}
    if opts.get("split") == "official":
        return ("the official test list (List_of_testing_videos.txt, 518 videos in the full dataset), as "
                "DeepfakeBench and the Celeb-DF authors evaluate")
    if opts.get("split") == "paper":
        return "the paper's protocol (80/10/10 by video), not the official test list"
    return "a split protocol the data does not record"


def _with_interval(x: dict[str, Any] | None, fmt: Callable[[Any], str]) -> str:
    """An estimate and its interval in one cell, "0.9300 [0.8800, 0.9700]"; the estimate alone without one."""
    if not x or x.get("estimate") is None:
        return "n/a"
    if x.get("low") is None:
        return fmt(x["estimate"])
    return f"{fmt(x['estimate'])} [{fmt(x['low'])}, {fmt(x['high'])}]"


def video_section(data: dict[str, Any]) -> Section:
    """Frame-level beside video-level scores for sources whose images are video frames (Celeb-DF), with
    intervals of the video-level ones bootstrapped over videos."""
    models = data["models"]
    if not models:
        return Section()
    rows = []
    for m in models:
        for source, v in (m.get("videos") or {}).items():
            frame = m["metrics"].get(source) or m["metrics"]["combined_test"]
            fpv = v["frames_per_video"]
            iv = (m.get("video_intervals") or {}).get(source) or {}
            ivs = {k: {**(iv.get(k) or {}), "estimate": v["metrics"].get(k)} for k in ("auc", "accuracy")}
            rows.append({"model": m["name"], "source": source, "frames": v["frames"], "videos": v["videos"],
                         "frames_per_video": (f"{fpv['min']}" if fpv["min"] == fpv["max"] else
                                              f"{fpv['min']}-{fpv['max']} (median {fpv['median']:g})"),
                         "frame_auc": frame.get("auc"), "frame_accuracy": frame.get("accuracy"),
                         "video_auc": v["metrics"].get("auc"), "video_accuracy": v["metrics"].get("accuracy"),
                         "video_accuracy_calibrated": (v["metrics"].get("at_calibrated") or {}).get("accuracy"),
                         **{f"video_{k}_{end}": x.get(end) for k, x in ivs.items() for end in ("low", "high")},
                         "video_auc_ci": ivs["auc"], "video_accuracy_ci": ivs["accuracy"]})
    if not rows:
        return Section("Celeb-DF v2: frame level and video level", [
            "No test source is made of video frames, so there are no video-level scores: import Celeb-DF v2 "
            "with `detector prepare --celebdf DIR --frames-per-video N` (docs/evaluation.md).", ""])
    head = [Column("model", "Model"), Column("source", "Source"), Column("videos", "Videos", thousands),
            Column("frames_per_video", "Frames per video"), Column("frame_auc", "Frame AUC", fixed(4)),
            Column("frame_accuracy", "Frame accuracy", pct)]
    calibrated = Column("video_accuracy_calibrated", "Video accuracy at calibrated threshold", pct)
    # the CSV keeps numbers (estimate, low, high apart); the Markdown shows each with its interval
    table = Table("videos.csv", rows, [*head, Column("video_auc", "Video AUC", fixed(4)),
                                       Column("video_accuracy", "Video accuracy", pct), calibrated],
                  extra_csv=("frames", "video_auc_low", "video_auc_high", "video_accuracy_low", "video_accuracy_high"))
    ci = f"{round(100 * (data.get('statistics') or {}).get('confidence', 0.95))} % CI"
    shown = markdown(rows, [*head, Column("video_auc_ci", f"Video AUC [{ci}]", lambda x: _with_interval(x, fixed(4))),
                            Column("video_accuracy_ci", f"Video accuracy [{ci}]", lambda x: _with_interval(x, pct)),
                            calibrated])
    opts = (((data["run"].get("data") or {}).get("import_options") or {}).get("sources") or {}).get("celebdf") or {}
    asked = f" (`detector prepare --frames-per-video {opts['frames_per_video']}`, evenly spaced)" \
        if opts.get("frames_per_video") else ""
    return Section("Celeb-DF v2: frame level and video level", [
        f"Test videos from {_celebdf_protocol(data)}. Each video contributed the frames shown{asked}; a video's "
        "score is the mean of its frames' probabilities of real, its label its frames' label (DeepfakeBench's "
        "video-level protocol). Frame-level numbers treat every frame as an image. Video-level intervals: "
        "percentile bootstrap over videos (`statistics.video_interval_method` in report.json).", "", shown], [table])


def generator_section(data: dict[str, Any]) -> Section:
    """Per generator: the share of its fakes each model catches, and, where the source has reals, AUC and AP
    of the reals against that generator's fakes (the SynthBuster paper's per-generator view)."""
    models = data["models"]
    recall_rows, vs_rows = [], []
    for m in models:
        for name, v in m["metrics"].items():
            if "/" not in name:
                continue
            source, gen = name.split("/", 1)
            support = v.get("confusion_matrix", {}).get("cells", {})
            fakes = support.get("fake predicted fake", 0) + support.get("fake predicted real", 0)
            if fakes:
                recall_rows.append({"model": m["name"], "source": source, "generator": gen, "fakes": fakes,
                                    "fake_recall": ((v.get("per_class") or {}).get("fake") or {}).get("recall")})
        for source, per_gen in (m.get("vs_reals") or {}).items():
            for gen, v in per_gen.items():
                vs_rows.append({"model": m["name"], "source": source, "generator": gen,
                                "reals": v["support"]["real"], "fakes": v["support"]["fake"], "auc": v.get("auc"),
                                "ap_fake": v.get("ap_fake"), "ap_real": v.get("ap_real"), "eer": v.get("eer")})
    if not recall_rows and not vs_rows:
        return Section()
    tables, md = [], []
    if recall_rows:
        t = Table("generators.csv", recall_rows, [
            Column("model", "Model"), Column("source", "Source"), Column("generator", "Generator"),
            Column("fakes", "Fakes", thousands), Column("fake_recall", "Fakes detected (recall, fake)", pct)])
        tables.append(t)
        md += ["The share of each generator's fakes that each model predicts fake (at 0.5):", "", t.markdown()]
    if vs_rows:
        t = Table("generators_vs_reals.csv", vs_rows, [
            Column("model", "Model"), Column("source", "Source"), Column("generator", "Generator"),
            Column("reals", "Reals", thousands), Column("fakes", "Fakes", thousands), Column("auc", "AUC", fixed(4)),
            Column("ap_fake", "AP (fake positive)", fixed(4)), Column("eer", "EER", fixed(4))], extra_csv=("ap_real",))
        tables.append(t)
        md += ["Each generator's fakes ranked against all real images of the same source (AUC, and AP with "
               "the fakes as the class searched for), as the SynthBuster paper reports them:", "", t.markdown()]
    notes = sorted({f"- {source}: AUC and AP per generator {note}." for m in models
                    for source, note in (m.get("vs_reals_notes") or {}).items()})
    md += notes + ([""] if notes else [])
    return Section("Per generator", md, tables)


def audit_section(data: dict[str, Any]) -> Section:
    """The shortcut audit of the data (``detector.data.audit``), as ``detector prepare`` measured it."""
    title = "Shortcut audit: can file metadata alone tell real from fake?"
    audit = (data["run"].get("data") or {}).get("audit")
    if not audit:
        return Section(title, ["Not recorded: this run's evaluations carry no audit of their data.", ""])
    if "groups" not in audit:
        return Section(title, [f"Audit {audit.get('status', 'not measured')}.", ""])
    rows = []
    for g in audit["groups"]:
        q = g["jpeg_quality"]
        size, n = next(iter(g["sizes"].items()))
        rows.append({"split": g["split"], "source": g["source"], "class": g["class"], "images": g["images"],
                     "formats": ", ".join(f"{k} {100 * v / g['images']:.0f}%" for k, v in g["formats"].items()),
                     "jpeg_quality": f"{q['median']:g} [{q['min']:g}, {q['max']:g}]" if q else "-",
                     "size": f"{size} ({100 * n / g['images']:.0f}%)", "distinct_sizes": g["distinct_sizes"]})
    table = Table("audit.csv", rows, [
        Column("split", "Split"), Column("source", "Source"), Column("class", "Class"),
        Column("images", "Images", thousands), Column("formats", "Formats"),
        Column("jpeg_quality", "JPEG quality, median [min, max]"), Column("size", "Commonest size"),
        Column("distinct_sizes", "Sizes")])
    tree = audit["classifier"]
    md = [table.markdown()]
    if tree["status"] != "fit":
        md += [f"Metadata classifier: {tree['status']}.", ""]
    else:
        verdict = (f"**Warning: {audit['warning']}.**" if audit.get("warning") else
                   f"No shortcut found: that is within {100 * tree['warn_margin']:.0f} pp of chance.")
        md += [f"A {tree['model']} on {', '.join(tree['features'])} only, fit on the {tree['train_images']:,} train "
               f"images, scores {100 * tree['accuracy']:.1f} % on the {tree['val_images']:,} validation images "
               f"(balanced accuracy {100 * tree['balanced_accuracy']:.1f} %; chance, the majority class: "
               f"{100 * tree['chance']:.1f} %). {verdict}", ""]
    return Section(title, md, [table])


def paper_section(data: dict[str, Any]) -> Section:
    """This run beside the paper's accuracies, where the paper's own numbers agree with each other."""
    title = "Against the paper's numbers"
    if not data["models"]:
        return Section()
    if data["primary"]["source"] != "faces140k":
        return Section(title, ["The paper's accuracies are on the balanced 140k test set; this run's primary set "
                               f"is {data['primary']['description']}, so no number is compared with them.", ""])
    run = data["run"]
    setting = (run.get("arch"), run.get("image_size"))
    caveat = "" if setting == ("resnet50", 224) else (
        f" This run is {setting[0]} at {setting[1]} px, not the paper's ResNet-50 at 224 px: the columns show the "
        "gap, not a replication.")
    rows, base = [], baseline(data["models"])
    for m in data["models"]:
        if m["name"] not in PAPER_TABLE5:
            continue
        iv = ((m.get("intervals") or {}).get("faces140k") or {}).get("accuracy") or {}
        paper = None if m is base else PAPER_TABLE5[m["name"]]
        inside = None if paper is None or iv.get("low") is None else iv["low"] <= paper <= iv["high"]
        rows.append({"model": m["name"], "paper": paper, "run": m["metrics"]["faces140k"]["accuracy"],
                     "paper_text": (f"{100 * PAPER_TABLE3_BASELINE:.2f}% (Table 3) or {100 * PAPER_TABLE5['baseline']:.2f}% "
                                    "(Table 5): inconsistent" if paper is None else f"{100 * paper:.2f}%"),
                     "low": iv.get("low"), "high": iv.get("high"),
                     "within": {None: "not compared", True: "yes", False: "no"}[inside]})
    table = Table("paper_comparison.csv", rows, [
        Column("model", "Model"), Column("paper_text", "Paper (Table 5)"), Column("run", "This run (faces140k)", pct),
        Column("low", "95 % CI low", pct), Column("high", "95 % CI high", pct),
        Column("within", "Paper's value within this run's interval")], extra_csv=("paper",))
    return Section(title, [
        table.markdown(),
        f"The paper's baseline has two accuracies on the same test set: {100 * PAPER_TABLE3_BASELINE:.2f} % in "
        f"Table 3 and {100 * PAPER_TABLE5['baseline']:.2f} % in Table 5, Table 7 and the abstract; its Fig 5 "
        f"counts ({PAPER_FIG5_BASELINE['fake predicted real']} fakes predicted real and "
        f"{PAPER_FIG5_BASELINE['real predicted fake']} reals predicted fake of {PAPER_TEST_IMAGES:,}) give the "
        "latter. Since they disagree, the baseline is not compared with either (docs/protocol.md). The pruned "
        "models' values agree across Tables 5 and 7 and are compared." + caveat, ""], [table])

import json

import pytest

from detector.cli import main as cli_main
from detector.checkpoint import state_dict_size_mb
from detector.evaluate.efficiency import efficiency_row
from detector.model import build_model
from detector.prune.unstructured import is_pruned, prune_global_l1

FAST = dict(image_size=16, repeats=3, warmup=1, throughput_batch=2, throughput_repeats=1)


def test_row_reports_counts_size_and_timings():
    model = build_model("resnet18", seed=0)
    prune_global_l1(model, 0.2)
    row = efficiency_row(model, device="cpu", **FAST)
    assert row["sparsity"] == pytest.approx(0.2, abs=1e-6)
    assert row["total_params"] == 11_177_025
    assert row["nonzero_params"] == round(0.8 * row["prunable_params"])
    assert row["latency_ms"] > 0 and row["throughput"] > 0
    # the spread of the repeats, so that a reader can tell a difference from noise
    assert row["latency_p10_ms"] <= row["latency_ms"] <= row["latency_p90_ms"]
    assert row["throughput_min"] <= row["throughput"] <= row["throughput_max"]
    assert (row["throughput_batch"], row["throughput_repeats"]) == (2, 1)
    assert row["device"].startswith("cpu")
    assert is_pruned(model)  # measured on an exported copy; the model keeps its masks


def test_resnet50_size_on_disk_matches_the_paper_and_does_not_shrink_when_pruned():
    model = build_model("resnet50", seed=0)
    dense = state_dict_size_mb(model)
    assert dense == pytest.approx(89.99, abs=0.05)  # Table 6: 89.99 MB
    prune_global_l1(model, 0.4)
    assert state_dict_size_mb(model) == pytest.approx(dense, abs=0.01)  # unstructured: same tensors


def test_efficiency_command_json_for_fresh_models(capsys):
    rc = cli_main(["efficiency", "--arch", "resnet18", "--sparsities", "0,0.1,0.4", "--json", "--image-size", "16",
                   "--repeats", "2", "--warmup", "0", "--throughput-batch", "2", "--throughput-repeats", "1",
                   "--device", "cpu"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["sparsity"] for r in rows] == pytest.approx([0.0, 0.1, 0.4], abs=1e-6)
    for r in rows:
        assert {"sparsity", "nonzero_params", "total_params", "size_mb", "latency_ms", "throughput",
                "device"} <= set(r)
    assert rows[1]["nonzero_params"] == rows[1]["prunable_params"] - round(0.1 * rows[1]["prunable_params"])


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_table6_covers_90_and_95_percent(method):
    from detector.prune import measured_sparsity, prune
    from detector.report.tables import markdown
    from detector.report.write import table6

    models = []
    for sparsity in (0.0, 0.9, 0.95):
        model = build_model("resnet18", seed=0)
        prune(model, sparsity, method=method, arch="resnet18")
        row = efficiency_row(model, device="cpu", **FAST)
        # the report's sparsity: of the unpruned architecture's weights (zeroed or removed), as evaluate_stage writes it
        models.append({"name": f"s{sparsity}", "sparsity": sparsity, "measured_sparsity": measured_sparsity(model, "resnet18"),
                       "efficiency": row})
    rows = table6(models).rows
    assert [r["sparsity"] for r in rows] == pytest.approx([0.0, 0.9, 0.95], abs=0.01)
    sizes = [r["sparse_size_mb"] for r in rows]
    assert sizes[2] < sizes[1] < 0.2 * sizes[0]  # either method: the sparse export falls with the budget
    if method == "structured":  # channels gone: the dense file and the arithmetic shrink too
        assert rows[2]["size_mb"] < rows[1]["size_mb"] < 0.2 * rows[0]["size_mb"]
        assert rows[2]["macs"] < rows[1]["macs"] < rows[0]["macs"]
    else:  # zeros in dense tensors: the same dense file, exactly the budget's weights zeroed
        assert rows[2]["size_mb"] == pytest.approx(rows[0]["size_mb"], abs=0.01)
        eff = models[2]["efficiency"]
        assert eff["nonzero_params"] == eff["prunable_params"] - round(0.95 * eff["prunable_params"])
    text = markdown(rows, table6(models).columns)
    assert all(f"| {m['name']} " in text and f"{100 * r['sparsity']:.2f}" in text for m, r in zip(models, rows))


def test_efficiency_command_rejects_bad_sparsities(capsys):
    with pytest.raises(SystemExit):
        cli_main(["efficiency", "--arch", "resnet18", "--sparsities", "0,1.2"])
    assert "each sparsity must be in [0, 1)" in capsys.readouterr().err

import json
from pathlib import Path

import pytest
import numpy as np
import torch
from PIL import Image

from detector.checkpoint import save_checkpoint
from detector.cli import main as cli_main
from detector.data.images import decode_image
from detector.data.transforms import ClassificationPresetEval
from detector.model import build_model
from detector.evaluate.predict import predict_images


@pytest.fixture
def checkpoint(tmp_path):
    model = build_model("resnet18", seed=0)
    return save_checkpoint(tmp_path / "model.pt", model, metadata={"arch": "resnet18", "image_size": 32})


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40 + i, 50), color).save(folder / f"img{i}.png")
    Image.new("L", (64, 64), 128).save(folder / "sub" / "gray.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image; skipped in folders")
    return folder


def test_same_preprocessing_as_evaluation(image_folder):
    model = build_model("resnet18", seed=0).eval()
    rows = list(predict_images(model, [image_folder], image_size=32, batch_size=2))
    assert [Path(r.path).name for r in rows] == ["broken.jpg", "img0.png", "img1.png", "img2.png", "gray.jpg"]
    assert rows[0].prob_real is None and "broken.jpg" in rows[0].error
    preset = ClassificationPresetEval(image_size=32)
    for r in rows[1:]:
        x = preset(decode_image(Path(r.path).read_bytes(), name=r.path)).unsqueeze(0)
        with torch.no_grad():
            expected = torch.sigmoid(model(x)).item()
        assert r.prob_real == pytest.approx(expected, abs=1e-5)
        assert r.label == ("real" if r.prob_real >= 0.5 else "fake")


def test_missing_file_is_reported_not_fatal(tmp_path, image_folder):
    rows = list(predict_images(build_model("resnet18"), [tmp_path / "nope.png", image_folder / "img0.png"],
                               image_size=32))
    assert rows[0].error and "nope.png" in rows[0].error and rows[1].prob_real is not None


def test_predict_command_json_lines(checkpoint, image_folder, capsys):
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 5 and sum(r["error"] is not None for r in rows) == 1
    assert all(0 <= r["prob_real"] <= 1 and r["label"] in ("real", "fake") for r in rows if not r["error"])
    assert "4 image(s) scored, 1 unreadable" in err


def test_predict_command_table_and_errors(checkpoint, image_folder, tmp_path, capsys):
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder / "img1.png")]) == 0
    assert "img1.png" in capsys.readouterr().out
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder / "broken.jpg")]) == 1
    assert cli_main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(image_folder)]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err


def test_images_far_from_the_training_size_are_scored_with_one_warning(checkpoint, image_folder, capsys):
    # the model was trained at 32 px; the fixture's images are 40-64 px (no warning), these two are 400 px
    for name in ("big1.png", "big2.png"):
        Image.new("RGB", (400, 300), (9, 9, 9)).save(image_folder / name)
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder / "img0.png")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder), "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 7
    assert err.count("warning") == 1
    assert "trained at 32x32 px" in err and "big1.png is 400x300 px" in err


def test_predict_on_the_realorfake_sample(checkpoint, realorfake, capsys):
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(realorfake), "--json", "--batch-size", "64"]) == 0
    out, err = capsys.readouterr()
    assert err.count("warning") == 1 and "trained at 32x32 px" in err and "is 1024x1024 px" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 176 and all(r["error"] is None for r in rows)
    assert sum("/real/" in r["path"] for r in rows) == sum("/fake/" in r["path"] for r in rows) == 88
    assert all(0.0 <= r["prob_real"] <= 1.0 for r in rows)


def test_the_sample_is_one_setting_skipped_when_absent_and_required_under_ci(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REALORFAKE_ENV, REPO

    test = f"{Path(__file__).resolve()}::test_predict_on_the_realorfake_sample"
    env = {**os.environ, REALORFAKE_ENV: str(tmp_path / "absent"), "PYTHONPATH": str(REPO)}

    def run(ci: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
                              env={**env, "CI": ci}, cwd=REPO, capture_output=True, text=True, timeout=300)

    skipped, failed = run(""), run("true")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert f"not found at {tmp_path / 'absent'}" in skipped.stdout and REALORFAKE_ENV in skipped.stdout
    # pytest reports a failing fixture as an error: the run fails either way
    assert failed.returncode == 1 and "1 error" in failed.stdout and "CI=true requires it" in failed.stdout


def _predict_process(*args: str):
    """`detector predict` as a user runs it, its stdout and stderr in one stream, as a terminal shows them."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run([sys.executable, "-m", "detector.cli", "predict", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_table_is_whole_and_each_unreadable_file_is_named_once(checkpoint, image_folder):
    Image.new("RGB", (400, 300), (9, 9, 9)).save(image_folder / "big.png")
    done = _predict_process("--checkpoint", str(checkpoint), str(image_folder))
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith(("prob_real", " "))]
    assert lines[:len(table)] == table and len(table) == 7  # the header and 6 rows, nothing between them
    assert lines[len(table)].startswith("detector predict: warning: the model was trained at 32x32 px")
    assert lines[-1] == "5 image(s) scored, 1 unreadable"
    assert done.stdout.count("broken.jpg") == 1


def test_max_pixels_is_the_one_limit_named(checkpoint, image_folder, tmp_path, capsys):
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder / "img0.png"),
                     "--max-pixels", "1000", "--json"]) == 1
    row = json.loads(capsys.readouterr().out)
    assert row["error"].endswith("img0.png: decompression bomb: 40x50 = 2,000 pixels exceeds the limit of 1,000 "
                                 "(raise it with --max-pixels if the file is genuine)")
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder / "img0.png"),
                     "--max-pixels", "2000"]) == 0
    # above what Pillow decodes at all, one limit is named, and no flag is offered that could not help
    import io
    import struct
    import zlib

    from detector.data.images import PILLOW_MAX_PIXELS

    small = io.BytesIO()
    Image.new("RGB", (1, 1)).save(small, format="PNG")
    data = small.getvalue()  # its header, claiming 20,000 x 20,000 pixels: a decompression bomb's signature
    chunk = b"IHDR" + struct.pack(">II", 20_000, 20_000) + data[24:29]
    (tmp_path / "bomb.png").write_bytes(data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:])
    assert 20_000 * 20_000 > PILLOW_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    capsys.readouterr()
    assert cli_main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "bomb.png"), "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error.endswith(f"bomb.png: decompression bomb: more than {PILLOW_MAX_PIXELS:,} pixels, more than any "
                          "--max-pixels admits")


@pytest.mark.parametrize("value", ["0", "lots", "200000000"])
def test_a_max_pixels_that_cannot_hold_is_refused(checkpoint, image_folder, value, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["predict", "--checkpoint", str(checkpoint), str(image_folder), "--max-pixels", value])
    assert e.value.code == 2
    assert "argument --max-pixels: " in capsys.readouterr().err


def test_the_demo_s_samples_carry_their_labels_and_the_run_names_the_command_to_try(tmp_path, checkpoint, capsys):
    import shutil

    from detector.commands.predict import try_command
    from detector.data.demo import demo_image, write_demo_samples
    from detector.io import atomic_write_json
    from detector.job.runfolder import RunFolder

    run = RunFolder(tmp_path / "run")
    files = write_demo_samples(run.samples, count=4, seed=3)
    assert [f.name for f in files] == [f"real-0.png", f"fake-1-{demo_image(split='test', index=1, seed=3)[2]}.png",
                                       "real-2.png", f"fake-3-{demo_image(split='test', index=3, seed=3)[2]}.png"]
    assert (np.asarray(Image.open(files[1])) == demo_image(split="test", index=1, seed=3)[0]).all()
    assert try_command(run.root) is None  # no report yet
    atomic_write_json(run.report / "report.json", {"models": [{"name": "baseline", "sparsity": 0.0}]})
    assert try_command(run.root) is None  # no such model file
    run.model("baseline").parent.mkdir()
    shutil.copy(checkpoint, run.model("baseline"))
    command = try_command(run.root)
    assert command == f"detector predict --checkpoint {run.model('baseline')} {run.samples}"
    assert cli_main(command.split()[1:] + ["--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4

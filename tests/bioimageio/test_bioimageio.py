"""bioimage.io both ways on real data: ScopeRT packages validate and pass bioimageio.core's test_model (one 2D and
one 3D family), import back without loss, equal bioimageio.core's blockwise predict; packages that bioimageio.spec
wrote (not ScopeRT) import from pytorch_state_dict and torchscript weights; bad packages exit 2 and write nothing.

Needs the ``bioimageio`` extra (CI installs it); skipped cleanly without it.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

pytest.importorskip("bioimageio.core", reason="needs the bioimageio extra: pip install -c constraints.txt '.[bioimageio]'")

from bioimageio.core import Sample, Tensor, predict  # noqa: E402
from bioimageio.core import test_model as core_test_model  # noqa: E402
from bioimageio.spec import load_description  # noqa: E402
from bioimageio.spec.utils import read_yaml, write_yaml  # noqa: E402

from scopert.card import ModelCard  # noqa: E402
from scopert.export import export_run  # noqa: E402
from scopert.export.bioimageio.package import SEEDS, PackageOptions, package_model, size_parameters  # noqa: E402
from scopert.export.bioimageio.importer import import_package  # noqa: E402
from scopert.runtime import load  # noqa: E402
from tests.bioimageio import foreign_package  # noqa: E402
from tests.export.test_onnx_export import make_run  # noqa: E402

CONVALLARIA = "convallaria_pn2v/convallaria_pn2v_frame0000.tif"
OVULE = "ovule_3d_seg/pytorch3dunet_sample_patch.h5"
NUCLEI = "stardist_nuclei_2d/stardist_dsb2018_img2d.tif"
RCAN2D = {"ndim": 2, "num_channels": 4, "num_residual_groups": 1, "num_residual_blocks": 1, "channel_reduction": 2,
          "input_shape": [64, 64]}
UNET3D = {"name": "UNet3D", "in_channels": 1, "out_channels": 2, "layer_order": "gcr", "f_maps": 8, "num_groups": 4,
          "num_levels": 3, "final_sigmoid": False, "is_segmentation": True}


# ---- fixtures: one 2D and one 3D family, exported and packaged once ---------------------------------------
def _ovule(data_dir: Path) -> np.ndarray:
    with h5py.File(data_dir / OVULE, "r") as f:
        return np.asarray(f["raw"][8:56, 20:124, 30:134])  # (48, 104, 104) uint16: whole block cores (see test)


@pytest.fixture(scope="module")
def packages(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("bioimageio")
    out = {}
    info = make_run(root / "run_rcan2d", "rcan", RCAN2D, seed=2)
    card = export_run(info.folder, root / "rcan2d.onnx")
    res = package_model(root / "rcan2d.onnx", root / "rcan2d.zip", data_dir / CONVALLARIA,
                        PackageOptions(authors=["Jane Doe"]))
    out["rcan2d"] = (card, root / "rcan2d.onnx", res)
    info = make_run(root / "run_unet3d", "unet", UNET3D, seed=3)
    card = export_run(info.folder, root / "unet3d.onnx")
    np.save(root / "ovule.npy", _ovule(data_dir))
    res = package_model(root / "unet3d.onnx", root / "unet3d.zip", root / "ovule.npy")
    out["unet3d"] = (card, root / "unet3d.onnx", res)
    return root, out


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("foreign")
    tile = tifffile.imread(data_dir / NUCLEI)[100:228, 150:278]  # a real 128x128 crop
    return {kind: foreign_package.build(root / kind, tile, kind) for kind in ("zmuv_sigmoid", "careamics_like")}


def core_blockwise(package: Path, image: np.ndarray, block: dict[str, int]) -> np.ndarray:
    """bioimageio.core's own blockwise predict (crop stitching, whole-sample preprocessing)."""
    descr = load_description(package)
    tid = str(descr.inputs[0].id)
    dims = ("batch", "channel") + tuple(block)
    sample = Sample(members={tid: Tensor.from_numpy(image[np.newaxis, np.newaxis].astype(np.float32), dims=dims)},
                    stat={}, id="real")
    result = predict(model=descr, inputs=sample, input_block_shape={tid: block})
    return next(iter(result.members.values())).data.to_numpy()[0]


def rel_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    return diff, diff / float(np.max(np.abs(ref)))


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from scopert.cli import main

    monkeypatch.setattr(sys, "argv", ["scopert", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


# ---- export ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["rcan2d", "unet3d"])
def test_package_validates_and_passes_test_model(packages, key):
    root, built = packages
    card, _, res = built[key]
    descr = load_description(res.path)
    summary = descr.validation_summary
    assert summary.status in ("passed", "valid-format") and not summary.errors
    assert res.test_model == "passed"
    tested = core_test_model(res.path)  # again, on the written zip, as a bioimage.io user would
    print(f"\n{key}: load_description {summary.status}, test_model {tested.status} "
          f"({len(tested.details)} checks), test tile {res.test_input_shape}")
    assert tested.status == "passed"

    inp, out = descr.inputs[0], descr.outputs[0]
    packaged = descr.config.model_extra["scopert"]  # the full card, halo on the divisor grid (grid_halo)
    assert {k: v for k, v in packaged.items() if k not in ("halo", "notes")} == \
        {k: v for k, v in json.loads(card.to_json()).items() if k not in ("halo", "notes")}
    for ax in card.input.spatial_axes:
        a = next(a for a in inp.axes if str(a.id) == ax)
        step = card.input.divisor.get(ax, 1)
        halo = packaged["halo"][ax]
        assert card.halo[ax] <= halo < card.halo[ax] + step and (2 * halo) % step == 0
        assert a.size.step == step and a.size.min % step == 0 and a.size.min - 2 * halo >= step
        o = next(a for a in out.axes if str(a.id) == ax)
        assert getattr(o, "halo", 0) == halo and str(o.size.axis_id) == ax
    assert inp.pad.mode == "reflect"  # the runtime's border convention, declared so bioimageio.core pads the same
    assert descr.weights.onnx.opset_version == 17
    assert any(c.doi is not None and str(c.doi) == SEEDS[card.family].doi for c in descr.cite)
    with zipfile.ZipFile(res.path) as zf:
        names = set(zf.namelist())
        assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy", f"{key}.onnx"} <= names
        readme = zf.read("README.md").decode()
        assert "# Validation" in readme and "test_model`: **passed**" in readme
        cover = np.asarray(__import__("imageio.v3", fromlist=["imread"]).imread(zf.read("cover.png")))
    assert cover.shape[1] == 2 * cover.shape[0] and cover.std() > 5  # raw | output, not blank
    assert not list(root.glob("*.tmp*"))


def test_package_preprocessing_follows_the_card(packages):
    _, built = packages
    rcan = load_description(built["rcan2d"][2].path).inputs[0].preprocessing
    steps = [p for p in rcan if p.id != "ensure_dtype"]
    assert [p.id for p in steps] == ["scale_range"]
    assert (steps[0].kwargs.min_percentile, steps[0].kwargs.max_percentile) == (2.0, 99.9)
    assert [str(a) for a in steps[0].kwargs.axes] == ["channel", "y", "x"]
    unet = [p for p in load_description(built["unet3d"][2].path).inputs[0].preprocessing if p.id != "ensure_dtype"]
    assert [p.id for p in unet] == ["scale_range", "scale_linear", "clip"]  # min-max to [-1, 1], clipped
    assert (unet[0].kwargs.min_percentile, unet[0].kwargs.max_percentile) == (0.0, 100.0)
    assert (unet[1].kwargs.gain, unet[1].kwargs.offset) == (2.0, -1.0)
    assert (unet[2].kwargs.min, unet[2].kwargs.max) == (-1.0, 1.0)


def test_package_refuses_runtime_postprocessing_and_writes_nothing(packages, tmp_path, data_dir):
    from scopert.errors import CardError
    from scopert.export.bioimageio.package import check_packable

    card = ModelCard.from_json(packages[1]["rcan2d"][0].to_json())
    card.postprocess = {"kind": "minmax_to_centre_frame"}
    with pytest.raises(CardError, match="minmax_to_centre_frame"):
        check_packable(card)


# ---- import of our own packages ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["rcan2d", "unet3d"])
def test_import_of_own_package_is_lossless_and_equals_bioimageio_core(packages, key, tmp_path, data_dir):
    _, built = packages
    card, onnx_path, res = built[key]
    got = import_package(res.path, tmp_path / "imported.onnx")
    assert got.max_abs_error <= 1e-6 and got.mismatched_ppm == 0
    imported = got.card
    packaged = ModelCard.from_dict(load_description(res.path).config.model_extra["scopert"])
    for name in ("family", "name", "input", "output", "halo", "tile_invariant", "normalization", "postprocess",
                 "default_tile", "training_config", "notes"):
        assert getattr(imported, name) == getattr(packaged, name), name
    for ax, h in card.halo.items():  # as measured, or rounded up onto the divisor grid (grid_halo)
        d = card.input.divisor.get(ax, 1)
        assert h <= imported.halo[ax] < h + d and (2 * imported.halo[ax]) % d == 0
    assert imported.verification["onnx_vs_torch"] == card.verification["onnx_vs_torch"]
    assert imported.source.format == "bioimageio:onnx" and len(imported.source.sha256) == 64

    if key == "rcan2d":
        image = tifffile.imread(data_dir / CONVALLARIA)[:512, :640]
        block = {"y": 128, "x": 160}
    else:
        # A tile-variant net (InstanceNorm per block): where the last block overlaps the one before, ScopeRT keeps
        # the earlier block's voxels and bioimageio.core the later one's, so the sizes here are whole block cores.
        image = _ovule(data_dir)
        block = {"z": 48, "y": 88, "x": 88}
    model = load(tmp_path / "imported.onnx", backend="ort")
    ours = model.predict(image, tile=tuple(block.values()), stitch="crop")
    if imported.halo == card.halo:
        original = load(onnx_path, backend="ort").predict(image, tile=tuple(block.values()), stitch="crop")
        assert np.array_equal(ours, original)
    ref = core_blockwise(res.path, image, block)
    ours = ours if ours.ndim == ref.ndim else ours[np.newaxis]
    diff, rel = rel_error(ours, ref)
    print(f"\n{key}: ScopeRT predict vs bioimageio.core blockwise predict {image.shape}, block {block}: "
          f"max abs {diff:.2e}, relative {rel:.2e}")
    assert rel <= 1e-4


# ---- packages ScopeRT did not write ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,fmt", [("zmuv_sigmoid", "pytorch_state_dict"), ("zmuv_sigmoid", "torchscript"),
                                      ("careamics_like", "torchscript")])
def test_foreign_package_imports_and_equals_bioimageio_core(foreign, kind, fmt, tmp_path, data_dir):
    package = foreign[kind]
    assert core_test_model(package).status == "passed"  # the package itself is sound by bioimageio.core's own test
    res = import_package(package, tmp_path / f"{kind}.onnx", weights_format=fmt,
                         trust_package=fmt == "pytorch_state_dict")  # its architecture is code from the package
    print(f"\n{kind} ({fmt}): vs the package's test output max abs {res.max_abs_error:.2e}, "
          f"relative {res.max_rel_error:.2e}")
    assert res.weights == fmt and res.mismatched_ppm == 0 and res.max_abs_error <= 1e-4
    card = res.card
    assert card.family == "bioimageio" and card.normalization.kind == ("zscore" if kind == "zmuv_sigmoid" else "none")
    image = tifffile.imread(data_dir / NUCLEI)  # (512, 512): a larger real image, tiled
    model = load(tmp_path / f"{kind}.onnx", backend="ort")
    if kind == "zmuv_sigmoid":
        assert card.halo == {"y": 8, "x": 8} and card.input.divisor == {"y": 8, "x": 8}
        assert "'symmetric' mode" in card.notes  # bioimageio.core's default border padding; the runtime reflects
        ours = model.predict(image, tile=(128, 128), stitch="crop")
        ref = core_blockwise(package, image, {"y": 128, "x": 128})[0]
        inner = (slice(8, -8), slice(8, -8))  # borders: symmetric vs reflect padding, see the card's notes
        diff, rel = rel_error(ours[inner], ref[inner])
        border, _ = rel_error(ours, ref)
        assert 0 <= float(ours.min()) and float(ours.max()) <= 1  # the sigmoid now sits in the graph
        print(f"  vs bioimageio.core blockwise (512x512, block 128): interior max abs {diff:.2e}, relative {rel:.2e}; "
              f"border band {border:.2e}")
    else:
        assert card.halo == {"y": 0, "x": 0} and card.default_tile == {"y": 128, "x": 128}
        ours = model.predict(image, tile=(128, 128), stitch="crop")
        # A fixed output size (as CAREamics writes) is not tied to the input, so bioimageio.core cannot stitch
        # blocks of it: run it on each 128x128 block (the package's own size) and place them.
        ref = np.block([[core_blockwise(package, image[y:y + 128, x:x + 128], {"y": 128, "x": 128})[0]
                         for x in range(0, 512, 128)] for y in range(0, 512, 128)])
        diff, rel = rel_error(ours, ref)
        print(f"  vs bioimageio.core per 128x128 block (512x512): max abs {diff:.2e}, relative {rel:.2e}")
    assert rel <= 1e-4


def test_imported_package_runs_through_apply_cli(foreign, tmp_path, monkeypatch, capsys, data_dir):
    code, err = run_cli(monkeypatch, capsys, "import", "bioimageio", foreign["zmuv_sigmoid"], "-o",
                        tmp_path / "m.onnx")
    assert code == 0, err
    assert "max abs" in err
    code, err = run_cli(monkeypatch, capsys, "apply", "-m", tmp_path / "m.onnx", "-i", data_dir / NUCLEI,
                        "-o", tmp_path / "out.tif", "--precision", "f32")  # the f32 engine's output, exactly
    assert code == 0, err
    _, restored = tifffile.imread(tmp_path / "out.tif")  # TIFF: (normalized) raw, then restored, as 3D-RCAN writes
    expected = load(tmp_path / "m.onnx", backend="ort").predict(tifffile.imread(data_dir / NUCLEI))
    assert np.max(np.abs(restored - expected)) <= 1e-5
    assert restored.shape == (512, 512) and 0 <= restored.min() and restored.max() <= 1 and restored.std() > 0.01


# ---- bad input: exit 2, the cause named, nothing written -------------------------------------------------------
def _unpacked(package: Path, folder: Path) -> tuple[Path, dict]:
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    return folder / "rdf.yaml", read_yaml(folder / "rdf.yaml")


def _edit_no_tf(rdf, onnx_name):
    rdf["weights"] = {"tensorflow_saved_model_bundle": {"source": onnx_name, "tensorflow_version": "2.15.0"}}


@pytest.mark.parametrize("case", ["zip_slip", "no_weights", "wrong_sha256", "invalid", "index_axis", "binarize"])
def test_bad_packages_exit_2_and_write_nothing(packages, case, tmp_path, monkeypatch, capsys):
    _, built = packages
    package = built["rcan2d"][2].path
    folder = tmp_path / "pkg"
    source: Path = folder / "rdf.yaml"
    expect = {"zip_slip": "outside the package", "no_weights": "no weights ScopeRT can use",
              "wrong_sha256": "do not match the package",
              "invalid": "not a valid bioimage.io description", "index_axis": "'index' is not supported",
              "binarize": "'binarize'"}[case]
    if case == "zip_slip":
        source = tmp_path / "evil.zip"
        shutil.copy(package, source)
        with zipfile.ZipFile(source, "a") as zf:
            zf.writestr("../escaped.txt", "outside")
    else:
        path, rdf = _unpacked(package, folder)
        weights = rdf["weights"]["onnx"]
        if case == "no_weights":
            _edit_no_tf(rdf, weights["source"])
        elif case == "wrong_sha256":
            weights["sha256"] = "0" * 64
        elif case == "invalid":
            rdf["name"] = "x"  # too short
            del rdf["inputs"][0]["axes"][2]["size"]
        elif case == "index_axis":  # a time axis is a 2D+t model's window (CNNT); an index axis has no meaning here
            rdf["inputs"][0]["axes"].insert(2, {"type": "index", "size": 1})
            test_input = folder / rdf["inputs"][0]["test_tensor"]["source"]
            np.save(test_input, np.load(test_input)[:, :, np.newaxis])
            del rdf["inputs"][0]["test_tensor"]["sha256"]
        elif case == "binarize":
            rdf["outputs"][0]["postprocessing"] = [{"id": "binarize", "kwargs": {"threshold": 0.5}}]
        write_yaml(rdf, path)
    target = tmp_path / "out" / "model.onnx"
    code, err = run_cli(monkeypatch, capsys, "import", "bioimageio", source, "-o", target)
    print(f"\n{case}: {err.strip().splitlines()[-1]}")
    assert code == 2, err
    assert expect in err
    if case in ("wrong_sha256", "invalid"):  # bioimageio.spec's own words are shown
        assert ("sha256 mismatch" in err.lower()) if case == "wrong_sha256" else ("name" in err)
    assert not target.exists() and not (tmp_path / "escaped.txt").exists()


def test_a_sample_thinner_than_the_model_needs_is_mirrored_and_said(packages, tmp_path, data_dir):
    """Issue 20: `scopert package` refused the demo's own model (16 z planes, the model needs 19)."""
    root, out = packages
    card, onnx_path, _ = out["unet3d"]
    thin = _ovule(data_dir)[:3]  # 3 real planes; the U-Net's smallest valid z size is larger
    lo, _ = size_parameters(card, "z")
    assert lo > 3
    np.save(tmp_path / "thin.npy", thin)
    res = package_model(onnx_path, tmp_path / "thin.zip", tmp_path / "thin.npy")
    assert res.test_model == "passed" and (tmp_path / "thin.zip").is_file()
    assert res.test_input_shape[2] >= lo
    assert any("mirrors it at both ends" in w and "axis 'z'" in w for w in res.warnings), res.warnings


def test_weights_without_a_declared_sha256_import_with_a_note(packages, tmp_path):
    """Format 0.4 made the sha256 optional and zoo packages omit it: import, record the file's, and say so."""
    _, built = packages
    path, rdf = _unpacked(built["rcan2d"][2].path, tmp_path / "pkg")
    del rdf["weights"]["onnx"]["sha256"]
    write_yaml(rdf, path)
    res = import_package(tmp_path / "pkg" / "rdf.yaml", tmp_path / "m.onnx")
    assert any("declare no sha256" in n for n in res.notes) and len(res.card.source.sha256) == 64

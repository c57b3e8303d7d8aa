"""Seed corpora for the reader fuzzers: small crops of the real data, written the ways users write them.

Each seed is a few KB so that one mutated case reads in milliseconds. TIFFs are cut from the real
stacks in ``shared/data`` and saved as ImageJ hyperstacks, OME-TIFF, plain and compressed (zlib,
tiled, predictor) files; the HDF5 and Zarr seeds are crops of the pytorch-3dunet ovule volume; the
card seeds are the ModelCards the five families produce; the config seeds are the seeds' own
formats (3D-RCAN config.json, pytorch-3dunet YAML, SHINE and TA-GAN YAML/JSON, CNNT JSON).

``build_corpus(data_dir, out_dir)`` writes everything under ``out_dir`` and returns
``{reader: [seed paths]}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tifffile
import yaml

OVULE = "ovule_3d_seg/pytorch3dunet_sample_patch.h5"


def _tiff_seeds(data: Path, out: Path) -> list[Path]:
    stardist = tifffile.imread(data / "stardist_nuclei_2d/stardist_dsb2018_img2d.tif")[200:232, 200:232]
    cylindra = tifffile.imread(data / "em_misc/cylindra_13pf_MT.tif")[10:14, 60:76, 30:46]
    isbi = tifffile.imread(data / "isbi2012_em/isbi2012_train_volume.tif", key=range(3))[:, :16, :16]
    sem = tifffile.imread(data / "em_misc/n2v_sem_demo_test_input.tif")[:24, :24]
    water = tifffile.imread(data / "trackpy_bulk_water/bulk_water_first40.tif", key=range(4))[:, 100:132, 200:232]
    seeds = {
        "imagej_2d_u16.tif": (stardist, {"imagej": True, "metadata": {"axes": "YX"}}),
        "imagej_3d_u8.tif": (cylindra, {"imagej": True, "metadata": {"axes": "ZYX"}}),
        "ome_cyx_u8.ome.tif": (isbi, {"ome": True, "metadata": {"axes": "CYX",
                                                                  "Channel": {"Name": ["a", "b", "c"]}}}),
        "plain_f32.tif": (sem.astype(np.float32), {"metadata": None}),
        "zlib_tiled_u8.tif": (water, {"compression": "zlib", "tile": (16, 16), "metadata": {"axes": "TYX"}}),
        "zlib_predictor_u16.tif": (stardist, {"compression": "zlib", "predictor": True, "metadata": None}),
    }
    paths = []
    for name, (array, kw) in seeds.items():
        path = out / name
        tifffile.imwrite(path, array, photometric="minisblack", **kw)
        paths.append(path)
    return paths


def _ovule_crop(data: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(data / OVULE, "r") as f:
        return f["raw"][20:24, 50:66, 50:66], f["label"][20:24, 50:66, 50:66]


def _hdf5_seeds(data: Path, out: Path) -> list[Path]:
    raw, label = _ovule_crop(data)
    plain, packed = out / "ovule_plain.h5", out / "ovule_gzip.h5"
    with h5py.File(plain, "w") as f:
        f["raw"] = raw
        f["raw"].attrs["axes"] = "zyx"
        f["label"] = label.astype(np.uint16)
    with h5py.File(packed, "w") as f:
        f.create_dataset("raw", data=raw, chunks=(2, 8, 8), compression="gzip", shuffle=True)
    return [plain, packed]


def _zarr_seeds(data: Path, out: Path) -> list[Path]:
    import zarr

    raw, _ = _ovule_crop(data)
    from zarr.codecs import BloscCodec

    paths = []
    for fmt, name, compressors in ((3, "v3", "auto"), (2, "v2_blosc", "auto"), (3, "v3_blosc", BloscCodec())):
        path = out / f"ovule_{name}.zarr"
        group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
        arr = group.create_array("raw", shape=raw.shape, dtype=raw.dtype, chunks=(2, 8, 8), compressors=compressors)
        arr[...] = raw
        arr.attrs["axes"] = "zyx"
        paths.append(path)
    return paths


def _card_seeds(out: Path) -> list[Path]:
    """One card per family, as ``card_fields`` makes them, with export's halo, verification and precision."""
    from scopert.card import ModelCard
    from scopert.training.common.registry import get_family

    configs = {"rcan": {}, "blindspot": {}, "tagan": {}, "cnnt": {},
               "unet": {"name": "UNet3D", "in_channels": 1, "out_channels": 2, "f_maps": 8, "num_levels": 3}}
    paths = []
    for family, config in configs.items():
        fields = get_family(family).card_fields(config)
        spatial = "".join(a for a in fields["input"]["axes"] if a in "zyx")
        card = ModelCard.from_dict({
            "family": family, "name": f"{family}-fuzz-seed", **fields,
            "halo": {a: 8 for a in spatial},
            "source": {"path": f"/runs/{family}/best.pt", "sha256": "0" * 64, "format": "scopert-run"},
            "training_config": {"model": config, "epochs": 3},
            "precision": {"mode": "fp16-strongly-typed", "safety_factor": 4.0, "fp32_nodes": {"n1": "softmax"}},
            "verification": {"onnx_vs_torch": {"max_abs_error": 1.2e-6, "shapes": [[1, 1, 16, 64, 64]]}},
        })
        path = out / f"{family}.onnx.card.json"
        path.write_text(card.to_json())
        paths.append(path)
    return paths


def _config_seeds(data: Path, out: Path) -> dict[str, list[Path]]:
    raw, label = _ovule_crop(data)
    train_h5 = out / "unet_train.h5"
    with h5py.File(train_h5, "w") as f:
        f["raw"], f["label"] = raw, label
    rcan = {"training_data_dir": {"raw": "/data/Training/Raw", "gt": "/data/Training/GT"},
            "validation_image_pairs": [{"raw": "/data/Val/raw1.tif", "gt": "/data/Val/gt1.tif"}],
            "input_shape": [16, 128, 128], "num_residual_groups": 3, "epochs": 300, "steps_per_epoch": 256,
            "initial_learning_rate": 1e-4, "loss": "mae", "metrics": ["psnr", "ssim"], "intensity_threshold": 0.25,
            "area_ratio_threshold": 0.5, "data_augmentation": True}
    unet = {
        "manual_seed": 0,
        "model": {"name": "UNet3D", "in_channels": 1, "out_channels": 1, "layer_order": "gcr", "f_maps": 32,
                  "num_groups": 8, "final_sigmoid": True, "is_segmentation": True},
        "trainer": {"checkpoint_dir": "3dunet", "resume": None, "validate_after_iters": 1000,
                    "log_after_iters": 500, "max_num_epochs": 1000, "max_num_iterations": 150000,
                    "eval_score_higher_is_better": True},
        "optimizer": {"learning_rate": 0.0002, "weight_decay": 0.00001},
        "loss": {"name": "BCEDiceLoss", "alpha": 1.0, "beta": 1.0},
        "eval_metric": {"name": "BoundaryAdaptedRandError", "threshold": 0.4},
        "lr_scheduler": {"name": "ReduceLROnPlateau", "mode": "max", "factor": 0.5, "patience": 20},
        "loaders": {
            "dataset": "StandardHDF5Dataset", "batch_size": 1, "num_workers": 8, "raw_internal_path": "raw",
            "label_internal_path": "label",
            "train": {"file_paths": [str(train_h5)],
                      "slice_builder": {"name": "FilterSliceBuilder", "patch_shape": [80, 170, 170],
                                        "stride_shape": [20, 40, 40], "threshold": 0.6, "slack_acceptance": 0.01},
                      "transformer": {"raw": [{"name": "Standardize"}, {"name": "RandomFlip"},
                                              {"name": "ToTensor", "expand_dims": True}],
                                      "label": [{"name": "RandomFlip"}, {"name": "StandardLabelToBoundary",
                                                                          "append_label": False},
                                                {"name": "ToTensor", "expand_dims": False}]}},
            "val": {"file_paths": [str(train_h5)],
                    "slice_builder": {"name": "FilterSliceBuilder", "patch_shape": [80, 170, 170],
                                      "stride_shape": [80, 170, 170], "threshold": 0.6},
                    "transformer": {"raw": [{"name": "Standardize"}, {"name": "ToTensor", "expand_dims": True}],
                                    "label": [{"name": "StandardLabelToBoundary"},
                                              {"name": "ToTensor", "expand_dims": False}]}},
        },
    }
    tagan = {"dataroot": "/data/axons", "dataset_mode": "axons", "netG": "resnet_9blocks", "netS": "resnet_6blocks",
             "ngf": 64, "ndf": 64, "norm": "batch", "gan_mode": "vanilla", "lambda_GAN": 1.0, "lambda_seg": 10.0,
             "lr": 0.0002, "beta1": 0.5, "batch_size": 8, "crop_size": 128, "niter": 900, "niter_decay": 100,
             "preprocess": "crop_rotation", "seed": 0}
    shine = {"data_path": "frames", "model": "5x5_blind", "frame_num": 5, "filter": 64, "img_size": 128,
             "batch_size": 16, "lr": 0.0001, "epochs": 200, "loss": "L2", "resize": [256, 512]}
    cnnt_train = {"train_files": ["/data/train.h5"], "val_files": ["/data/val.h5"], "blocks": [32, 64, 96],
                  "blocks_per_set": 4, "n_head": 8, "norm_mode": "instance", "time": 16, "height": [128, 160],
                  "width": [128, 160], "im_value_scale": [0, 65536], "loss": ["mse", "ssim"],
                  "loss_weights": [0.1, 1.0], "global_lr": 0.0005, "num_epochs": 30, "batch_size": 8}
    cnnt_seed = {"blocks": [32, 64, 96], "blocks_per_set": 4, "n_head": 8, "kernel_size": 3, "stride": 1,
                 "padding": 1, "dropout_p": 0.1, "norm_mode": "instance", "with_mixer": 1, "use_conv_3D": False,
                 "no_residual": False, "time": 16, "height": [128, 160], "width": [128, 160],
                 "loss": ["mse", "ssim"], "loss_weights": [0.1, 1.0], "global_lr": 0.0005, "run_name": "cnnt"}
    files = {
        "rcan_config": [("rcan_config.json", rcan)],
        "unet_config": [("unet_train_config.yaml", unet)],
        "tagan_config": [("tagan_config.yaml", tagan), ("tagan_config.json", tagan)],
        "shine_config": [("shine_config.yaml", shine), ("shine_config.json", shine)],
        "cnnt_config": [("cnnt_train.json", cnnt_train)],
        "cnnt_seed_config": [("cnnt_seed.json", cnnt_seed)],
    }
    out_paths: dict[str, list[Path]] = {}
    for reader, entries in files.items():
        for name, doc in entries:
            path = out / name
            text = yaml.safe_dump(doc, sort_keys=False) if name.endswith(".yaml") else json.dumps(doc, indent=2)
            path.write_text(text)
            out_paths.setdefault(reader, []).append(path)
    return out_paths


def build_corpus(data_dir: Path, out_dir: Path) -> dict[str, list[Path]]:
    """Write every seed under ``out_dir``; return ``{reader: [seed paths]}``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = {
        "tiff": _tiff_seeds(data_dir, out_dir),
        "hdf5": _hdf5_seeds(data_dir, out_dir),
        "zarr": _zarr_seeds(data_dir, out_dir),
        "card": _card_seeds(out_dir),
    }
    corpus.update(_config_seeds(data_dir, out_dir))
    return corpus

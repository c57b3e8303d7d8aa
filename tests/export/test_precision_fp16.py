"""FP16 planned on the CPU: ranges on real tiles, FP32 islands with reasons, a strongly typed ONNX, its error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from scopert.card import ModelCard, Normalization, TensorSpec
from scopert.errors import ConfigError, InputError
from scopert.export.precision import convert_fp16, load_calibration

W2S = "w2s_8bit_pairs/w2s_avg1_noisy.tif"


def _overflow_model(path, scale=1000.0):
    """conv (weights 10) -> x1000 -> sum with itself -> x0.001: the middle reaches ~1e5 on [0,1] input."""
    w = np.full((2, 1, 3, 3), 10.0, np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(scale, np.float32), "k"),
             numpy_helper.from_array(np.array(1.0 / scale, np.float32), "inv"),
             numpy_helper.from_array(np.full((1, 2, 1, 1), 0.5, np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Mul", ["c", "k"], ["big"], name="scale_x1000"),
             helper.make_node("Add", ["big", "big"], ["sum"], name="sum"),
             helper.make_node("Mul", ["sum", "inv"], ["small"], name="scale_back"),
             helper.make_node("Mul", ["small", "w2"], ["m"], name="weigh"),
             helper.make_node("ReduceSum", ["m", "axes"], ["output"], keepdims=1, name="channel_sum")]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["b", 1, "y", "x"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(family="test", name="overflow", input=TensorSpec("input", "bcyx"),
                     output=TensorSpec("output", "bcyx"), normalization=Normalization(kind="percentile"))
    card.embed(model)
    onnx.save(model, str(path))


def test_overflowing_intermediate_stays_fp32_and_output_is_finite(tmp_path, data_dir):
    src = tmp_path / "overflow.onnx"
    _overflow_model(src)
    res = convert_fp16(src, tmp_path / "overflow.fp16.onnx", [data_dir / W2S], tiles=3, safety_factor=4)
    fp32 = res.plan.fp32_nodes
    assert {"scale_x1000", "sum", "scale_back"} <= set(fp32) and fp32["sum"].startswith("range: max|sum|")
    assert res.plan.ranges["sum"].max_abs > 65504  # measured on real tiles: it would overflow in FP16
    assert "conv" in res.plan.fp16_nodes and "weigh" in res.plan.fp16_nodes
    assert fp32["channel_sum"].startswith("reduction")
    assert res.report.nonfinite_fp16 == 0 and res.report.emulated_overflow == 0 and res.report.psnr_db >= 50
    half = res.report.torch_half  # FP16 storage of every FP16 tensor, evaluated in torch
    assert half.ran and half.nonfinite == 0 and half.psnr_db >= 50
    model = onnx.load(str(res.path))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) >= 3
    x = load_calibration(res.card, [data_dir / W2S], tiles=1)
    out = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.all(np.isfinite(out))
    assert res.card.precision["fp32_island_count"] == len(res.plan.islands) == 2
    print(f"\noverflow net: FP32 islands {res.plan.islands}, PSNR {res.report.psnr_db:.1f} dB")


def test_without_the_range_rule_the_emulation_predicts_inf(tmp_path, data_dir):
    from scopert.export.precision import measure_ranges, plan_precision, predict_fp16_error, to_fp16_graph

    src = tmp_path / "overflow.onnx"
    _overflow_model(src)
    res = convert_fp16(src, tmp_path / "o16.onnx", [data_dir / W2S], tiles=2)
    model = onnx.load(str(src))
    tiles = load_calibration(res.card, [data_dir / W2S], tiles=2)
    ranges, last = measure_ranges(model, tiles, "input")
    plan = plan_precision(model, ranges, safety_factor=4)
    for name in ("scale_x1000", "sum", "scale_back"):  # force the unsafe nodes into FP16
        del plan.fp32_nodes[name]
        plan.fp16_nodes.append(name)
    report = predict_fp16_error(model, to_fp16_graph(model, plan), tiles, "input", plan, last)
    assert report.emulated_overflow > 0 and "sum" in report.emulated_overflow_tensors
    assert report.torch_half.ran and report.torch_half.nonfinite > 0  # torch float16 overflows where a GPU would
    assert report.nonfinite_fp16 == 0  # while ORT CPU, computing FP16 nodes in FP32, hides it
    with pytest.raises(ConfigError, match="safety factor must be >= 1"):
        convert_fp16(src, tmp_path / "o16b.onnx", [data_dir / W2S], tiles=1, safety_factor=0.5)


def test_bad_calibration_data_is_a_clear_error(tmp_path, data_dir):
    from tests.runtime.graphs import conv_stack

    card3d = conv_stack(tmp_path / "m3.onnx", ndim=3, normalization=Normalization(kind="percentile"))
    with pytest.raises(InputError, match=r"shape \(512, 512\) \(2 axes\).*'bczyx' needs arrays with axes 'zyx'"):
        load_calibration(card3d, [data_dir / "stardist_nuclei_2d/stardist_dsb2018_img2d.tif"])
    np.save(tmp_path / "two_channels.npy", np.zeros((2, 8, 64, 64), np.float32))
    with pytest.raises(InputError, match="2 channels"):
        load_calibration(card3d, [tmp_path / "two_channels.npy"])
    with pytest.raises(ConfigError, match="no calibration data.*--calib"):
        load_calibration(card3d, None)
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(card3d, [tmp_path / "missing.tif"])
    # un-normalized raw counts never reach the FP16 path
    card_raw = conv_stack(tmp_path / "raw.onnx", ndim=2, normalization=Normalization(kind="none"))
    with pytest.raises(InputError, match="raw counts must not reach an FP16 graph. Normalize"):
        load_calibration(card_raw, [data_dir / "convallaria_pn2v/convallaria_pn2v_frame0000.tif"])
    np.save(tmp_path / "counts.npy", np.full((1, 1, 64, 64), 60000, np.float32))
    with pytest.raises(InputError, match="raw counts"):
        convert_fp16(tmp_path / "raw.onnx", tmp_path / "raw16.onnx",
                     calib_tiles=np.full((1, 1, 64, 64), 60000, np.float32))


# ---- every family: export_run, then FP16 on real tiles ------------------------------------------------
FAMILIES = {
    "rcan3d": ("rcan", {"ndim": 3, "num_channels": 4, "num_residual_groups": 1, "num_residual_blocks": 2,
                        "channel_reduction": 2}, W2S),
    "rcan2d": ("rcan", {"ndim": 2, "num_channels": 4, "num_residual_groups": 1, "num_residual_blocks": 2,
                        "channel_reduction": 2}, W2S),
    "unet2d": ("unet", dict(name="UNet2D", in_channels=1, out_channels=2, f_maps=8, num_groups=4,
                            final_sigmoid=False), "stardist_nuclei_2d/stardist_dsb2018_img2d.tif"),
    "blindspot": ("blindspot", {"name": "3x3_blind", "frame_num": 3, "filter": 8},
                  "isbi2012_em/isbi2012_train_volume.tif"),
    "tagan": ("tagan", {"arch": "resnet_6blocks", "ngf": 8}, "stardist_nuclei_2d/stardist_dsb2018_img2d.tif"),
    "cnnt": ("cnnt", {"blocks": [8, 16], "blocks_per_set": 1, "n_head": 4, "height": 32, "width": 32, "time": 4},
             "trackpy_bulk_water/bulk_water_first40.tif"),
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FAMILIES))
def test_every_family_fp16_on_real_tiles(key, tmp_path, data_dir):
    from scopert.export import export_run
    from tests.export.test_onnx_export import make_run

    family, cfg, calib = FAMILIES[key]
    info = make_run(tmp_path / "run", family, cfg)
    export_run(info.folder, tmp_path / f"{key}.onnx")
    res = convert_fp16(tmp_path / f"{key}.onnx", tmp_path / f"{key}.fp16.onnx", [data_dir / calib], tiles=2)
    onnx.checker.check_model(onnx.load(str(res.path)), full_check=True)
    assert res.report.psnr_db >= 50 and res.report.nonfinite_fp16 == 0 and res.report.emulated_overflow == 0
    half = res.report.torch_half
    assert half.ran and half.nonfinite == 0 and half.psnr_db >= 50, half
    reasons = " ".join(res.plan.fp32_nodes.values())
    if key == "rcan3d":
        assert "GlobalAveragePool" in reasons  # 3D channel-attention pooling is an FP32 island
    if key == "cnnt":
        assert "softmax" in reasons and "attention logits" in reasons and "attention weights" in reasons
    print(f"\n| {key} | fp16 nodes {len(res.plan.fp16_nodes)} | fp32 islands {len(res.plan.islands)} | "
          f"PSNR {res.report.psnr_db:.1f} dB | max err {res.report.max_abs_error:.2g} | NaN/Inf "
          f"{res.report.nonfinite_fp16} | torch float16 {half.tile_shape}: PSNR {half.psnr_db:.1f} dB, max err "
          f"{half.max_abs_error:.2g} |")

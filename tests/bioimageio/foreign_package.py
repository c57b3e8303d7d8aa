"""Packages that ScopeRT did not write: built with bioimageio.spec's own API, the way its example notebook
builds one (a torch architecture file + state dict, torchscript as a child format, preprocessing, halo,
postprocessing), validated by bioimageio.core's test_model before they are used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.bioimageio.tiny_arch import TinyNet

ARCH_FILE = Path(__file__).with_name("tiny_arch.py")


def build(folder: Path, raw_tile: np.ndarray, kind: str = "zmuv_sigmoid", seed: int = 0) -> Path:
    """Write ``folder/<kind>.zip``. ``raw_tile``: a real 2D image (y, x).

    kinds: ``zmuv_sigmoid``: zero_mean_unit_variance over the image, halo 8, min 32 step 8, sigmoid
    postprocessing, pytorch_state_dict + torchscript. ``careamics_like``: fixed sizes, no halo,
    fixed_zero_mean_unit_variance along channel before and its inverse (scale_linear along channel) after,
    torchscript weights only (as a CAREamics export carries a mean/std normalization around the net).
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = TinyNet(8).eval()
    state = folder / "weights.pt"
    torch.save(net.state_dict(), state)
    x = raw_tile.astype(np.float32)[np.newaxis, np.newaxis]
    if kind == "zmuv_sigmoid":
        norm = (x - x.mean()) / (x.std() + 1e-6)
    else:
        mean, std = float(raw_tile.mean()), float(raw_tile.std())
        norm = (x - mean) / (std + 1e-6)
    with torch.no_grad():
        y = net(torch.from_numpy(norm.astype(np.float32))).numpy()
    ts = folder / "weights.torchscript.pt"
    torch.jit.trace(net, torch.from_numpy(norm.astype(np.float32))).save(str(ts))
    if kind == "zmuv_sigmoid":
        y = 1 / (1 + np.exp(-y))
    else:
        y = y * (std + 1e-6) + mean  # the inverse normalization as a fixed step
    np.save(folder / "in.npy", x)
    np.save(folder / "out.npy", y.astype(np.float32))
    (folder / "README.md").write_text("# Tiny net\n\nA test package written with bioimageio.spec.\n\n"
                                      "# Validation\n\nbioimageio.core test_model.\n")
    doc = bio.FileDescr(source=folder / "README.md")
    if kind == "zmuv_sigmoid":
        size: object = bio.ParameterizedSize(min=32, step=8)
        in_axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=["raw"]),
                   bio.SpaceInputAxis(id=bio.AxisId("y"), size=size),
                   bio.SpaceInputAxis(id=bio.AxisId("x"), size=size)]
        out_axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=["probability"])] + [
            bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), halo=8,
                                        size=bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(a)))
            for a in "yx"]
        pre = [bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(
            axes=[bio.AxisId("channel"), bio.AxisId("y"), bio.AxisId("x")]))]
        post = [bio.SigmoidDescr()]
    else:
        ny, nx = raw_tile.shape
        in_axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=["raw"]),
                   bio.SpaceInputAxis(id=bio.AxisId("y"), size=ny), bio.SpaceInputAxis(id=bio.AxisId("x"), size=nx)]
        out_axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=["denoised"]),
                    bio.SpaceOutputAxis(id=bio.AxisId("y"), size=ny), bio.SpaceOutputAxis(id=bio.AxisId("x"), size=nx)]
        pre = [bio.FixedZeroMeanUnitVarianceDescr(kwargs=bio.FixedZeroMeanUnitVarianceAlongAxisKwargs(
            axis=bio.AxisId("channel"), mean=[mean], std=[std]))]
        post = [bio.ScaleLinearDescr(kwargs=bio.ScaleLinearAlongAxisKwargs(
            axis=bio.AxisId("channel"), gain=[std + 1e-6], offset=[mean]))]
    inp = bio.InputTensorDescr(id=bio.TensorId("raw"), axes=in_axes, preprocessing=pre,
                               test_tensor=bio.FileDescr(source=folder / "in.npy"))
    out = bio.OutputTensorDescr(id=bio.TensorId("prediction"), axes=out_axes, postprocessing=post,
                                test_tensor=bio.FileDescr(source=folder / "out.npy"))
    version = bio.Version(torch.__version__.split("+")[0])
    torchscript = bio.TorchscriptWeightsDescr(source=ts, pytorch_version=version,
                                              parent="pytorch_state_dict" if kind == "zmuv_sigmoid" else None)
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=state, pytorch_version=version,
            architecture=bio.ArchitectureFromFileDescr(source=ARCH_FILE, callable="TinyNet", kwargs={"features": 8}),
        ) if kind == "zmuv_sigmoid" else None,
        torchscript=torchscript)
    descr = bio.ModelDescr(
        name=f"Tiny net {kind.replace('_', ' ')}", description="A test model built with bioimageio.spec.",
        authors=[bio.Author(name="Test Author")], cite=[bio.CiteEntry(text="Test", url="https://bioimage.io")],
        license=bio.LicenseId("MIT"), documentation=doc, inputs=[inp], outputs=[out], weights=weights)
    return save_bioimageio_package(descr, output_path=folder / f"{kind}.zip")

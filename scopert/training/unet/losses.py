"""pytorch-3dunet's losses and evaluation metrics for the ``unet`` family, by their YAML names.

Every function takes the network's logits ``pred`` (B, C, ...), the target (B, Ct, ...) and an optional per-voxel
weight. Segmentation losses and metrics apply the final activation themselves (Sigmoid, or Softmax over channels
when ``final_sigmoid`` is false), as the seed's trainer does before its eval metric.

Losses: BCEWithLogitsLoss, DiceLoss (1 - mean per-channel Dice, denominator sum p^2 + sum t^2), BCEDiceLoss
(alpha * BCE + beta * Dice), CrossEntropyLoss (target = class ids in channel 0; optional class ``weight`` and
``ignore_index``), PixelWiseCrossEntropyLoss (mean(-w * onehot(t) * log_softmax(x)), class weights default 1),
MSELoss, L1Loss, SmoothL1Loss.
Metrics (higher is better): MeanIoU (argmax one-hot for several channels, p > 0.5 for one; channels without
ground truth skipped), DiceCoefficient (soft, per channel, averaged), PSNR (data range of the target).

Imports torch only; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from scopert.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
EPS = 1e-6

LOSS_NAMES = ("BCEWithLogitsLoss", "DiceLoss", "BCEDiceLoss", "CrossEntropyLoss", "PixelWiseCrossEntropyLoss",
              "MSELoss", "L1Loss", "SmoothL1Loss")
METRIC_NAMES = ("MeanIoU", "DiceCoefficient", "PSNR")
# Keys each loss accepts in the YAML's loss: section (besides name).
LOSS_KEYS = {
    "BCEWithLogitsLoss": ("pos_weight",), "DiceLoss": ("normalization", "weight", "sigmoid_normalization"),
    "BCEDiceLoss": ("alpha", "beta"), "CrossEntropyLoss": ("weight", "ignore_index"),
    "PixelWiseCrossEntropyLoss": ("class_weights", "ignore_index"), "MSELoss": (), "L1Loss": (),
    "SmoothL1Loss": ("beta",),
}
COMMON_LOSS_KEYS = ("name", "ignore_index", "skip_last_target")
METRIC_KEYS = ("name", "ignore_index", "skip_channels", "use_last_target", "use_first_input")


def activate(pred: torch.Tensor, final_sigmoid: bool) -> torch.Tensor:
    return torch.sigmoid(pred) if final_sigmoid or pred.shape[1] == 1 else torch.softmax(pred, dim=1)


def one_hot_like(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Class-id targets (B, 1, ...) expanded to (B, C, ...) when ``pred`` has more channels; else as is."""
    if target.shape[1] == pred.shape[1]:
        return target.float()
    ids = target[:, 0].long().clamp(0, pred.shape[1] - 1)
    return F.one_hot(ids, pred.shape[1]).movedim(-1, 1).float()


def per_channel_dice(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Dice per channel over batch and space: 2 sum(p t) / (sum p^2 + sum t^2)."""
    p = prob.transpose(0, 1).flatten(1)
    t = target.transpose(0, 1).flatten(1).float()
    inter = (p * t).sum(-1)
    if weight is not None:
        inter = weight * inter
    denom = (p * p).sum(-1) + (t * t).sum(-1)
    return 2 * inter / denom.clamp(min=EPS)


def _cross_entropy_target(target: torch.Tensor) -> torch.Tensor:
    return target[:, 0].long() if target.dim() >= 3 else target.long()


def build_loss(spec: dict[str, Any], final_sigmoid: bool, where: str = "loss") -> LossFn:
    """The loss named by ``spec['name']``; unknown names and unknown keys are refused by name."""
    name = spec.get("name")
    if name not in LOSS_NAMES:
        raise ConfigError(f"{where}: unknown loss {name!r}; use one of {', '.join(LOSS_NAMES)}.")
    extra = sorted(set(spec) - set(COMMON_LOSS_KEYS) - set(LOSS_KEYS[name]))
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} for {name}; it takes "
                          f"{', '.join(LOSS_KEYS[name]) or 'no options'}.")
    ignore_index = spec.get("ignore_index")

    def dice(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        norm = spec.get("normalization", "sigmoid" if spec.get("sigmoid_normalization", final_sigmoid) else "softmax")
        prob = torch.sigmoid(pred) if norm == "sigmoid" else torch.softmax(pred, 1) if norm == "softmax" else pred
        cw = spec.get("weight")
        cw_t = None if cw is None else torch.as_tensor(cw, dtype=pred.dtype, device=pred.device)
        return 1.0 - per_channel_dice(prob, one_hot_like(target, pred), cw_t).mean()

    def bce(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        pw = spec.get("pos_weight")
        pw_t = None if pw is None else torch.as_tensor(pw, dtype=pred.dtype, device=pred.device)
        return F.binary_cross_entropy_with_logits(pred, target.float(), pos_weight=pw_t)

    def bce_dice(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        return float(spec.get("alpha", 1.0)) * bce(pred, target) + float(spec.get("beta", 1.0)) * dice(pred, target)

    def cross_entropy(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        cw = spec.get("weight")
        cw_t = None if cw is None else torch.as_tensor(cw, dtype=pred.dtype, device=pred.device)
        return F.cross_entropy(pred, _cross_entropy_target(target), weight=cw_t,
                               ignore_index=-100 if ignore_index is None else int(ignore_index))

    def pixelwise_ce(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        if w is None:
            raise ConfigError("PixelWiseCrossEntropyLoss needs per-voxel weights: set loaders.weight_internal_path "
                              "and give every HDF5 file a weight dataset.")
        onehot = one_hot_like(target, pred)
        log_p = F.log_softmax(pred, dim=1)
        cw = spec.get("class_weights")
        cls = torch.ones(pred.shape[1], dtype=pred.dtype, device=pred.device) if cw is None else \
            torch.as_tensor(cw, dtype=pred.dtype, device=pred.device)
        cls = cls.view(1, -1, *([1] * (pred.dim() - 2)))
        weights = w if w.shape[1] == pred.shape[1] else w.expand_as(pred)
        if ignore_index is not None:
            keep = (target[:, :1] != ignore_index).float()
            weights = weights * keep
        return (-weights * cls * onehot * log_p).mean()

    regression = {"MSELoss": F.mse_loss, "L1Loss": F.l1_loss}

    def reg(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        if name == "SmoothL1Loss":
            return F.smooth_l1_loss(pred, target.float(), beta=float(spec.get("beta", 1.0)))
        return regression[name](pred, target.float())

    table = {"BCEWithLogitsLoss": bce, "DiceLoss": dice, "BCEDiceLoss": bce_dice, "CrossEntropyLoss": cross_entropy,
             "PixelWiseCrossEntropyLoss": pixelwise_ce}
    return table.get(name, reg)


# ---- metrics (higher is better) -------------------------------------------------------------------------------


def mean_iou(pred: torch.Tensor, target: torch.Tensor, final_sigmoid: bool = True,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean IoU over channels with ground truth (weighted by ``weight`` when given), per sample, then averaged."""
    prob = activate(pred, final_sigmoid)
    if prob.shape[1] == 1:
        binary = (prob > 0.5).float()
    else:
        binary = F.one_hot(prob.argmax(1), prob.shape[1]).movedim(-1, 1).float()
    truth = one_hot_like(target, pred) if target.shape[1] != pred.shape[1] else (target > 0.5).float()
    w = torch.ones_like(binary) if weight is None else weight.expand_as(binary).float()
    scores = []
    for b in range(binary.shape[0]):
        per = []
        for c in range(binary.shape[1]):
            t = truth[b, c]
            if t.sum() == 0:
                continue
            p, wc = binary[b, c], w[b, c]
            inter = (wc * p * t).sum()
            union = (wc * ((p + t) > 0).float()).sum()
            per.append(inter / union.clamp(min=1e-8))
        if per:
            scores.append(torch.stack(per).mean())
    return torch.stack(scores).mean() if scores else torch.zeros((), device=pred.device)


def dice_coefficient(pred: torch.Tensor, target: torch.Tensor, final_sigmoid: bool = True,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice per channel, averaged (the seed's DiceCoefficient)."""
    return per_channel_dice(activate(pred, final_sigmoid), one_hot_like(target, pred)).mean()


def psnr(pred: torch.Tensor, target: torch.Tensor, final_sigmoid: bool = True,
         weight: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB with the target's value range as the peak (regression nets: the raw output)."""
    target = target.float()
    rng = (target.max() - target.min()).clamp(min=EPS)
    mse = F.mse_loss(pred, target).clamp(min=1e-12)
    return 10.0 * torch.log10(rng * rng / mse)


def build_metric(spec: dict[str, Any], final_sigmoid: bool, is_segmentation: bool = True,
                 where: str = "eval_metric") -> Callable[..., torch.Tensor]:
    """The eval metric named by ``spec['name']`` as ``fn(pred_logits, target, weight=None)``."""
    name = spec.get("name")
    if name not in METRIC_NAMES:
        raise ConfigError(f"{where}: unknown eval metric {name!r}; use one of {', '.join(METRIC_NAMES)}.")
    extra = sorted(set(spec) - set(METRIC_KEYS))
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} for {name}.")
    fn = {"MeanIoU": mean_iou, "DiceCoefficient": dice_coefficient, "PSNR": psnr}[name]

    def metric(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return fn(pred, target, final_sigmoid, weight)

    return metric

"""The structural halo that SHINE declares to export (in place of the slow probe) is the measured receptive field.

Export's impulse probe runs on a cheap copy of the architecture (filter 4, 5 frames; the support of the gradient does
not depend on the weights), with divisor 8, the network's period (three 2x poolings), so every output phase is seen.
"""

from __future__ import annotations

import pytest
import torch

from scopert.export.receptive_field import declared_receptive_field, measure_receptive_field
from scopert.errors import ConfigError
from scopert.training.blindspot.model import STRUCTURAL_HALO, SHINEExport, build_model


@pytest.mark.slow
def test_declared_halo_equals_the_probe_for_3x3_blind():
    torch.manual_seed(0)
    module = SHINEExport(build_model({"name": "3x3_blind", "frame_num": 5, "filter": 4})).eval()
    rf = measure_receptive_field(module, (1, 5, 8, 8), "btyx", output_axes="bcyx", divisor={"y": 8, "x": 8},
                                 max_length=1024, max_voxels=1 << 17)
    assert not rf.global_dependency
    assert rf.halo == {"y": STRUCTURAL_HALO[1], "x": STRUCTURAL_HALO[1]} == module.halo_hint


def test_declared_halo_is_checked():
    rf = declared_receptive_field({"y": 161, "x": 161}, "btyx")
    assert rf.halo == {"y": 161, "x": 161} and rf.tile_invariant and rf.to_dict()["method"] == "declared"
    with pytest.raises(ConfigError, match="one radius per tiled axis"):
        declared_receptive_field({"y": 161}, "btyx")
    with pytest.raises(ConfigError, match="integer >= 0"):
        declared_receptive_field({"y": -1, "x": 3}, "btyx")
    hints = {n: SHINEExport(build_model({"name": n, "frame_num": 1, "filter": 4})).halo_hint["y"]
             for n in ("1x1_blind", "3x3_blind", "5x5_blind", "9x9_blind")}
    assert hints == {"1x1_blind": 160, "3x3_blind": 161, "5x5_blind": 162, "9x9_blind": 164}
    assert SHINEExport(build_model({"name": "11x11_blind", "frame_num": 1, "filter": 4})).halo_hint is None

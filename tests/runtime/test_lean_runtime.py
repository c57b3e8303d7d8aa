"""scopert.runtime imports and runs with torch and onnx made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.runtime.graphs import conv_stack


def test_runtime_runs_without_torch_and_onnx(tmp_path):
    path = tmp_path / "m.onnx"
    conv_stack(path, ndim=3, layers=2)
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'onnx', 'torchvision'):
                    raise ImportError('blocked for the lean-runtime test: ' + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from scopert.runtime import load
        from scopert.runtime.apply import apply_file
        m = load({str(path)!r})
        out = m.predict(np.random.default_rng(0).random((10, 40, 40)).astype(np.float32), tile=(8, 16, 16))
        assert out.shape == (10, 40, 40), out.shape
        banned = [k for k in sys.modules if k.split('.')[0] in ('torch', 'onnx') or k.startswith(('scopert.training', 'scopert.export'))]
        assert not banned, banned
        print('lean ok')
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "lean ok" in res.stdout

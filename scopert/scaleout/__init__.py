"""Scale-out of ``scopert apply`` on Dask distributed: one big volume in blocks, or a folder of files.

The runtime knows nothing of Dask: this package plans blocks with halos (``blocks``), keeps a ledger of finished
blocks for ``--resume`` (``ledger``), opens a cluster from a ``--cluster`` spec (``cluster``), runs the same
tiled ``Model.predict_to`` per block on the workers (``tasks``) and drives a run from the client (``volume``,
``files``). Dask and distributed are imported only inside the functions that need them, so importing this
package (or ``scopert --help``) never imports Dask. Never imports torch or onnx.
"""

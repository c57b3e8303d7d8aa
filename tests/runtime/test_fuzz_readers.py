"""Fuzzed readers: mutated and truncated real files end in a result or a ScopertError, never anything else.

200 cases per reader run in this process under a watchdog (``faulthandler`` ends a hung run with a
traceback); ``benchmarks/fuzz_readers.py`` runs 2,000 per reader in child processes, where a segfault is
counted too. Below the loop: one regression test per bug the fuzzer found, each on the file that
triggered it (and, where the library still fails the same way, proof that it does).
"""

from __future__ import annotations

import collections
import faulthandler
import json
import struct

import h5py
import numpy as np
import pytest
import tifffile

from scopert.card import ModelCard, read_sidecar
from scopert.errors import CardError, ConfigError, InputError
from scopert.runtime.io import check_array, read_image
from scopert.runtime.io import image as image_module
from tests.fuzz.corpus import build_corpus
from tests.fuzz.targets import READERS, _mutate_zarr, case_rng, classify, make_case, run_case

CASES = 200
HANG_SECONDS = 10.0
WATCHDOG_SECONDS = 120  # a case stuck this long ends the test run with every thread's traceback


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir):
    return build_corpus(data_dir, tmp_path_factory.mktemp("fuzz-corpus"))


def test_every_seed_reads(corpus):
    """The mutations start from files the readers accept (otherwise the fuzzer tests nothing)."""
    for reader, seeds in corpus.items():
        for seed in seeds:
            outcome = classify(reader, -1, seed)
            assert outcome.outcome == "ok", (reader, seed.name, outcome.error)


def test_a_case_is_the_same_whatever_ran_before(corpus, tmp_path):
    """Case i is rebuilt from (reader, i) alone, so a reported case can be replayed (a mutation once edited a
    shared constant in place, which leaked into later cases)."""
    for reader in ("card", "unet_config", "zarr"):
        first = make_case(reader, 7, corpus[reader], (tmp_path / f"{reader}-a").resolve())
        before = sorted((p.relative_to(first).as_posix() if first.is_dir() else "", p.read_bytes())
                        for p in ([first] if first.is_file() else first.rglob("*")) if p.is_file())
        for index in range(40):
            make_case(reader, index, corpus[reader], tmp_path / f"{reader}-{index}")
        again = make_case(reader, 7, corpus[reader], (tmp_path / f"{reader}-b").resolve())
        after = sorted((p.relative_to(again).as_posix() if again.is_dir() else "", p.read_bytes())
                       for p in ([again] if again.is_file() else again.rglob("*")) if p.is_file())
        assert before == after, reader


@pytest.mark.parametrize("reader", list(READERS))
def test_fuzzed_reader_ends_in_result_or_scopert_error(reader, corpus, tmp_path):
    counts: collections.Counter = collections.Counter()
    bugs, slow = [], []
    for index in range(CASES):
        faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
        try:
            outcome = run_case(reader, index, corpus[reader], tmp_path / "case")
        finally:
            faulthandler.cancel_dump_traceback_later()
        counts[outcome.outcome] += 1
        if outcome.outcome == "bug":
            bugs.append(f"case {index}: {outcome.error}\n{outcome.trace}")
        if outcome.seconds > HANG_SECONDS:
            slow.append((index, round(outcome.seconds, 1)))
    assert not bugs, f"{len(bugs)} of {CASES} {reader} cases raised a non-ScopeRT exception:\n" + "\n".join(bugs[:3])
    assert not slow, f"{reader} cases over {HANG_SECONDS} s: {slow}"
    assert counts["ok"] + counts["scopert"] == CASES
    # the mutations reach the checks: most cases are refused, and some still read
    assert counts["scopert"] >= CASES // 2 and counts["ok"] >= 1, dict(counts)


# ------------------------------------------------------------------ regressions: TIFF, HDF5, Zarr


def _tifffile_reads(path):
    with tifffile.TiffFile(path) as tif:
        len(tif.pages)
        tif.series[0].asarray()


@pytest.mark.parametrize("index, library_error", [
    (4, RuntimeError),  # 'incompatible keyframe'
    (73, struct.error),  # 'unpack requires a buffer of 2 bytes'
    (118, AssertionError),
    (194, ZeroDivisionError),  # OME series of a damaged IFD
    (201, TypeError),  # "'>' not supported between instances of 'bytes' and 'int'"
])
def test_tifffile_parser_failures_are_input_errors(corpus, tmp_path, index, library_error):
    case = make_case("tiff", index, corpus["tiff"], tmp_path)
    with pytest.raises(library_error):  # tifffile itself fails this way on the case
        _tifffile_reads(case)
    with pytest.raises(InputError, match="truncated or corrupt") as err:
        READERS["tiff"].read(case)
    assert str(case) in str(err.value)


def _huge_compressed_tiff(path, side):
    """A real 16x16 zlib TIFF whose ImageWidth, ImageLength and RowsPerStrip are rewritten to ``side``."""
    tifffile.imwrite(path, np.arange(256, dtype=np.uint16).reshape(16, 16), compression="zlib", metadata=None,
                     rowsperstrip=16)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        entries = [tif.pages[0].tags[code].valueoffset for code in (256, 257, 278)]
    for value_at in entries:  # an IFD entry: code(2) type(2) count(4) value(4); make each a LONG
        data[value_at - 6:value_at - 4] = struct.pack("<H", 4)
        data[value_at:value_at + 4] = struct.pack("<I", side)
    path.write_bytes(bytes(data))
    return path


def test_tiff_header_claiming_absurd_size_is_refused_before_decoding(tmp_path):
    path = _huge_compressed_tiff(tmp_path / "huge.tif", 2**19)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].shape == (2**19, 2**19) and tif.series[0].nbytes == 2**39  # 512 GiB claimed
    with pytest.raises(InputError, match=r"huge\.tif needs 512\.0 GiB in memory"):
        read_image(path)
    from scopert.runtime.io.tiff import TiffSlabReader

    with TiffSlabReader(path) as reader, pytest.raises(InputError, match="512.0 GiB"):
        reader.read(0, 1)


def test_memory_guard_names_the_file_for_hdf5_and_zarr(tmp_path, monkeypatch):
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = data
    import zarr

    zarr.open_group(str(tmp_path / "v.zarr"), mode="w").create_array("raw", data=data)
    for name in ("v.h5", "v.zarr"):
        with read_image(tmp_path / name) as image:
            np.testing.assert_array_equal(np.asarray(image.array), data)  # fits: read as before
            monkeypatch.setattr(image_module, "available_memory", lambda: data.nbytes - 1)
            with pytest.raises(InputError, match=rf"{name}:/?raw needs 0\.0 GiB in memory"):
                np.asarray(image.array)
            np.testing.assert_array_equal(image.array[1:2], data[1:2])  # slabs still read
            monkeypatch.undo()


@pytest.mark.parametrize("index, library_error, stage", [
    (1, OSError, "read"),  # "Can't synchronously read data (filter returned failure during read)"
    (53, RuntimeError, "list"),  # 'Object visitation failed (bad local heap signature)'
])
def test_damaged_hdf5_is_input_error(corpus, tmp_path, index, library_error, stage):
    case = make_case("hdf5", index, corpus["hdf5"], tmp_path)
    with h5py.File(case, "r") as f, pytest.raises(library_error):  # h5py itself fails this way
        if stage == "read":
            np.asarray(f["raw"])
        else:
            f.visititems(lambda name, obj: None)
    with pytest.raises(InputError, match="truncated or corrupt") as err:
        with read_image(case) as image:
            check_array(np.asarray(image.array))
    assert str(case) in str(err.value)


def test_hdf5_axes_attribute_claiming_4_gib_is_refused_without_reading_it(corpus, tmp_path):
    """Fuzz case hdf5 1106: HDF5 allocated and touched 4 GiB for ~9 s before noticing the length was wrong."""
    case = make_case("hdf5", 1106, corpus["hdf5"], tmp_path)
    with h5py.File(case, "r") as f:
        from scopert.runtime.io.hdf5 import _claimed_vlen_length

        assert _claimed_vlen_length(f["raw"], case) == 0xFF000003
    with pytest.raises(InputError, match=r"axes attribute that claims 4278190083 bytes in a file of \d+"):
        read_image(case)
    with h5py.File(tmp_path / "intact.h5", "w", libver="latest") as f:  # v3 attribute messages are found too
        f["raw"] = np.zeros((2, 3, 4), np.uint8)
        f["raw"].attrs["axes"] = "zyx"
    with h5py.File(tmp_path / "intact.h5", "r") as f:
        assert _claimed_vlen_length(f["raw"], tmp_path / "intact.h5") == 3
    assert read_image(tmp_path / "intact.h5").axes == "zyx"


def test_blosc_chunk_with_a_lying_header_is_refused_before_it_crashes(corpus, tmp_path):
    """Fuzz case zarr 2693 (seed v2 + Blosc): numcodecs trusted the chunk header and segfaulted the process."""
    seed = next(p for p in corpus["zarr"] if p.name == "ovule_v2_blosc.zarr")
    case = tmp_path / "crash.zarr"
    _mutate_zarr(seed, case, case_rng("zarr", 2693))
    header = (case / "raw" / "0.0.1").read_bytes()[:16]
    assert struct.unpack("<I", header[12:16])[0] == 0x121200A7  # claims 303 MB, the file has 231 bytes
    with read_image(case) as image:  # opening reads no chunk; the first read that touches it checks the header
        np.asarray(image.array[:1, :8, :8])  # an intact chunk
        with pytest.raises(InputError, match=r"chunk '0\.0\.1' is damaged \(its header claims 303169703 compress"):
            np.asarray(image.array)


def test_damaged_zarr_chunk_is_input_error_when_read(corpus, tmp_path):
    """zstd and Blosc raised RuntimeError from np.asarray(image.array); the GuardedArray names the store."""
    import shutil

    import zarr

    seed = next(p for p in corpus["zarr"] if p.name == "ovule_v3.zarr")
    case = tmp_path / "cut.zarr"
    shutil.copytree(seed, case)
    chunk = case / "raw" / "c" / "0" / "0" / "1"
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(RuntimeError):  # numcodecs' zstd itself
        np.asarray(zarr.open(str(case), mode="r")["raw"])
    with read_image(case) as image:
        np.testing.assert_array_equal(image.array[1:2, :8, :8] > 0, True)  # intact chunks still read
        with pytest.raises(InputError, match=r"cut\.zarr:raw cannot be read \(RuntimeError: .*damaged or incomplete"):
            np.asarray(image.array)


def test_intact_blosc_stores_still_read(corpus):
    for seed in corpus["zarr"]:
        with read_image(seed) as image:
            assert image.shape == (4, 16, 16) and image.axes == "zyx"
            assert int(np.asarray(image.array).sum()) > 0


def test_damaged_zarr_metadata_is_input_error(corpus, tmp_path):
    import shutil

    seed = next(p for p in corpus["zarr"] if p.name == "ovule_v3.zarr")
    # were UnicodeDecodeError, JSONDecodeError and ValueError from zarr
    for n, (name, text) in enumerate((("raw/zarr.json", b"\xff\xfe{"), ("zarr.json", b'{"zarr_format": 3, "node_ty'),
                                      ("zarr.json", b'{"zarr_format": 4, "node_type": "group"}'))):
        case = tmp_path / f"c{n}.zarr"
        shutil.copytree(seed, case)
        (case / name).write_bytes(text)
        with pytest.raises(InputError, match=rf"c{n}\.zarr cannot be opened as Zarr \((UnicodeDecode|JSONDecode|ValueError)"):
            read_image(case)


# --------------------------------------------------------------------------------- regressions: card


def _seed_card(corpus) -> dict:
    return json.loads(next(p for p in corpus["card"] if p.name == "rcan.onnx.card.json").read_text())


def test_card_sidecar_that_is_not_utf8_or_nests_too_deep_is_card_error(corpus, tmp_path):
    model = tmp_path / "m.onnx"
    sidecar = tmp_path / "m.onnx.card.json"
    sidecar.write_bytes(b'{"family": "rcan\xff\xfe"}')
    with pytest.raises(CardError, match=r"m\.onnx\.card\.json: not a UTF-8 text file"):
        read_sidecar(model)
    sidecar.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CardError, match="not valid JSON \\(nested too deeply\\)"):
        read_sidecar(model)


@pytest.mark.parametrize("path, value, message", [
    (("halo", "z"), [8], r"card\.halo\['z'\] must be an integer, got \[8\]"),
    (("halo", "y"), None, r"card\.halo\['y'\] must be an integer, got None"),
    (("halo", "x"), -1, r"card\.halo\['x'\] = -1 is out of range"),
    (("halo", "x"), 10**9, r"out of range; it must be in \[0, 4096\]"),
    (("halo", "c"), 2, r"card\.halo has the key 'c', which is not one of the tiled axes 'zyx'"),
    (("input", "divisor"), {"z": 0}, r"card\.input\.divisor\['z'\] = 0 is out of range"),
    (("input", "divisor"), {"y": 2.5}, r"card\.input\.divisor\['y'\] must be an integer"),
    (("output", "scale"), {"x": float("nan")}, r"card\.output\.scale\['x'\] must be a finite number, got nan"),
    (("output", "scale"), {"x": float("inf")}, r"must be a finite number, got inf"),
    (("output", "scale"), {"x": 0}, r"card\.output\.scale\['x'\] = 0 is out of range"),
    (("input", "channels"), 0, r"card\.input\.channels = 0 is out of range"),
    (("input", "time_window"), 0, r"card\.input\.time_window = 0 is out of range"),
    (("input", "dtype"), "uint8", r"card\.input\.dtype is 'uint8'; expected one of float32, float16"),
    (("input", "axes"), "bcqyx", r"use each of the letters b, t, c, z, y, x at most once"),
    (("normalization", "pmin"), float("nan"), r"card\.normalization\.pmin must be a finite number"),
    (("normalization", "pmax"), 150, r"card\.normalization\.pmax = 150 is out of range"),
    (("normalization", "pmin"), 99.95, r"need 0 <= pmin < pmax <= 100"),
    (("normalization", "eps"), -1e-6, r"card\.normalization\.eps = -1e-06 is out of range; it must be >= 0"),
    (("default_tile", "y"), 0, r"card\.default_tile\['y'\] = 0 is out of range"),
    (("precision", "mode"), "int4", r"card\.precision\.mode is 'int4'; this ScopeRT knows fp32, fp16"),
    (("postprocess", "kind"), ["minmax"], r"card\.postprocess\.kind is \['minmax'\]"),
    (("verification", "onnx_vs_torch"), [1e-6], r"card\.verification\.onnx_vs_torch must be an object"),
    (("schema_version",), 0, r"card\.schema_version = 0 is out of range"),
    (("schema_version",), 2, r"newer than this ScopeRT understands"),
])
def test_card_field_of_wrong_type_or_range_is_card_error(corpus, path, value, message):
    data = _seed_card(corpus)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(CardError, match=message):
        ModelCard.from_json(json.dumps(data))


def test_valid_cards_still_load(corpus):
    for path in corpus["card"]:
        card = ModelCard.from_json(path.read_text())
        assert card.to_dict() == json.loads(path.read_text())


# ------------------------------------------------------------------------------ regressions: configs


def test_unet_config_path_too_long_is_config_error(corpus, tmp_path):
    import yaml

    from scopert.training.unet.config import load_unet_config

    doc = yaml.safe_load(corpus["unet_config"][0].read_text())
    doc["loaders"]["train"]["file_paths"] = ["a" * 5000]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"loaders\.train\.file_paths: 'a{20,}.*is not a usable path"):
        load_unet_config(path)


@pytest.mark.parametrize("key, value, message", [
    ("resize", 5, r"resize must be a list of integers or null, got 5"),
    ("loss", ["L2"], r"loss_function must be a string, got \['L2'\]"),
    ("data_path", 3, r"data_path must be a string or a list of strings or null, got 3"),
    ("img_size", 128.0, r"img_size must be an integer, got 128\.0"),
    ("lr", float("nan"), r"learning_rate must be a finite number, got nan"),
])
def test_shine_config_of_wrong_type_is_config_error(corpus, tmp_path, key, value, message):
    from scopert.training.blindspot.train import load_blindspot_config

    doc = json.loads(next(p for p in corpus["shine_config"] if p.suffix == ".json").read_text())
    doc[key] = value
    path = tmp_path / "shine.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=rf"blindspot config {path}: {message}"):
        load_blindspot_config(path)


@pytest.mark.parametrize("key, value, message", [
    ("height", ["128", "160"], r"height must be a list of integers, got \['128', '160'\]"),
    ("loss_weights", {"mse": 0.1}, r"loss_weights must be a list of finite numbers, got \[\{'mse': 0\.1\}\]"),
    ("im_value_scale", [[0], [1]], r"im_value_scale must be a list of finite numbers"),
    ("num_epochs", "30", r"num_epochs must be an integer, got '30'"),
])
def test_cnnt_config_of_wrong_type_is_config_error(corpus, tmp_path, key, value, message):
    from scopert.training.cnnt.train import load_cnnt_config

    doc = json.loads(corpus["cnnt_config"][0].read_text())
    doc[key] = value
    path = tmp_path / "cnnt.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message):
        load_cnnt_config(path)


@pytest.mark.parametrize("key, value, message", [
    ("height", [], r"height must list patch sizes \(integers\), e\.g\. \[128\], got \[\]"),  # was IndexError
    ("width", [float("inf")], r"width must list patch sizes"),  # was OverflowError
    ("n_head", 0, r"blocks must be a positive multiple of n_head=0"),  # was ZeroDivisionError
    ("n_head", 2.0, r"n_head must be an integer, got 2\.0"),  # was 'float modulo' ZeroDivisionError for 0.0
])
def test_cnnt_seed_config_of_wrong_value_is_config_error(corpus, tmp_path, key, value, message):
    from scopert.training.cnnt.importer import model_config_from_seed, read_seed_config

    doc = json.loads(corpus["cnnt_seed_config"][0].read_text())
    doc[key] = value
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message):
        model_config_from_seed(read_seed_config(path), str(path))


def test_config_that_is_not_utf8_or_nests_too_deep_is_config_error(tmp_path):
    from scopert.training.rcan.config import load_rcan_config

    path = tmp_path / "c.json"
    path.write_bytes(b'{"epochs": 3\xff}')
    with pytest.raises(ConfigError, match=r"c\.json is not a UTF-8 text file"):
        load_rcan_config(path)
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ConfigError, match="nests lists or mappings too deeply"):
        load_rcan_config(path)

"""Save and load: round trips across backends, and clear errors for files that are not ours."""

import json
import zipfile

import numpy as np
import pytest

import gpunn as gn
from gpunn.io import model_file as io


def trained_model():
    model = gn.Sequential(gn.Dense(3, 5, seed=0), gn.ReLU(), gn.Dense(5, 2, seed=1), gn.Sigmoid())
    x = np.random.default_rng(0).normal(size=(8, 3))
    model.fit(x, (x[:, :2] > 0).astype(float), loss=gn.BCELoss(), optimizer=gn.SGD(lr=0.1), epochs=2, verbose=0)
    return model, x


def test_round_trip_on_every_backend(backend, tmp_path):
    with gn.use_backend("numpy"):
        model, x = trained_model()
        model.save(tmp_path / "m.npz", extras={"mean": np.arange(3.0)})
    loaded = gn.load(tmp_path / "m.npz")
    assert loaded.backend is backend
    assert [type(layer).__name__ for layer in loaded.layers] == ["Dense", "ReLU", "Dense", "Sigmoid"]
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6)
    np.testing.assert_array_equal(loaded.extras["mean"], [0, 1, 2])
    assert not list(tmp_path.glob(".tmp-*")), "the temporary file must be renamed away"


def test_file_holds_no_pickle(tmp_path):
    model, _ = trained_model()
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        meta = json.loads(archive["__gpunn_meta__"].tobytes())
    assert meta["format"] == "gpunn-model" and meta["dtype"] == "float32"


def test_corrupt_file(tmp_path):
    model, _ = trained_model()
    model.save(tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "broken.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(gn.ModelFileError, match="not a readable gpunn model file"):
        gn.load(tmp_path / "broken.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(gn.ModelFileError, match="not a readable gpunn model file"):
        gn.load(tmp_path / "text.npz")


@pytest.mark.parametrize("offset,value", [(8, 0x01), (8, 0x40), (6, 99)])  # encrypted, strong encryption, zip 9.9
def test_zip_features_we_never_write_are_model_file_errors(tmp_path, offset, value):
    """zipfile raises RuntimeError or NotImplementedError for these, not BadZipFile."""
    model, _ = trained_model()
    model.save(tmp_path / "m.npz")
    data = bytearray((tmp_path / "m.npz").read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first member's central directory entry
    data[entry + offset] |= value
    (tmp_path / "odd.npz").write_bytes(bytes(data))
    with pytest.raises(gn.ModelFileError):
        gn.load(tmp_path / "odd.npz")


def test_foreign_npz(tmp_path):
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    with pytest.raises(gn.ModelFileError, match="no gpunn metadata"):
        gn.load(tmp_path / "foreign.npz")


def test_other_format_version(tmp_path):
    meta = {"format": "gpunn-model", "format_version": 99, "gpunn_version": "9.0", "layers": []}
    np.savez(tmp_path / "future.npz", __gpunn_meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(gn.ModelFileError, match="format version 99 by gpunn 9.0; this gpunn reads versions 1, 2"):
        gn.load(tmp_path / "future.npz")


def test_damaged_layer(tmp_path):
    model, _ = trained_model()
    model.save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as source, zipfile.ZipFile(tmp_path / "cut.npz", "w") as target:
        for item in source.infolist():
            if item.filename != "layer2.W.npy":
                target.writestr(item, source.read(item))
    with pytest.raises(gn.ModelFileError, match="layer 2 \\(Dense\\) is damaged"):
        gn.load(tmp_path / "cut.npz")


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    model, x = trained_model()
    path = tmp_path / "m.npz"
    model.save(path)
    good = path.read_bytes()

    def failing_savez(file, **arrays):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(io.np, "savez", failing_savez)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == good
    assert not list(tmp_path.glob(".tmp-*"))


# --- hardening: nothing saved is lost, nothing crafted gets through (issue 14) ------------
import io as _io  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from gpunn.io import atomic  # noqa: E402


def small_model():
    return gn.Sequential(gn.Dense(3, 4, seed=0), gn.Tanh(), gn.Dense(4, 2, seed=1))


def npy(array=None, header=None, data=b""):
    """The bytes of an .npy member: a real array, or a hand-written header and data."""
    buffer = _io.BytesIO()
    if header is None:
        np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(buffer, header)
        buffer.write(data)
    return buffer.getvalue()


def meta_npy(meta):
    return npy(np.frombuffer(json.dumps(meta).encode() if not isinstance(meta, bytes) else meta, np.uint8))


def archive(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as target:
        for name, data in members.items():
            target.writestr(name, data)
    return path


def members_of(path):
    with zipfile.ZipFile(path) as source:
        return {item.filename: source.read(item) for item in source.infolist()}


def valid_meta(**changes):
    meta = {"format": "gpunn-model", "format_version": 2, "gpunn_version": "0.1.0", "dtype": "float32",
            "layers": [{"type": "Dense", "in_features": 3, "out_features": 2, "init": "xavier"}], "extras": []}
    meta.update(changes)
    return meta


def dense_members(meta, W=None):
    return {"__gpunn_meta__.npy": meta_npy(meta),
            "layer0.W.npy": npy(np.ones((3, 2), np.float32) if W is None else W),
            "layer0.b.npy": npy(np.zeros(2, np.float32))}


@pytest.mark.parametrize("extra", [None, {"a": 1}, object(), [1, "a", None], 1 + 2j, [[1, 2], [3]]])
def test_an_extra_load_could_not_read_is_refused_before_the_old_file_is_touched(tmp_path, extra):
    path = tmp_path / "m.npz"
    small_model().save(path)
    good = path.read_bytes()
    with pytest.raises(TypeError, match=r"extras\['note'\]"):
        small_model().save(path, extras={"note": extra})
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


@pytest.mark.parametrize("extras,error", [({"bad/name": 1}, ValueError), ({"": 1}, ValueError),
                                          ({"x": [1.0, np.nan]}, ValueError), (["x"], TypeError)])
def test_bad_extra_names_and_values(tmp_path, extras, error):
    with pytest.raises(error, match="extras"):
        small_model().save(tmp_path / "m.npz", extras=extras)
    assert not (tmp_path / "m.npz").exists()


def test_non_finite_weights_are_never_written(tmp_path):
    model = small_model()
    model.layers[0].W[0, 0] = np.inf
    with pytest.raises(ValueError, match="layer0.W holds NaN or Inf"):
        model.save(tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_resaving_a_loaded_model_keeps_its_extras(tmp_path):
    extras = {"mean": np.arange(3.0), "classes": np.array(["a", "b,c", 'd"e']), "count": np.int64(2**60 + 1),
              "flag": np.array([True, False])}
    small_model().save(tmp_path / "a.npz", extras=extras)
    gn.load(tmp_path / "a.npz").save(tmp_path / "b.npz")
    again = gn.load(tmp_path / "b.npz").extras
    assert sorted(again) == sorted(extras)
    for name, value in extras.items():
        np.testing.assert_array_equal(again[name], value)
    gn.load(tmp_path / "a.npz").save(tmp_path / "c.npz", extras={})
    assert gn.load(tmp_path / "c.npz").extras == {}


def test_file_mode_follows_the_umask_and_an_existing_file(tmp_path):
    old = os.umask(0o027)
    try:
        small_model().save(tmp_path / "new.npz")
        assert oct((tmp_path / "new.npz").stat().st_mode & 0o777) == oct(0o640)
        (tmp_path / "kept.npz").write_bytes(b"old")
        os.chmod(tmp_path / "kept.npz", 0o604)
        small_model().save(tmp_path / "kept.npz")
        assert oct((tmp_path / "kept.npz").stat().st_mode & 0o777) == oct(0o604)
    finally:
        os.umask(old)


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_ours_are_removed_on_the_next_save(tmp_path):
    host = atomic._HOST
    stale = tmp_path / f".gpunn-{host}-{dead_pid()}-abc.partial"
    live = tmp_path / f".gpunn-{host}-1-abc.partial"  # pid 1 is alive
    old_legacy, new_legacy = tmp_path / ".tmp-abcd1234.partial", tmp_path / ".tmp-efgh5678.partial"
    other_host = tmp_path / ".gpunn-elsewhere-12-abc.partial"
    unrelated = tmp_path / "notes.partial"
    for path in (stale, live, old_legacy, new_legacy, other_host, unrelated):
        path.write_bytes(b"x" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(old_legacy, (two_hours_ago, two_hours_ago))
    os.utime(other_host, (two_hours_ago, two_hours_ago))
    small_model().save(tmp_path / "m.npz")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"m.npz", live.name, new_legacy.name, other_host.name, unrelated.name}
    assert socket.gethostname()  # the host tag comes from here


def test_save_errors_name_the_users_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"cannot write {tmp_path / 'no' / 'm.npz'}: the folder"):
        small_model().save(tmp_path / "no" / "m.npz")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        small_model().save(tmp_path)
    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0o500)
    try:
        if os.access(tmp_path / "locked", os.W_OK):
            pytest.skip("running as a user who may write anywhere")
        with pytest.raises(PermissionError, match=f"cannot write {tmp_path / 'locked' / 'm.npz'}"):
            small_model().save(tmp_path / "locked" / "m.npz")
    finally:
        os.chmod(tmp_path / "locked", 0o700)


SLOW_SAVE = """
import sys, time, numpy as np, gpunn as gn
from gpunn.io import model_file as io
model = gn.Sequential(gn.Dense(3, 2, seed=0))
def slow(file, **arrays):
    file.write(b"x" * 100000); file.flush(); print("writing", flush=True); time.sleep(30)
io.np.savez = slow
model.save(sys.argv[1])
"""


def test_sigterm_during_a_save_removes_the_temporary_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.npz"
    small_model().save(path)
    good = path.read_bytes()
    process = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path)], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert process.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.glob(".gpunn-*.partial"))) == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == -signal.SIGTERM  # it still dies of the signal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"] and path.read_bytes() == good


class FakeOptimizer:
    def __init__(self, config=None, arrays=None):
        self.config = {"lr": 0.1, "momentum": 0.9, "step": 7} if config is None else config
        self.arrays = {"velocity.0": np.arange(6.0).reshape(2, 3)} if arrays is None else arrays

    def state_dict(self):
        return {"config": self.config, "arrays": self.arrays}


def test_optimizer_state_round_trip(tmp_path):
    small_model().save(tmp_path / "m.npz", extras={"mean": np.ones(3)}, optimizer=FakeOptimizer())
    state = io.read_optimizer_state(tmp_path / "m.npz")
    assert state["config"] == {"lr": 0.1, "momentum": 0.9, "step": 7}
    np.testing.assert_array_equal(state["arrays"]["velocity.0"], np.arange(6.0).reshape(2, 3))
    loaded = gn.load(tmp_path / "m.npz")
    assert sorted(loaded.extras) == ["mean"]  # optimizer arrays are not extras
    small_model().save(tmp_path / "plain.npz")
    with pytest.raises(gn.ModelFileError, match="holds no optimizer state"):
        io.read_optimizer_state(tmp_path / "plain.npz")


@pytest.mark.parametrize("optimizer,error,message", [
    (FakeOptimizer(config={"lr": float("nan")}), TypeError, "not JSON-serialisable with finite numbers"),
    (FakeOptimizer(config={"f": print}), TypeError, "not JSON-serialisable"),
    (FakeOptimizer(arrays={"v": np.array([np.inf])}), ValueError, r"optimizer state\['v'\] holds NaN or Inf"),
    (FakeOptimizer(arrays={"v": np.array(["text"])}), TypeError, r"optimizer state\['v'\] has dtype <U4")])
def test_bad_optimizer_state_is_refused_before_writing(tmp_path, optimizer, error, message):
    with pytest.raises(error, match=message):
        small_model().save(tmp_path / "m.npz", optimizer=optimizer)
    assert list(tmp_path.iterdir()) == []


def save_version_1(model, path, extras):
    """How gpunn 0.1 wrote a model (format version 1: extras not listed in the metadata)."""
    arrays = {f"layer{i}.{p.name}": np.asarray(p.value) for i, layer in enumerate(model.layers)
              for p in layer.parameters()}
    arrays.update({f"extra.{name}": np.asarray(value) for name, value in extras.items()})
    meta = {"format": "gpunn-model", "format_version": 1, "gpunn_version": "0.1.0", "dtype": "float32",
            "layers": [{"type": type(layer).__name__, **layer.config()} for layer in model.layers]}
    arrays["__gpunn_meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_version_1_files_still_load(tmp_path):
    model = small_model()
    save_version_1(model, tmp_path / "v1.npz", {"mean": np.arange(3.0), "classes": np.array(["x", "y"])})
    loaded = gn.load(tmp_path / "v1.npz")
    x = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.extras["classes"].tolist() == ["x", "y"]
    loaded.save(tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as saved:
        assert json.loads(saved["__gpunn_meta__"].tobytes())["format_version"] == 2


CRAFTED = {
    "metadata not an object": ({"__gpunn_meta__.npy": meta_npy([1, 2])}, "not an object"),
    "metadata not JSON": ({"__gpunn_meta__.npy": meta_npy(b"{nope")}, "corrupt gpunn metadata"),
    "metadata not UTF-8": ({"__gpunn_meta__.npy": meta_npy(b"\xff\xfe")}, "corrupt gpunn metadata"),
    "metadata of floats": ({"__gpunn_meta__.npy": npy(np.ones(3))}, "dtype float64"),
    "layers=5": (dense_members(valid_meta(layers=5)), "'layers' must be a list"),
    "layer without type": (dense_members(valid_meta(layers=[{"in_features": 3}])), "'layers' must be a list"),
    "dtype int8": (dense_members(valid_meta(dtype="int8")), "dtype int8 is not supported"),
    "dtype bogus": (dense_members(valid_meta(dtype="bogus")), "cannot hold its weights"),
    "dtype a number": (dense_members(valid_meta(dtype=5)), "is not a dtype name"),
    "deep nesting": (dense_members(valid_meta(note=json.loads("[" * 200 + "]" * 200))), "nested more than"),
    "deeper than json can parse": ({"__gpunn_meta__.npy": meta_npy(b"[" * 100000 + b"]" * 100000)},
                                   "corrupt gpunn metadata"),
    "version true": (dense_members(valid_meta(format_version=True)), "format version True"),
    "extras not names": (dense_members(valid_meta(extras=[1])), "'extras' must be a list of array names"),
    "extras listed but absent": (dense_members(valid_meta(extras=["mean"])), "array 'extra.mean' is missing"),
    "optimizer not an object": (dense_members(valid_meta(optimizer=3)), "'optimizer' must be an object"),
    "unknown layer": (dense_members(valid_meta(layers=[{"type": "Conv"}])), "unknown layer type 'Conv'"),
    "unexpected layer argument": (dense_members(valid_meta(layers=[{"type": "Tanh", "slope": 2}])),
                                  r"layer 0 \(Tanh\) is damaged"),
    "string size": (dense_members(valid_meta(layers=[{"type": "Dense", "in_features": "3", "out_features": 2}])),
                    r"layer 0 \(Dense\) is damaged"),
    "huge architecture": (dense_members(valid_meta(layers=[{"type": "Dense", "in_features": 10**8,
                                                            "out_features": 10**7}])), "larger than the file"),
    "weight of the wrong shape": (dense_members(valid_meta(), W=np.ones((2, 3), np.float32)),
                                  r"layer0.W' has shape \(2, 3\); the architecture needs \(3, 2\)"),
    "weight of strings": (dense_members(valid_meta(), W=np.array([["a"] * 2] * 3)), "must hold floats"),
    "NaN weight": (dense_members(valid_meta(), W=np.full((3, 2), np.nan, np.float32)), "holds NaN or Inf"),
    "header claiming 1e15 elements": (
        {**dense_members(valid_meta()),
         "layer0.W.npy": npy(header={"descr": "<f4", "fortran_order": False, "shape": (10**15,)}, data=b"\0" * 24)},
        "claims shape"),
    "layers that do not chain": (dense_members(valid_meta(layers=[
        {"type": "Dense", "in_features": 3, "out_features": 2}, {"type": "Dense", "in_features": 5,
                                                                 "out_features": 1}])), "layer 1 is damaged|missing"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_files_are_model_file_errors(tmp_path, case):
    members, message = CRAFTED[case]
    path = archive(tmp_path / "crafted.npz", members)
    with pytest.raises(gn.ModelFileError, match=message):
        gn.load(path)


def test_compressed_members_are_refused(tmp_path):
    path = archive(tmp_path / "c.npz", dense_members(valid_meta()), zipfile.ZIP_DEFLATED)
    with pytest.raises(gn.ModelFileError, match="'__gpunn_meta__' is compressed or larger than the file"):
        gn.load(path)


def test_arrays_the_metadata_does_not_name_are_never_read(tmp_path):
    bomb = npy(header={"descr": "<f8", "fortran_order": False, "shape": (2**40,)}, data=b"")
    path = archive(tmp_path / "m.npz", {**dense_members(valid_meta()), "junk.npy": bomb,
                                        "extra.unlisted.npy": bomb})
    started = time.perf_counter()
    model = gn.load(path)
    assert time.perf_counter() - started < 2 and model.extras == {}


def test_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.npz")  # reading a FIFO would block until a writer comes
    with pytest.raises(gn.ModelFileError, match="not a regular file"):
        gn.load(tmp_path / "pipe.npz")
    with pytest.raises(gn.ModelFileError, match="not a regular file"):
        gn.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        gn.load(tmp_path / "missing.npz")


def test_an_npy_renamed_npz(tmp_path):
    np.save(tmp_path / "x.npy", np.ones(3))
    os.rename(tmp_path / "x.npy", tmp_path / "x.npz")
    with pytest.raises(gn.ModelFileError, match="not a readable gpunn model file"):
        gn.load(tmp_path / "x.npz")


# --- reliability, round three (issue 22) ----------------------------------------------------
def nested_residuals(levels):
    inner = gn.Dense(3, 3, seed=0)
    for _ in range(levels):
        inner = gn.Residual(inner)
    return gn.Sequential(inner)


def test_whatever_save_writes_load_reads_back_and_the_rest_is_refused_before_the_old_file(tmp_path):
    path = tmp_path / "m.npz"
    small_model().save(path)
    good = path.read_bytes()
    # every depth save accepts loads back; the first it refuses is refused before the old file is touched
    accepted = 0
    for levels in range(1, 30):
        model = nested_residuals(levels)
        try:
            model.save(tmp_path / "deep.npz")
        except ValueError as error:
            assert "nest" in str(error) and "load reads at most 32" in str(error)
            with pytest.raises(ValueError, match="nest"):
                model.save(path)
            assert path.read_bytes() == good
            break
        accepted = levels
        loaded = gn.load(tmp_path / "deep.npz")
        x = np.random.default_rng(levels).normal(size=(4, 3))
        np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert 10 <= accepted < 29


def test_a_model_without_layers_is_neither_saved_nor_loaded(tmp_path):
    path = tmp_path / "m.npz"
    small_model().save(path)
    good = path.read_bytes()
    with pytest.raises(ValueError, match="no layers"):
        gn.Sequential().save(path)
    assert path.read_bytes() == good
    crafted = archive(tmp_path / "empty.npz", {"__gpunn_meta__.npy": meta_npy(valid_meta(layers=[]))})
    with pytest.raises(gn.ModelFileError, match="no layers"):
        gn.load(crafted)


@pytest.mark.parametrize("missing", ["extras"])
def test_a_version_2_file_without_its_keys_is_a_model_file_error(tmp_path, missing):
    meta = valid_meta()
    del meta[missing]
    with pytest.raises(gn.ModelFileError, match="without its 'extras'"):
        gn.load(archive(tmp_path / "m.npz", dense_members(meta)))


def test_bytes_and_path_like_paths_work_and_other_paths_are_type_errors(tmp_path):
    model = small_model()
    path = os.fsencode(tmp_path / "m.npz")
    model.save(path)
    x = np.ones((2, 3))
    np.testing.assert_array_equal(gn.load(path).predict(x), model.predict(x))
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
        model.save(5)
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
        gn.load(None)


def test_an_oserror_without_errno_names_the_path_and_its_own_words(tmp_path, monkeypatch):
    def failing_savez(file, **arrays):
        raise OSError("the disk went away")

    monkeypatch.setattr(io.np, "savez", failing_savez)
    with pytest.raises(OSError) as caught:
        small_model().save(tmp_path / "m.npz")
    assert str(caught.value) == f"cannot write {tmp_path / 'm.npz'}: the disk went away"
    assert "None" not in str(caught.value)


def test_save_refuses_an_optimizer_of_another_model_or_not_an_optimizer(tmp_path):
    model, other = small_model(), small_model()
    path = tmp_path / "m.npz"
    model.save(path)
    good = path.read_bytes()
    with pytest.raises(ValueError, match="bound to the parameters of another model"):
        model.save(path, optimizer=gn.Adam(other.parameters()))
    for wrong in ("adam", gn.Adam):
        with pytest.raises(TypeError, match="optimizer must be the gpunn optimizer"):
            model.save(path, optimizer=wrong)
    with pytest.raises(ValueError, match="bound to no model yet"):
        model.save(path, optimizer=gn.Adam())
    assert path.read_bytes() == good
    model.save(path, optimizer=gn.Adam(model.parameters()))  # its own: saved


def test_load_optimizer_with_something_else_than_a_model_is_a_type_error(tmp_path):
    model = small_model()
    model.save(tmp_path / "m.npz", optimizer=gn.SGD(model.parameters()))
    with pytest.raises(TypeError, match="model must be the gpunn model"):
        gn.load_optimizer(tmp_path / "m.npz", tmp_path / "m.npz")


def test_frozen_parameters_stay_frozen_through_save_and_load(tmp_path):
    """Keras saves each layer's trainable flag with the model: a checkpoint of a fine-tuning run (base
    frozen) loaded to go on training trained the frozen layer, and its resume was no longer exact."""
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(32, 3)), rng.normal(size=(32, 2))

    def build():
        return gn.Sequential(gn.Dense(3, 5, seed=0, dtype="float64"), gn.Tanh(), gn.Dense(5, 2, seed=1, dtype="float64"))

    def train(model, optimizer, epochs, initial_epoch=0):
        model.fit(x, t, loss=gn.MSELoss(), optimizer=optimizer, epochs=epochs, initial_epoch=initial_epoch,
                  batch_size=8, seed=3, verbose=0)

    straight, optimizer = build(), gn.Adam(lr=0.05)
    straight.layers[0].trainable = False
    train(straight, optimizer, 4)
    half, optimizer = build(), gn.Adam(lr=0.05)
    half.layers[0].trainable = False
    half.layers[2].bias.trainable = False
    half.layers[2].bias.trainable = True  # only what is frozen at save is recorded
    train(half, optimizer, 2)
    half.save(tmp_path / "m.npz", optimizer=optimizer)
    loaded = gn.load(tmp_path / "m.npz")
    assert [p.trainable for p in loaded.parameters()] == [False, False, True, True]
    train(loaded, gn.load_optimizer(tmp_path / "m.npz", loaded), 4, initial_epoch=2)
    np.testing.assert_array_equal(loaded.flat.values, straight.flat.values)

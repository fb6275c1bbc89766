"""Save and load: round trips across backends, and clear errors for files that are not ours."""

import json
import zipfile

import numpy as np
import pytest

import gpunn as gn
from gpunn import io


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


def test_foreign_npz(tmp_path):
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    with pytest.raises(gn.ModelFileError, match="no gpunn metadata"):
        gn.load(tmp_path / "foreign.npz")


def test_other_format_version(tmp_path):
    meta = {"format": "gpunn-model", "format_version": 99, "gpunn_version": "9.0", "layers": []}
    np.savez(tmp_path / "future.npz", __gpunn_meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(gn.ModelFileError, match="format version 99 by gpunn 9.0; this gpunn reads versions \(1, 2\)"):
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

"""gpunn train --data in every format it takes (.csv through PyArrow, .parquet, .npz, memory-mapped
.npy), text columns one-hot encoded, missing cells refused or imputed, validation and test files, and
gpunn predict on a run folder (issue 24)."""

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

import gpunn as gn
from gpunn.extras import install_command
from support.cli import ok, run, user_error

FAST = ["--backend", "numpy", "--epochs", "2", "--hidden", "8", "--quiet"]


def frame(rows=80, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).round(5)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": (x[:, 0] + x[:, 1] > 0).astype(int)})


def encoding_of(path):
    return json.loads(str(gn.load(path).extras["encoding"]))


def test_every_format_trains_the_same_model_and_predicts_the_same(capsys, tmp_path):
    data = frame()
    x, y = data[["a", "b", "c"]].to_numpy(), data["label"].to_numpy()
    data.to_csv(tmp_path / "d.csv", index=False)
    data.to_parquet(tmp_path / "d.parquet")
    np.savez(tmp_path / "d.npz", X=x, y=y)
    np.save(tmp_path / "d.npy", np.column_stack([x, y]))  # the target as the last column
    outputs = {}
    for kind in ("csv", "parquet", "npz", "npy"):
        ok(capsys, "train", "--data", tmp_path / f"d.{kind}", "--out", tmp_path / kind, *FAST)
        outputs[kind] = ok(capsys, "predict", tmp_path / kind, tmp_path / f"d.{kind}")[0]
    weights = {kind: gn.load(tmp_path / kind / "last.npz").flat.values for kind in outputs}
    for kind in ("parquet", "npz", "npy"):
        assert np.array_equal(weights[kind], weights["csv"]), kind
        assert outputs[kind] == outputs["csv"], kind
    assert len(outputs["csv"].splitlines()) == 81 and outputs["csv"].startswith("prediction,p_0,p_1")
    np.save(tmp_path / "features.npy", x)  # predict takes an .npy of features alone too
    assert ok(capsys, "predict", tmp_path / "npy", tmp_path / "features.npy")[0] == outputs["npy"]


def colours(rows=90, seed=1):
    data = frame(rows, seed)
    data.insert(1, "colour", np.array(["red", "green", "blue"])[np.arange(rows) % 3])
    data["label"] = ((data["colour"] == "red") | (data["a"] > 1)).astype(int)
    return data


def test_text_columns_are_one_hot_encoded_and_the_encoding_is_reused(capsys, tmp_path):
    data = colours()
    data.to_csv(tmp_path / "d.csv", index=False)
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    model = gn.load(tmp_path / "run" / "best.npz")
    assert model.in_features == 6  # a, colour=blue, colour=green, colour=red, b, c
    columns = encoding_of(tmp_path / "run" / "best.npz")["columns"]
    assert columns[1] == {"name": "colour", "categories": ["blue", "green", "red"], "fill": None}
    reference = ok(capsys, "predict", tmp_path / "run", tmp_path / "d.csv")[0].splitlines()
    # the columns in another order, rows reversed, and a file holding only some of the categories
    part = data[["c", "label", "b", "colour", "a"]].iloc[::-1].iloc[:20]
    assert set(part["colour"]) == {"red", "green", "blue"} and len(set(part["colour"].iloc[:2])) == 2
    part.iloc[:2].to_csv(tmp_path / "two.csv", index=False)
    again = ok(capsys, "predict", tmp_path / "run", tmp_path / "two.csv")[0].splitlines()
    assert again[1:] == reference[1:][::-1][:2]
    # the encoding by hand: one-hot columns, then the stored scaler
    checkpoint = np.load(tmp_path / "run" / "best.npz")
    one_hot = np.eye(3)[pd.Categorical(data["colour"], ["blue", "green", "red"]).codes]
    inputs = (np.column_stack([data["a"], one_hot, data["b"], data["c"]]) - checkpoint["extra.mean"]) / checkpoint["extra.std"]
    np.testing.assert_allclose(model.predict(inputs)[:, 1] - model.predict(inputs)[:, 0],
                               np.diff(np.log([[float(p) for p in line.split(",")[1:]] for line in reference[1:]]), axis=1)[:, 0],
                               rtol=1e-5, atol=1e-5)


def test_a_category_training_never_saw_is_an_error_naming_it(capsys, tmp_path):
    data = colours()
    data.to_csv(tmp_path / "d.csv", index=False)
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    new = data.iloc[:4].copy()
    new.loc[new.index[2], "colour"] = "purple"
    new.to_csv(tmp_path / "new.csv", index=False)
    err = user_error(capsys, "predict", tmp_path / "run", tmp_path / "new.csv")
    assert "column 'colour' holds 'purple' in data row 3" in err and "never had ('blue', 'green', 'red')" in err
    new.to_csv(tmp_path / "validation.csv", index=False)  # the same rule for a validation file
    err = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--validation-data", tmp_path / "validation.csv",
                     "--out", tmp_path / "run2", *FAST)
    assert "validation.csv: column 'colour' holds 'purple'" in err


def test_missing_cells_are_refused_naming_the_columns_and_the_fix(capsys, tmp_path):
    lines = ["a,b,c,label"] + [f"{i},{i % 7},{i % 5},{i % 2}" for i in range(40)]
    lines[3] = "2,,2,0"
    lines[9] = "8,NA,,0"
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    err = user_error(capsys, "train", "--data", tmp_path / "m.csv", "--out", tmp_path / "run", *FAST)
    assert "missing values in columns 'b' (2 rows, first: data row 3), 'c' (1 row, first: data row 9)" in err
    assert "--impute mean|median" in err
    np.save(tmp_path / "m.npy", np.array([[1.0, np.nan, 0], [2.0, 3.0, 1]] * 10))
    err = user_error(capsys, "train", "--data", tmp_path / "m.npy", "--out", tmp_path / "run", *FAST)
    assert "missing values in column 'column 2' (10 rows, first: data row 1)" in err
    (tmp_path / "t.csv").write_text("a,label\n1,0\n2,\n3,1\n4,0\n")
    assert "1 rows have an empty label (first: data row 2)" in user_error(
        capsys, "train", "--data", tmp_path / "t.csv", "--out", tmp_path / "run", *FAST)
    (tmp_path / "r.csv").write_text("a,label\n1,0.5\n2,x\n3,1.5\n4,2\n")
    assert "needs numbers in the label column 'label', found 'x' (data row 2)" in user_error(
        capsys, "train", "--data", tmp_path / "r.csv", "--task", "regress", "--out", tmp_path / "run", *FAST)


@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_impute_fills_with_the_training_rows_statistic_stored_and_applied_by_predict(capsys, tmp_path, statistic):
    data = frame(60)
    data.loc[[3, 10, 11], "b"] = np.nan
    data.to_csv(tmp_path / "d.csv", index=False)
    test = frame(20, seed=5)
    test.loc[0, "b"] = 1e6  # a test row: must not move the statistic
    test.loc[1, "b"] = np.nan  # and is filled like a training row
    test.to_csv(tmp_path / "test.csv", index=False)
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--test-data", tmp_path / "test.csv", "--validation-fraction", "0",
       "--impute", statistic, "--out", tmp_path / "run", *FAST)  # every --data row is a training row
    stored = encoding_of(tmp_path / "run" / "last.npz")
    known = data["b"].dropna().to_numpy()
    expected = np.mean(known) if statistic == "mean" else np.median(known)
    assert stored["impute"] == statistic and stored["columns"][1]["fill"] == expected
    assert stored["columns"][0]["fill"] == (np.mean if statistic == "mean" else np.median)(data["a"].to_numpy())
    filled = test.iloc[1:2].copy()
    filled.loc[filled.index[0], "b"] = expected
    filled.to_csv(tmp_path / "filled.csv", index=False)
    test.iloc[1:2].to_csv(tmp_path / "hole.csv", index=False)
    assert ok(capsys, "predict", tmp_path / "run", tmp_path / "hole.csv")[0] == \
        ok(capsys, "predict", tmp_path / "run", tmp_path / "filled.csv")[0]


def test_validation_and_test_files_replace_the_split_and_must_match_the_columns(capsys, tmp_path):
    frame(60).to_csv(tmp_path / "d.csv", index=False)
    frame(20, seed=2).to_csv(tmp_path / "v.csv", index=False)
    frame(30, seed=3)[["c", "label", "a", "b"]].to_csv(tmp_path / "t.csv", index=False)  # another order is fine
    out, _ = run(capsys, "train", "--data", tmp_path / "d.csv", "--validation-data", tmp_path / "v.csv",
                 "--test-data", tmp_path / "t.csv", "--out", tmp_path / "run", "--backend", "numpy", "--epochs", "2",
                 "--hidden", "8")[1:]
    assert "60 train / 20 validation / 30 test rows" in out
    frame(20).rename(columns={"c": "d"}).to_csv(tmp_path / "bad.csv", index=False)
    err = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--validation-data", tmp_path / "bad.csv",
                     "--out", tmp_path / "run2", *FAST)
    assert "bad.csv: its columns are not those of --data" in err and "missing 'c'; unexpected 'd'" in err
    np.savez(tmp_path / "narrow.npz", X=np.ones((5, 2)), y=np.arange(5) % 2)
    assert "2 feature columns, but --data" in user_error(
        capsys, "train", "--data", tmp_path / "d.csv", "--test-data", tmp_path / "narrow.npz", "--out", tmp_path / "r3", *FAST)
    other = frame(20)
    other["label"] = 7
    other.to_csv(tmp_path / "other.csv", index=False)
    assert "--test-fraction would be ignored" in user_error(
        capsys, "train", "--data", tmp_path / "d.csv", "--test-data", tmp_path / "t.csv", "--test-fraction", "0.3",
        "--out", tmp_path / "r5", *FAST)
    assert "label(s) '7' are no class of --data" in user_error(
        capsys, "train", "--data", tmp_path / "d.csv", "--test-data", tmp_path / "other.csv", "--out", tmp_path / "r4", *FAST)


def test_resume_keeps_the_files_and_refuses_a_changed_one(capsys, tmp_path):
    data = colours(60)
    data.loc[4, "b"] = np.nan
    data.to_csv(tmp_path / "d.csv", index=False)
    colours(20, seed=2).to_csv(tmp_path / "v.csv", index=False)
    common = ["--data", tmp_path / "d.csv", "--validation-data", tmp_path / "v.csv", "--impute", "median",
              "--backend", "numpy", "--hidden", "8", "--quiet"]
    ok(capsys, "train", *common, "--epochs", "4", "--out", tmp_path / "straight")
    ok(capsys, "train", *common, "--epochs", "2", "--out", tmp_path / "half")
    ok(capsys, "train", "--resume", tmp_path / "half", "--epochs", "4")
    assert np.array_equal(gn.load(tmp_path / "half" / "last.npz").flat.values,
                          gn.load(tmp_path / "straight" / "last.npz").flat.values)
    changed = colours(20, seed=2)
    changed.loc[0, "a"] += 1
    changed.to_csv(tmp_path / "v.csv", index=False)
    assert "its validation rows changed" in user_error(capsys, "train", "--resume", tmp_path / "half", "--epochs", "6")


def test_predict_takes_a_run_folder_its_best_checkpoint_else_its_last(capsys, tmp_path):
    frame().to_csv(tmp_path / "d.csv", index=False)
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST, "--epochs", "3")
    folder = ok(capsys, "predict", tmp_path / "run", tmp_path / "d.csv")
    assert folder == ok(capsys, "predict", tmp_path / "run" / "best.npz", tmp_path / "d.csv")
    os.remove(tmp_path / "run" / "best.npz")
    out, err = ok(capsys, "predict", tmp_path / "run", tmp_path / "d.csv")
    assert out == ok(capsys, "predict", tmp_path / "run" / "last.npz", tmp_path / "d.csv")[0]
    assert "has no best.npz" in err and "its last.npz is used" in err
    os.remove(tmp_path / "run" / "last.npz")
    assert "holds neither best.npz nor last.npz" in user_error(capsys, "predict", tmp_path / "run", tmp_path / "d.csv")


def test_text_in_a_number_column_and_identifier_columns_are_refused(capsys, tmp_path):
    lines = ["a,b,label"] + [f"{i},{i % 3},{i % 2}" for i in range(30)]
    lines[5] = "4,oops,0"
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    assert "column 'b' holds 'oops' in data row 5, not a number" in user_error(
        capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    (tmp_path / "ids.csv").write_text("id,a,label\n" + "".join(f"user{i},{i},{i % 2}\n" for i in range(1001)))
    assert "text column 'id' holds 1001 distinct values, too many to one-hot encode" in user_error(
        capsys, "train", "--data", tmp_path / "ids.csv", "--out", tmp_path / "run", *FAST)


def test_without_pyarrow_csv_and_parquet_say_how_to_install_it(capsys, tmp_path, monkeypatch):
    frame().to_csv(tmp_path / "d.csv", index=False)
    for name in [name for name in sys.modules if name == "pyarrow" or name.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    err = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    assert f"needs PyArrow: {install_command('data')}" in err
    np.savez(tmp_path / "d.npz", X=np.ones((20, 2)), y=np.arange(20) % 2)  # arrays need no PyArrow
    ok(capsys, "train", "--data", tmp_path / "d.npz", "--out", tmp_path / "run", *FAST)


def test_impute_statistics_come_from_the_training_part_of_an_internal_split(tmp_path):
    from gpunn.cli.parser import build_parser
    from gpunn.cli.train import split

    data = frame(60)
    data.loc[::4, "b"] = np.nan
    data["b"] = data["b"] * (1 + np.arange(60))  # rows differ in scale: any other rows give another mean
    data.to_csv(tmp_path / "d.csv", index=False)
    args = build_parser().parse_args(["train", "--data", str(tmp_path / "d.csv"), "--impute", "mean"])
    parts = split(args)
    column = data["b"].to_numpy()
    train = column[parts.train_rows]
    assert parts.encoding.columns[1].fill == np.mean(train[~np.isnan(train)])
    assert parts.encoding.columns[1].fill != np.nanmean(column)
    assert len(parts.validation_rows) and len(parts.test_rows)


def test_wide_integer_and_decimal_columns_read_as_float64_as_numpy_does(capsys, tmp_path):
    """An int64/uint64 column past 2^53 (an identifier, a timestamp in ns) and a Parquet decimal column
    are numbers: read as float64, rounded as NumPy's astype(float64) rounds them (PyArrow's safe cast
    raised a bare 'Integer value ... not in range' without the file or column)."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = frame(40)
    big = np.arange(40, dtype=np.uint64) + np.uint64(2**63)
    data["big"] = (np.arange(40) + 2**60).astype(np.int64)
    data.to_csv(tmp_path / "d.csv", index=False)
    decimals = pa.array([decimal.Decimal(f"{v:.2f}") for v in data["b"]])  # 0.95: Arrow's own cast gives 0.95000...01
    table = pa.table({"a": data["a"], "u": pa.array(big), "d": decimals, "label": data["label"]})
    pq.write_table(table, tmp_path / "d.parquet")
    for kind in ("csv", "parquet"):
        ok(capsys, "train", "--data", tmp_path / f"d.{kind}", "--out", tmp_path / kind, *FAST)
    from gpunn.cli.data import read_table
    columns = read_table(tmp_path / "d.parquet").columns
    assert np.array_equal(columns[1], big.astype(np.float64))
    assert np.array_equal(columns[2], np.array([float(f"{v:.2f}") for v in data["b"]]))
    assert np.array_equal(read_table(tmp_path / "d.csv").columns[3], data["big"].to_numpy().astype(np.float64))


def test_resume_finds_moved_data_files_where_it_is_told_and_checks_their_rows(capsys, tmp_path):
    """The data files' paths are where the rows were, not what they are: a run whose files moved resumes
    with --data/--validation-data naming where they are now (the digest of their rows decides, as
    always), and keeps the new paths for the next resume; a file gone says which and how to go on."""
    frame(60).to_csv(tmp_path / "d.csv", index=False)
    frame(20, seed=3).to_csv(tmp_path / "v.csv", index=False)
    common = ["--backend", "numpy", "--hidden", "8", "--quiet"]
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--validation-data", tmp_path / "v.csv", *common,
       "--epochs", "4", "--out", tmp_path / "straight")
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--validation-data", tmp_path / "v.csv", *common,
       "--epochs", "2", "--out", tmp_path / "half")
    (tmp_path / "moved").mkdir()
    for name in ("d.csv", "v.csv"):
        (tmp_path / name).rename(tmp_path / "moved" / name)
    error = user_error(capsys, "train", "--resume", tmp_path / "half", "--epochs", "3")
    assert f"--data {tmp_path / 'd.csv'}" in error and "--data with where it is now" in error
    ok(capsys, "train", "--resume", tmp_path / "half", "--epochs", "3", "--data", tmp_path / "moved" / "d.csv",
       "--validation-data", tmp_path / "moved" / "v.csv")
    ok(capsys, "train", "--resume", tmp_path / "half", "--epochs", "4")  # the new paths were kept
    assert np.array_equal(gn.load(tmp_path / "half" / "last.npz").flat.values,
                          gn.load(tmp_path / "straight" / "last.npz").flat.values)
    frame(60, seed=9).to_csv(tmp_path / "other.csv", index=False)
    assert "changed" in user_error(capsys, "train", "--resume", tmp_path / "half", "--epochs", "5",
                                   "--data", tmp_path / "other.csv")


def test_the_index_pandas_writes_into_a_parquet_file_is_no_feature(capsys, tmp_path):
    """DataFrame.to_parquet stores a filtered frame's index as a column (__index_level_0__, or the index's
    name) that pandas.read_parquet turns back into the index: it is no feature (it was trained on, a
    row number leaking into the model, and then demanded from predict's files)."""
    data = frame(80)
    data.to_csv(tmp_path / "all.csv", index=False)
    kept = data[data["c"] > -1.5]
    kept.to_parquet(tmp_path / "kept.parquet")
    kept.set_index(pd.Index(np.arange(len(kept)) * 7, name="row_id")).to_parquet(tmp_path / "named.parquet")
    for name in ("kept", "named"):
        ok(capsys, "train", "--data", tmp_path / f"{name}.parquet", "--out", tmp_path / name, *FAST)
        assert list(gn.load(tmp_path / name / "last.npz").extras["features"]) == ["a", "b", "c"]
        ok(capsys, "predict", tmp_path / name, tmp_path / "all.csv")
    assert gn.data.TableDataset(tmp_path / "kept.parquet", target="label").features == 3


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_a_csv_separated_by_another_character_says_so(capsys, tmp_path, separator):
    """Semicolon-separated CSV (Excel in much of Europe) or tab-separated: one column named 'a;b;c;label'
    was reported as 'no label column', which points at --label, not at the separator."""
    frame(20).to_csv(tmp_path / "d.csv", index=False, sep=separator)
    error = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    assert f"separated by {separator!r}" in error and "commas" in error


def test_a_column_of_numbers_and_words_says_how_to_make_it_either(capsys, tmp_path):
    """A column like a school grade (K, 1, 2, 3) mixes words and numbers: the message pointed at --label;
    it says how many cells are text and how to make the column categories or numbers."""
    rng = np.random.default_rng(0)
    grades = rng.choice(["K", "1", "2", "3"], size=40)
    (tmp_path / "d.csv").write_text("x,grade,label\n" + "".join(f"{i},{g},{i % 2}\n" for i, g in enumerate(grades)))
    error = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    texts = int((grades == "K").sum())
    assert f"{texts} of its 40 cells are text" in error and "categories" in error and "--label" not in error


def test_npz_labels_as_a_column_vector_or_one_hot(capsys, tmp_path):
    """y saved as a column (n, 1), as scikit-learn and Keras take it, is the same labels as y of shape (n,);
    one-hot labels (n, classes), as Keras's categorical_crossentropy takes them, are refused with the fix."""
    data = frame()
    x, y = data[["a", "b", "c"]].to_numpy(), data["label"].to_numpy()
    np.savez(tmp_path / "flat.npz", X=x, y=y)
    np.savez(tmp_path / "column.npz", X=x, y=y[:, None])
    np.savez(tmp_path / "onehot.npz", X=x, y=np.eye(2)[y])
    for name in ("flat", "column"):
        ok(capsys, "train", "--data", tmp_path / f"{name}.npz", "--out", tmp_path / name, *FAST)
    assert np.array_equal(gn.load(tmp_path / "flat" / "last.npz").flat.values,
                          gn.load(tmp_path / "column" / "last.npz").flat.values)
    ok(capsys, "train", "--data", tmp_path / "column.npz", "--task", "regress", "--out", tmp_path / "r", *FAST)
    assert "one-hot" in user_error(capsys, "train", "--data", tmp_path / "onehot.npz", "--out", tmp_path / "o", *FAST)


def test_a_category_column_is_read_as_text_in_every_file_whatever_its_cells_look_like(capsys, tmp_path):
    """Categories True/False/Unknown: a predict, validation or test file holding only True and False was
    read as booleans (numbers) and refused as 'numbers where the training data had categories'; so were
    codes like 1 and 2 of a column whose other categories are words... once the column is text, it is
    read as text in every file."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=90).round(4)
    answer = rng.choice(["True", "False", "Unknown"], size=90)
    (tmp_path / "d.csv").write_text("x,answer,label\n" + "".join(
        f"{a},{b},{'y' if a > 0 else 'n'}\n" for a, b in zip(x, answer)))
    (tmp_path / "v.csv").write_text("x,answer,label\n0.5,True,y\n-1,False,n\n0.3,False,y\n")
    (tmp_path / "p.csv").write_text("answer,x\nTrue,0.5\nFalse,-1\n")
    (tmp_path / "p3.csv").write_text("answer,x\nTrue,0.5\nFalse,-1\nUnknown,2\n")
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--validation-data", tmp_path / "v.csv",
       "--out", tmp_path / "run", *FAST)
    two = ok(capsys, "predict", tmp_path / "run", tmp_path / "p.csv")[0].splitlines()
    three = ok(capsys, "predict", tmp_path / "run", tmp_path / "p3.csv")[0].splitlines()
    assert two == three[:3]


@pytest.mark.parametrize("compression", ["gz", "bz2"])
def test_a_compressed_csv_trains_and_predicts_as_the_csv_does(capsys, tmp_path, compression):
    """pandas.read_csv reads data.csv.gz as data.csv (PyArrow's reader decompresses by the extension too):
    it was an 'unknown file type'."""
    data = frame()
    data.to_csv(tmp_path / "d.csv", index=False)
    data.to_csv(tmp_path / f"d.csv.{compression}", index=False)
    for name in ("d.csv", f"d.csv.{compression}"):
        ok(capsys, "train", "--data", tmp_path / name, "--out", tmp_path / name.replace(".", "_"), *FAST)
    assert np.array_equal(gn.load(tmp_path / "d_csv" / "last.npz").flat.values,
                          gn.load(tmp_path / f"d_csv_{compression}" / "last.npz").flat.values)
    assert ok(capsys, "predict", tmp_path / "d_csv", tmp_path / f"d.csv.{compression}")[0] == \
        ok(capsys, "predict", tmp_path / "d_csv", tmp_path / "d.csv")[0]


@pytest.mark.parametrize("encoding,message", [("latin-1", "not UTF-8"), ("utf-16", "UTF-16")])
def test_a_csv_in_another_encoding_says_to_save_it_as_utf8(capsys, tmp_path, encoding, message):
    """Latin-1 text read as 'binary values; use numbers or text', UTF-16 as 'rows have another number
    of cells': neither named the encoding (pandas.read_csv raises UnicodeDecodeError)."""
    rows = "x,city,label\n" + "".join(f"{i},{'Köln' if i % 2 else 'Zürich'},{'ab'[i % 3 == 0]}\n" for i in range(30))
    (tmp_path / "d.csv").write_bytes(rows.encode(encoding))
    error = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    assert message in error and "save it as UTF-8" in error


@pytest.mark.parametrize("spelling", ["{:,}", "${}", "{}%", "€{:,}"])
def test_numbers_written_with_separators_or_signs_are_refused_not_one_hot_encoded(capsys, tmp_path, spelling):
    """A price column written "1,234" (or $5, 12 %) is text to the CSV reader, and was one-hot encoded
    silently: one input per distinct price, and any new price at predict an unseen category."""
    rng = np.random.default_rng(0)
    prices = rng.integers(1000, 5000, size=60)
    (tmp_path / "d.csv").write_text("price,label\n" + "".join(
        f'"{spelling.format(p)}",{"ab"[int(p > 3000)]}\n' for p in prices))
    error = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    assert "column 'price' holds numbers written with" in error and "plain numbers" in error


def test_impute_of_a_column_empty_in_every_training_row_names_it_and_the_fix(capsys, tmp_path):
    """No statistic exists for a column with no value (pandas' mean is NaN, scikit-learn's SimpleImputer
    drops the column with a warning): one line naming the column and saying to drop it."""
    data = frame(40)
    data["b"] = np.nan
    data.to_csv(tmp_path / "d.csv", index=False)
    error = user_error(capsys, "train", "--data", tmp_path / "d.csv", "--impute", "mean", "--out", tmp_path / "run",
                       *FAST)
    assert "column 'b' has no value in the training rows" in error and "drop the column" in error

"""User data files: columns and labels are read as the user wrote them, or refused with a
DataError that names the file and the fix (issue 14)."""

import os

import numpy as np
import pytest

from gpunn.cli.data import DataError, Standardizer, encode_labels, load_files, read_table, regression_targets
from gpunn.cli.encoding import Encoding


def load_table(path, label="label", task="auto"):
    """One file as gpunn train reads it: its labels, and its columns encoded (numbers stay as they are)."""
    data = load_files(path, label, task)
    table = data.files[0][1]
    data.X = Encoding.fit(table, np.arange(table.rows), None, path).encode(table, path)
    return data


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    path = write(tmp_path / "bom.csv", "label,a,b\n0,1,2\n1,3,4\n", encoding="utf-8-sig")
    data = load_table(path)
    assert data.features == ["a", "b"] and data.X.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("header,message", [("label,a,label", "'label' more than once"),
                                            ("a,b,a,label", "'a' more than once"),
                                            ("a, b ,b,label", "'b' more than once"),
                                            ("a,,label,", "column\\(s\\) 2, 4 have no name")])
def test_a_header_must_name_each_column_once(tmp_path, header, message):
    width = len(header.split(","))
    path = write(tmp_path / "d.csv", header + "\n" + "\n".join([",".join(["1"] * width)] * 3) + "\n")
    with pytest.raises(DataError, match=message):
        load_table(path)


def test_labels_are_text_not_floats(tmp_path):
    big = 2**53 + 1  # float64 would merge it with 2**53
    rows = [f"{big},1", f"{2**53},2", "02134,3", "2134,4", f"{big},5", "2134,6"]
    path = write(tmp_path / "codes.csv", "label,x\n" + "\n".join(rows) + "\n")
    data = load_table(path)
    assert data.classes.tolist() == ["02134", "2134", str(2**53), str(big)]  # by value, then text
    assert data.y.tolist() == [3, 2, 0, 1, 3, 1]


def test_classes_sort_by_value_when_numeric(tmp_path):
    path = write(tmp_path / "d.csv", "label,x\n10,1\n2,2\n1,3\n10,4\n")
    assert load_table(path).classes.tolist() == ["1", "2", "10"]


@pytest.mark.parametrize("cell", ["", "  "])
def test_an_empty_label_cell_is_refused(tmp_path, cell):
    path = write(tmp_path / "d.csv", f"label,x\na,1\n{cell},2\nb,3\n")
    with pytest.raises(DataError, match="1 rows have an empty label \\(first: data row 2\\)"):
        load_table(path)


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity"])
def test_non_finite_numeric_labels_are_refused(tmp_path, cell):
    path = write(tmp_path / "d.csv", f"label,x\n1,1\n{cell},2\n2,3\n")
    with pytest.raises(DataError, match=r"labels contain NaN or Inf \(1 rows, first: data row 2\)"):
        load_table(path)


def test_a_non_finite_label_in_npz_or_npy_names_its_row(tmp_path):
    """The docs promise an error naming the rows of a missing target: .npz/.npy float labels said only
    'labels contain NaN or Inf'."""
    x = np.zeros((5, 2))
    y = np.array([0.0, 1.0, 0.0, np.nan, 1.0])
    np.savez(tmp_path / "d.npz", X=x, y=y)
    np.save(tmp_path / "d.npy", np.column_stack([x, y]))
    for name in ("d.npz", "d.npy"):
        with pytest.raises(DataError, match=r"labels contain NaN or Inf \(1 rows, first: data row 4\)"):
            load_files(tmp_path / name)


def quantity_csv(tmp_path, rows=60, integers=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2))
    y = 3 * x[:, 0] - x[:, 1] + 10
    y = np.round(y * 100).astype(int) if integers else y
    lines = [f"{a:.6f},{b:.6f},{t}" for (a, b), t in zip(x, y)]
    return write(tmp_path / "q.csv", "a,b,price\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize("integers", [False, True])
def test_a_numeric_quantity_is_not_silently_classes(tmp_path, integers):
    path = quantity_csv(tmp_path, integers=integers)
    with pytest.raises(DataError, match="--task regress"):
        load_table(path, "price")
    assert len(load_table(path, "price", task="classify").classes) > 20  # forced on purpose: allowed
    data = load_table(path, "price", task="regress")
    assert data.classes is None and data.y.dtype == np.float64 and len(data.y) == 60


def test_regression_targets_must_be_numbers(tmp_path):
    path = write(tmp_path / "d.csv", "label,x\n1.5,1\ncat,2\n")
    with pytest.raises(DataError, match="--task regress needs numbers .* found 'cat'"):
        load_table(path, task="regress")
    with pytest.raises(DataError, match="every target is 3"):
        regression_targets(np.array([3.0, 3.0]), "t")


def test_no_feature_columns(tmp_path):
    with pytest.raises(DataError, match="no feature columns"):
        load_table(write(tmp_path / "d.csv", "label\na\nb\n"))
    np.savez(tmp_path / "d.npz", X=np.ones((3, 0)), y=np.arange(3))
    with pytest.raises(DataError, match="no feature columns"):
        load_table(tmp_path / "d.npz")


def test_bad_feature_cells_are_named(tmp_path):
    path = write(tmp_path / "d.csv", "label,a,b\nx,1,2\ny,3,oops\n")
    with pytest.raises(DataError, match="column 'b' holds 'oops' in data row 2"):
        load_table(path)


def test_npz_files(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    os.rename(tmp_path / "x.npy", tmp_path / "x.npz")
    with pytest.raises(DataError, match="a single .npy array renamed .npz"):
        read_table(tmp_path / "x.npz")
    np.savez(tmp_path / "c.npz", X=np.ones((3, 2)) * 1j, y=np.arange(3))
    with pytest.raises(DataError, match="complex"):
        read_table(tmp_path / "c.npz")
    np.savez(tmp_path / "f.npz", X=np.ones((4, 2)), y=np.array([1.0, 2.0, 1.0, 2.0]))
    assert load_table(tmp_path / "f.npz").classes.tolist() == ["1", "2"]
    np.savez(tmp_path / "g.npz", X=np.ones((4, 2)), y=np.array([0.5, 2.0, 1.0, 2.0]))
    with pytest.raises(DataError, match="non-integer numbers"):
        load_table(tmp_path / "g.npz")


def test_encode_labels_refuses_one_class():
    with pytest.raises(DataError, match="1 class"):
        encode_labels(np.array(["a", "a"]), "f")


@pytest.mark.parametrize("magnitude", [1e200, 1e-200, 1e300, 1.0])
def test_standardizer_survives_extreme_magnitudes(rng, magnitude):
    column = rng.normal(size=50) * magnitude + 3 * magnitude
    X = np.stack([column, np.full(50, 7.0)], axis=1)
    scaled = Standardizer.fit(X)(X)
    assert np.all(np.isfinite(scaled))
    unit = column / magnitude  # the reference, computed where nothing overflows or underflows
    np.testing.assert_allclose(scaled[:, 0], (unit - unit.mean()) / unit.std(), rtol=1e-9, atol=1e-9)
    assert np.all(scaled[:, 1] == 0)  # a constant column stays finite (std 1)


def test_random_number_cells_read_as_python_reads_them(tmp_path, rng):
    """Cells in the spellings people write (exponents, signs, padding, many digits, missing markers)
    read by PyArrow as Python's float() reads them; a missing marker is NaN."""
    spellings = [lambda v: repr(v), lambda v: f"{v:.3e}", lambda v: f"  {v:+.5f} ", lambda v: f"{v:.17g}",
                 lambda v: f"{v:E}", lambda v: str(int(v * 1000))]
    missing = ["", "NA", "nan", "NaN", "null", "N/A"]
    cells = []
    for _ in range(200):
        row = []
        for column in range(5):
            if rng.random() < 0.05:
                row.append(missing[rng.integers(len(missing))])
            else:
                row.append(spellings[rng.integers(len(spellings))](float(rng.normal() * 10.0 ** rng.integers(-8, 9))))
        cells.append(row)
    with open(tmp_path / "r.csv", "w") as file:
        file.write("a,b,c,d,e,label\n" + "".join(",".join(row) + f",{i % 2}\n" for i, row in enumerate(cells)))
    table = read_table(tmp_path / "r.csv")
    expected = np.array([[np.nan if cell.strip() in missing else float(cell) for cell in row] for row in cells])
    np.testing.assert_array_equal(np.column_stack(table.columns), expected)

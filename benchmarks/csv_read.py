"""How long reading a CSV for gpunn train takes, and how much memory it peaks at, each reader in a fresh
process (so one reader's freed memory does not hide another's peak):

    python benchmarks/csv_read.py make data.csv               # about 7.6 MB: 78,500 rows, 10 features + label
    python benchmarks/csv_read.py arrow data.csv              # gpunn's reader (PyArrow), then the float64 matrix
    python benchmarks/csv_read.py loop data.csv OLD_TREE      # the Python csv loop, from a checkout before it went
    python benchmarks/csv_read.py loadtxt data.csv            # np.loadtxt, the reference

Each prints the seconds of the read and the process's peak RSS (ru_maxrss), before and after it.
"""

import resource
import sys
import time

import numpy as np


def make(path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(78_500, 10))
    label = rng.integers(0, 3, size=78_500)
    header = ",".join([f"f{i}" for i in range(10)] + ["label"])
    np.savetxt(path, np.column_stack([x, label]), fmt=["%.6f"] * 10 + ["%d"], delimiter=",", header=header, comments="")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(mode, path, tree=None):
    if mode == "make":
        return make(path)
    if mode == "loop":
        sys.path.insert(0, tree)
    import gpunn.cli.data as data  # noqa: E402  (imported before the clock starts, like numpy)

    if mode == "arrow":
        import pyarrow.csv  # noqa: F401  (loaded before the clock, as the imports of the others)
    before = peak_mib()
    started = time.perf_counter()
    if mode == "loadtxt":
        X = np.loadtxt(path, delimiter=",", skiprows=1)
        rows = X.shape[0]
    elif mode == "loop":
        rows = data.read_features(path).X.shape[0]
    else:  # the table read, then encoded into the float64 matrix the loop returns
        from gpunn.cli.encoding import Encoding

        table = data.read_table(path)
        rows = Encoding.fit(table, np.arange(table.rows), None, path).encode(table, path).shape[0]
    seconds = time.perf_counter() - started
    print(f"{mode}: {rows} rows in {seconds:.3f} s; peak RSS {before:.0f} MiB before the read, {peak_mib():.0f} MiB "
          f"after ({data.__file__})")


if __name__ == "__main__":
    main(*sys.argv[1:])

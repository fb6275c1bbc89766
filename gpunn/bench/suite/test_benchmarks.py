"""The benchmark cases, each timed for every peer that can run it, grouped for the report.

Every step waits for its device; each case is warmed up first, so compilation, handle creation
and memory-pool growth stay out of the numbers. ``extra_info`` records what the report needs:
device, versions, dtype, TF32, threads, and the case's FLOPs and bytes.
"""

import contextlib

import pytest
from peers import PEERS, train_case
from stream_epoch import BATCH, FEATURES, run_child, write_files

import gpunn as gn

DTYPE = "float32"
ITEMSIZE = 4
WARM_UP_CALLS = 3


def cases(*, quick, cpu, gpu, peers=None, graphs=False):
    """Attach per-device case lists to a benchmark; ``pytest_generate_tests`` expands them.
    CUDA-graph peers run only where ``graphs`` is set."""

    def attach(function):
        function.case_lists = {"quick": quick, "cpu": cpu, "gpu": gpu}
        function.peer_filter = peers
        function.graphs = graphs
        return function

    return attach


def pytest_generate_tests(metafunc):
    lists = getattr(metafunc.function, "case_lists", None)
    if lists is None:
        return
    quick = metafunc.config.getoption("--quick")
    params = []
    for name, peer in PEERS.items():
        if metafunc.function.peer_filter and peer.library not in metafunc.function.peer_filter:
            continue
        if peer.graph and not metafunc.function.graphs:
            continue
        chosen = lists["gpu"] if peer.device == "gpu" else lists["quick"] if quick else lists["cpu"]
        params += [(peer.device, chosen.index(case), name, case) for case in chosen]
    # Case-major: the peers of one case run back to back, so a slow minute of this shared machine
    # falls on both sides of a ratio, not on one library's cases while the other's ran earlier.
    params.sort(key=lambda param: param[:2])
    metafunc.parametrize("peer,case", [(name, case) for *_, name, case in params],
                         ids=[f"{name}-{case}" for *_, name, case in params], indirect=["peer"])


@contextlib.contextmanager
def precision(peer, tf32: bool):
    """TF32 on both sides or on neither, restored afterwards."""
    if peer.library == "torch":
        import torch

        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
        return
    before = gn.get_matmul_precision()
    gn.set_matmul_precision("tf32" if tf32 else "highest")
    try:
        yield
    finally:
        gn.set_matmul_precision(before)


def measure(benchmark, peer, step, group, case, threads, impl=None, flops=0, moved_bytes=0, tf32=False,
            dtype=DTYPE, **info):
    for _ in range(WARM_UP_CALLS):
        step()
    benchmark.group = group
    benchmark.extra_info.update(
        impl=impl or peer.name, library=peer.library, device=peer.device, device_name=peer.device_name(),
        versions=peer.versions(), dtype=dtype, tf32=tf32, threads=threads, case=str(case),
        flops=flops, bytes=moved_bytes, **info)
    benchmark(step)


MATMUL_SHAPES = {"quick": ["square-512", "mlp-256x784x1024"],
                 "cpu": ["square-1024", "square-2048", "mlp-256x784x1024", "mlp-256x1024x1024"],
                 "gpu": ["square-4096", "square-8192", "mlp-128x784x512", "mlp-8192x4096x4096"]}


def matmul_dims(case):
    kind, size = case.split("-")
    return (int(size),) * 3 if kind == "square" else tuple(int(v) for v in size.split("x"))


@pytest.mark.parametrize("op", ["forward", "grad_input", "grad_weight"])
@cases(**MATMUL_SHAPES)
def test_matmul(benchmark, peer, case, op, rng, threads):
    n, k, m = matmul_dims(case)
    measure(benchmark, peer, peer.matmul(op, n, k, m, DTYPE, rng), "matmul", f"{op} {case}", threads,
            flops=2 * n * k * m, moved_bytes=ITEMSIZE * {"forward": n * k + k * m + n * m,
                                                         "grad_input": n * m + k * m + n * k,
                                                         "grad_weight": n * k + n * m + k * m}[op])


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "gelu", "silu"])
@cases(quick=[16, 20], cpu=[16, 20, 24, 26], gpu=[16, 20, 24, 26, 28])
def test_activation(benchmark, peer, case, activation, direction, rng, threads):
    elements = 2 ** case
    cols = 1024
    measure(benchmark, peer, peer.activation(activation, direction, elements // cols, cols, DTYPE, rng),
            "activation", f"{activation} {direction} 2^{case}", threads,
            moved_bytes=(2 if direction == "forward" else 3) * elements * ITEMSIZE, elements=elements)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@cases(quick=["128x512x512"], cpu=["256x1024x1024"], gpu=["8192x4096x4096"])
def test_dense(benchmark, peer, case, activation, rng, threads):
    batch, inputs, outputs = (int(v) for v in case.split("x"))
    measure(benchmark, peer, peer.dense(batch, inputs, outputs, activation, DTYPE, rng), "dense",
            f"{activation} {case}", threads, flops=3 * 2 * batch * inputs * outputs)


TRAIN_CASES = {"quick": ["S", "CPU", "GELU", "CPU-adam"], "cpu": ["S", "CPU", "GELU", "M", "S-adam", "CPU-adam",
                                                                  "CPU-adamw"],
               "gpu": ["S", "M", "L", "L-tf32", "L-fp16", "CPU", "GELU", "S-adam", "L-adam"]}


@cases(graphs=True, **TRAIN_CASES)
def test_train_step(benchmark, peer, case, rng, threads):
    config, dtype, tf32, optimizer = train_case(case, DTYPE)
    with precision(peer, tf32):
        measure(benchmark, peer, peer.train_step(config, dtype, rng, optimizer), "train-step", case, threads,
                flops=config.gemm_flops(), tf32=tf32, dtype=dtype, sizes=list(config.sizes), batch=config.batch)


@cases(peers={"gpunn"}, **TRAIN_CASES)
def test_train_step_gemm_floor(benchmark, peer, case, rng, threads):
    """The step's GEMMs alone, timed in the same run: the floor a training step is judged against."""
    config, dtype, tf32, _ = train_case(case, DTYPE)
    with precision(peer, tf32):
        measure(benchmark, peer, peer.gemm_floor(config, dtype, rng), "train-step", case, threads,
                impl=f"gemm-floor-{peer.device}", flops=config.gemm_flops(), tf32=tf32, dtype=dtype)


@cases(quick=["digits"], cpu=["digits"], gpu=["digits"])
def test_epoch(benchmark, peer, case, threads):
    from gpunn.cli.data import DataError, Standardizer, load_digits

    try:
        digits = load_digits()
    except DataError as error:
        pytest.skip(str(error))
    x = Standardizer.fit(digits.X)(digits.X)
    measure(benchmark, peer, peer.epoch((x, digits.y), DTYPE, seed=0), "epoch", case, threads,
            flops=3 * 2 * len(x) * (64 * 128 + 128 * 64 + 64 * 10), samples=len(x))


@cases(peers={"gpunn"}, quick=["copy-2^16", "copy-2^20", "copy-2^24", "matmul-1024"],
       cpu=["copy-2^16", "copy-2^20", "copy-2^24", "copy-2^26", "matmul-2048"],
       gpu=["copy-2^16", "copy-2^20", "copy-2^24", "copy-2^26", "copy-2^28", "matmul-8192", "matmul-8192-tf32",
            "matmul-8192-fp16"])
def test_ceiling(benchmark, peer, case, rng, threads):
    """The device's copy bandwidth and matmul rate, measured in the same run as the cases. Copies
    of every activation size: a small case runs from cache and is judged against a copy in cache
    (a forward moves 2 arrays: z in, y out; a backward 3: dy and y in, dx out)."""
    kind, size = case.split("-")[:2]
    tf32, dtype = case.endswith("tf32"), "float16" if case.endswith("fp16") else DTYPE
    if kind == "copy":
        elements = 2 ** int(size[2:])
        measure(benchmark, peer, peer.copy(elements, DTYPE, rng), "ceiling", case, threads,
                moved_bytes=2 * elements * ITEMSIZE)
        return
    n = int(size)
    with precision(peer, tf32):
        measure(benchmark, peer, peer.matmul("forward", n, n, n, dtype, rng), "ceiling", case, threads,
                flops=2 * n ** 3, tf32=tf32, dtype=dtype)


@pytest.mark.parametrize("direction", ["host_to_device", "device_to_host"])
@cases(quick=[], cpu=[], gpu=["2^24"])
def test_transfer(benchmark, peer, case, direction, rng, threads):
    elements = 2 ** int(case[2:])
    measure(benchmark, peer, peer.transfer(direction, elements, DTYPE, rng), "transfer", f"{direction} {case}",
            threads, moved_bytes=elements * ITEMSIZE)


MMAP_CASES = {"quick": ["64MB"], "cpu": ["2GB"], "gpu": ["2GB"]}


@pytest.fixture(scope="module")
def mmap_files(tmp_path_factory):
    """A float32 .npy of 256 features per row, of each size the cases name, written a block at a time
    (stream_epoch.write_files), and its targets."""
    made = {}

    def make(case):
        if case not in made:
            made[case] = write_files(tmp_path_factory.mktemp("mmap"), case)
        return made[case]

    return make


@pytest.mark.parametrize("source", ["mmap", "memory"])
@cases(peers={"gpunn"}, **MMAP_CASES)
def test_mmap_epoch(benchmark, peer, case, source, mmap_files, threads):
    """One epoch of a 256-64-1 MLP over a float32 .npy: streamed from a memory map (gpunn.data: contiguous
    chunks, a reading thread, reused host buffers) or loaded whole first. ``peak_rss_mb``: the peak
    resident memory (``VmHWM``) of a fresh process that runs the same fit for two epochs, and
    ``child_epoch_seconds`` its second epoch (``stream_epoch.py``, which also prints the ratio)."""
    import numpy as np

    x_path, t_path = mmap_files(case)
    x = np.load(x_path, mmap_mode="r") if source == "mmap" else np.load(x_path)
    targets = np.load(t_path)
    with gn.use_backend(peer.backend_name):
        model = gn.Sequential(gn.Dense(FEATURES, 64, seed=0), gn.Tanh(), gn.Dense(64, 1, seed=1))
    optimizer = gn.SGD(lr=0.01)
    epoch = peer._synced(lambda: model.fit(x, targets, loss=gn.MSELoss(), optimizer=optimizer, epochs=1,
                                           batch_size=BATCH, seed=0, verbose=0))
    measure(benchmark, peer, epoch, "epoch", f"{source} {case}", threads, impl=f"gpunn-{peer.device}-{source}",
            moved_bytes=x.nbytes, samples=len(x))
    del x
    child = run_child(x_path, t_path, source, epochs=1, backend=peer.backend_name)
    benchmark.extra_info.update(peak_rss_mb=child["peak_rss_mb"], child_epoch_seconds=child["seconds"][0])

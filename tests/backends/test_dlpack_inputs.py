"""Arrays of other libraries (PyTorch, JAX: anything that speaks DLPack) go into fit, evaluate, predict,
predict_proba and forward on the model's device without a copy where the layout allows, and with an
error naming both devices where they cannot (issue 23)."""

import numpy as np
import pytest

import gpunn as gn


class Producer:
    """Another library's CPU array: it speaks DLPack (by way of a NumPy array it owns) and nothing else."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **options):
        return self._array.__dlpack__(**options)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_any_dlpack_producer_is_read_in_place_on_the_cpu(rng):
    """Without PyTorch: a producer that is not NumPy goes through np.from_dlpack, with no copy."""
    with gn.use_backend("numpy"):
        x = rng.normal(size=(6, 3))
        model = gn.Sequential(gn.Dense(3, 4, seed=0, dtype="float64"), gn.Tanh())
        assert np.shares_memory(model.as_input(Producer(x)), x)
        np.testing.assert_array_equal(model.predict(Producer(x)), model.predict(x))
        labels = np.arange(6) % 2
        model.fit(Producer(x), Producer(labels), loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1),
                  epochs=1, verbose=0)


def needs_torch():
    return pytest.importorskip("torch", reason="PyTorch is the DLPack producer this test uses")


class OnDevice:
    """An array that says it lives on another device (DLPack's device type and id)."""

    def __init__(self, device_type, device_id):
        self.device = (device_type, device_id)

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, **options):
        raise AssertionError("the data of an array on another device must not be read")


def mlp(dtype="float64"):
    return gn.Sequential(gn.Dense(3, 8, seed=0, dtype=dtype), gn.Tanh(), gn.Dense(8, 2, seed=1, dtype=dtype))


def test_torch_cpu_tensors_are_shared_not_copied_and_give_numpys_results(backend, rng):
    torch = needs_torch()
    x = rng.normal(size=(12, 3))
    labels = rng.integers(0, 2, size=12)
    tx, tlabels = torch.from_numpy(x.copy()), torch.from_numpy(labels.copy())
    if backend.host_resident:  # the NumPy backend reads the tensor's memory in place
        assert np.shares_memory(mlp().as_input(tx), tx.numpy())
    results = {}
    for name, (inputs, targets) in {"numpy": (x, labels), "torch": (tx, tlabels)}.items():
        model = mlp()
        history = model.fit(inputs, targets, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.01),
                            epochs=2, batch_size=4, seed=3, verbose=0)
        results[name] = (history["loss"], model.evaluate(inputs, targets, gn.SoftmaxCrossEntropyLoss())["loss"],
                         model.predict(inputs), model.predict_proba(inputs), backend.to_numpy(model.forward(inputs)))
    for ours, theirs in zip(results["torch"], results["numpy"]):
        np.testing.assert_array_equal(ours, theirs)


def test_a_float32_tensor_into_a_float64_model_is_converted(backend):
    torch = needs_torch()
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    np.testing.assert_allclose(mlp().predict(tensor), mlp().predict(tensor.numpy().astype(np.float64)))


def test_a_tensor_that_requires_grad_is_a_clear_error_with_torchs_fix(backend):
    torch = needs_torch()
    with pytest.raises(TypeError, match="cannot be shared through DLPack.*detach"):
        mlp().predict(torch.ones(2, 3, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("device,named", [((2, 0), "cuda:0"), ((13, 0), "cuda_managed:0"), ((8, 0), "metal:0")])
def test_an_array_on_a_gpu_is_refused_by_the_numpy_backend_naming_both_devices(device, named):
    with gn.use_backend("numpy"):
        model = mlp()
        with pytest.raises(ValueError, match=f"the array is on {named} but the numpy backend computes on the CPU"):
            model.predict(OnDevice(*device))
        with pytest.raises(ValueError, match=f"on {named}"):
            model.fit(OnDevice(*device), np.zeros(2, int), loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(),
                      verbose=0)


def test_an_array_on_another_gpu_is_refused_by_the_cupy_backend_naming_both():
    from support import cupy_standin

    with cupy_standin.installed(), gn.use_backend("cupy"):
        model = mlp()
        with pytest.raises(ValueError, match=r"the array is on cuda:1 but the model is on cuda:0"):
            model.predict(OnDevice(2, 1))
        with pytest.raises(ValueError, match="the array is on metal:0, which the cupy backend cannot read"):
            model.predict(OnDevice(8, 0))

"""Small models the tests of several concerns train."""

import gpunn as gn


def mlp(backend, dtype="float64", seed=0, widths=(6, 12, 3)):
    with gn.use_backend(backend):
        layers = []
        for index, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
            layers.append(gn.Dense(n_in, n_out, dtype=dtype, seed=seed + index))
            if index < len(widths) - 2:
                layers.append(gn.Tanh())
        return gn.Sequential(*layers)

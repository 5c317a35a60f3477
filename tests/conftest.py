import itertools

import pytest
import torch
from hypothesis import settings

settings.register_profile("torchbp", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("torchbp")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def chain(widths=(2, 3, 1), bias=True, dtype=torch.float64, last_sigmoid=True):
    """A torch.nn.Sequential of Linear layers of the given widths, each followed by a Sigmoid
    (the last one optional)."""
    torch.manual_seed(0)
    layers = []
    for n_in, n_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(n_in, n_out, bias=bias), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*(layers if last_sigmoid else layers[:-1])).to(dtype)


def chain_data(n, widths, dtype=torch.float64, middle=()):
    """Inputs and targets for :func:`chain`: n samples (with optional middle dimensions)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *middle, widths[0], generator=generator, dtype=torch.float64)
    y = torch.rand(n, *middle, widths[-1], generator=generator, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def per_sample_by_torch_func(model, loss_fn, x, target):
    """Each sample's gradient of every parameter by torch.func.vmap(torch.func.grad(...)) over functional_call
    of ``model`` on that sample alone (its buffers as they are): what torchbp.per_sample_grads is held to."""
    params = {key: p.detach() for key, p in model.named_parameters()}

    def one(params, x_n, target_n):
        return loss_fn(torch.func.functional_call(model, params, (x_n[None],)), target_n[None])

    return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, x, target)


# What a normalisation's backward keeps (torchbp.hand_derived.save_for_normalisation_backward), by the inputs
# that want a gradient: (wanted, saved), for layer, group and batch norm alike.
SAVED_BY_A_NORMALISATION = [
    ({"x", "weight", "bias"}, ["x", "μ", "rstd", "weight"]),
    ({"x"}, ["x", "μ", "rstd", "weight"]),  # ∂J/∂x reads γ
    ({"weight"}, ["x", "μ", "rstd"]),  # Σ g ⊙ x̃ reads x̃ = (x − μ) · rstd
    ({"bias"}, []),  # Σ g reads nothing saved
]


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped elsewhere")

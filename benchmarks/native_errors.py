"""What torch's own kernels give without fastmaml's exact routing, for every family of the layer matrix.

For each family of ``tests/test_layer_matrix.py`` (float64, two inner steps, second order), the
meta-gradient of the vmap and loop paths with the routing switched off (``maml.exact_bn = False``:
the kernels as torch runs them; attention on torch's math backend, so that second order can run at all)
against the plain autograd reference, as the norm of the difference over the norm of the reference.
"fails" gives the first words of the error. RESULTS.md ("Exact for every stock layer") quotes it.

Run (from the repository root)::

    PYTHONPATH=src python benchmarks/native_errors.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastmaml as fm

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_layer_matrix import FAMILIES, LR, STEPS, problem, reference  # noqa: E402


def native_error(model, batch, expected, execution: str, math_attention: bool) -> str:
    model.zero_grad(set_to_none=True)
    maml = fm.MAML(model, LR, STEPS, False, F.mse_loss, execution=execution)
    maml.exact_bn = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if math_attention:
                with sdpa_kernel([SDPBackend.MATH]):
                    maml.outer_loss(batch).backward()
            else:
                maml.outer_loss(batch).backward()
    except (RuntimeError, NotImplementedError) as error:
        return "fails: " + " ".join(str(error).split()[:8])
    got = torch.cat([model.get_parameter(n).grad.flatten() for n in expected])
    reference_flat = torch.cat([g.flatten() for g in expected.values()])
    return f"{((got - reference_flat).norm() / reference_flat.norm()).item():.1e}"


def main() -> None:
    print(f"torch {torch.__version__}; second order, float64, routing off")
    print("| family | vmap | loop | vmap, math attention |")
    print("|---|---|---|---|")
    for family, case in FAMILIES.items():
        model, batch = problem(case)
        expected = reference(model, batch, False, case)
        cells = [native_error(model, batch, expected, execution, math)
                 for execution, math in (("vmap", False), ("loop", False), ("vmap", True))]
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

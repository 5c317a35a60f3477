"""Check the derivation's 2-3-1 sigmoid network against native autograd and print the report."""

import sys

import torch

import torchbp


def main() -> int:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3, bias=False), torch.nn.Sigmoid(), torch.nn.Linear(3, 1, bias=False), torch.nn.Sigmoid()
    ).double()
    x, y = torch.rand(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    report = torchbp.check_model(model, torchbp.nn.MSELoss(reduction="sum"), x, y)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

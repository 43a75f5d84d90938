"""The exact toy of the sampler and likelihood tests: V = 3 real tokens plus the mask, L = 4, so
all 81 sequences can be enumerated; a toy denoiser, a toy AR model and an energy table."""

import itertools

import torch

V, L, MASK = 3, 4, 3
SEQS = torch.tensor(list(itertools.product(range(V), repeat=L)))  # [81, L]
POW = torch.tensor([V**i for i in range(L - 1, -1, -1)])
ENERGY = torch.randn(81, generator=torch.Generator().manual_seed(1)) * 1.5


def seq_id(x):
    return (x * POW).sum(-1)


class ToyDenoiser:
    """mu(x0_l | xt): a fixed table per position, pulled towards the left neighbour's token when
    that neighbour is known (so mu depends on xt). Returns SUBS log-probs [B, L, V + 1]."""

    mask_id = MASK

    def __init__(self, seed=0):
        self.base = torch.randn(L, V, generator=torch.Generator().manual_seed(seed)) * 1.2
        self.calls = 0
        self.times = []

    def __call__(self, xt, t):
        self.calls += 1
        self.times.append(t)
        B = xt.shape[0]
        logits = self.base.expand(B, L, V).clone()
        left = torch.cat([torch.full((B, 1), MASK), xt[:, :-1]], dim=1)
        known = left != MASK
        logits[known] += 1.5 * torch.nn.functional.one_hot(left[known], V).float()
        out = torch.cat([logits, torch.full((B, L, 1), float("-inf"))], dim=-1).log_softmax(-1)
        carry = torch.full_like(out, float("-inf")).scatter_(-1, xt[..., None], 0.0)
        return torch.where((xt != MASK)[..., None], carry, out)

    def proposal(self, xt):
        """mu(. | xt) over the 81 sequences, float64 (0 off the sequences consistent with xt)."""
        logp = self(xt[None], torch.ones(1))[0].double()  # [L, V + 1]
        return logp[torch.arange(L), SEQS].sum(-1).exp()


class ToyAR:
    """p_AR(x_l | x_<l) from the previous token (the mask id starts the sequence)."""

    def __init__(self):
        self.table = torch.randn(V + 1, V + 1, generator=torch.Generator().manual_seed(4)) * 1.5
        self.table[:, MASK] = float("-inf")

    def __call__(self, x):
        prev = torch.cat([torch.full((x.shape[0], 1), MASK), x[:, :-1]], dim=1)
        return self.table[prev]  # [N, L, V + 1]

    def log_cond(self, x):
        """log p_AR(x_l | x_<l), [N, L]."""
        return self(x).double().log_softmax(-1).gather(-1, x[..., None])[..., 0]

    def nll(self, x):
        return -self.log_cond(x).sum(-1)

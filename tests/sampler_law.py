"""The exact law of `edlm.sample` on small toys (V = 3 real tokens, any short length), by dynamic
programming over partial sequences: what the sampler-law tests compare 200k draws against.

The sampler draws each position's reveal time once, tau ~ U(0, 1), so a position still masked at
step i (time t_i) is revealed there with probability (t_i - t_{i+1}) / t_i, independently of the
others and of every token drawn; positions with tau below the grid's last time are filled by the
final step. A step reveals the positions S_i from one x0 drawn from pi_i(. | x): the factorized
proposal q on plain steps, and on importance-sampling steps the law of the chosen candidate, which
for K = 2 is the SIR density q_2(x) = 2 q(x) sum_z q(z) w(x) / (w(x) + w(z)) and for K -> inf the
target q w / sum q w, with w = exp(-E / T_is) * mu / q (the tempering correction).
"""

import itertools
import math

import torch

import edlm

V = 3
MASK = V


class LengthToy:
    """toy.ToyDenoiser for any length: a fixed table per position, pulled towards the left
    neighbour's token when that neighbour is known. Returns SUBS log-probs [B, n, V + 1]."""

    mask_id = MASK

    def __init__(self, length, seed=0):
        self.length = length
        self.base = torch.randn(length, V, generator=torch.Generator().manual_seed(seed)) * 1.2

    def __call__(self, xt, t):
        B, n = xt.shape
        logits = self.base.expand(B, n, V).clone()
        left = torch.cat([torch.full((B, 1), MASK), xt[:, :-1]], dim=1)
        known = left != MASK
        logits[known] += 1.5 * torch.nn.functional.one_hot(left[known], V).float()
        out = torch.cat([logits, torch.full((B, n, 1), float("-inf"))], dim=-1).log_softmax(-1)
        carry = torch.full_like(out, float("-inf")).scatter_(-1, xt[..., None], 0.0)
        return torch.where((xt != MASK)[..., None], carry, out)


def all_sequences(n):
    return torch.tensor(list(itertools.product(range(V), repeat=n)))  # [V^n, n]


def seq_index(x):
    """Index of each row of x [N, n] in all_sequences(n)."""
    n = x.shape[-1]
    return (x * torch.tensor([V**i for i in range(n - 1, -1, -1)])).sum(-1)


def step_law(
    denoiser,
    x,
    t,
    seqs,
    *,
    energy=None,
    num_candidates=1,
    energy_temperature=1.0,
    temperature=1.0,
    corrected=True,
    chunk=32,
):
    """pi(. | x) [S, V^n] (float64, 0 off the sequences that agree with x) for partial sequences
    x [S, n]: the law of the x0 one step of the sampler draws at time t from each."""
    S, n = x.shape
    logits = denoiser(x, torch.full((S,), t, dtype=torch.float32)).double()[..., :V]
    log_mu = logits.log_softmax(-1)  # [S, n, V]
    log_q = (logits / temperature).log_softmax(-1)
    masked = x == MASK  # [S, n]
    consistent = ((seqs[None] == x[:, None]) | masked[:, None]).all(-1)  # [S, V^n]
    idx = seqs.T[None].expand(S, n, len(seqs))  # [S, n, V^n]
    lmu = (log_mu.gather(-1, idx) * masked[..., None]).sum(1)  # [S, V^n], over masked positions
    lq = (log_q.gather(-1, idx) * masked[..., None]).sum(1)
    q = torch.where(consistent, lq.exp(), 0.0)
    if energy is None or num_candidates == 1:
        return q
    rows, cols = torch.nonzero(consistent, as_tuple=True)
    e = energy(
        seqs[cols],
        x[rows],
        torch.full((len(rows),), t, dtype=torch.float32),
        lmu[rows, cols].float(),
    ).double()
    log_w = torch.full_like(q, float("-inf"))
    log_w[rows, cols] = -e / energy_temperature
    if corrected:
        log_w = log_w + torch.where(consistent, lmu - lq, 0.0)
    w = (log_w - log_w.max(-1, keepdim=True).values).exp()  # [S, V^n], 0 off the consistent set
    if math.isinf(num_candidates):
        target = q * w
        return target / target.sum(-1, keepdim=True)
    if num_candidates != 2:
        raise ValueError("step_law: num_candidates must be 1, 2 or math.inf")
    out = torch.empty_like(q)
    for a in range(0, S, chunk):  # q_2(x) = 2 q(x) E_{z ~ q}[w(x) / (w(x) + w(z))]
        wx, wz, qc = w[a : a + chunk, :, None], w[a : a + chunk, None, :], q[a : a + chunk]
        ratio = torch.where(wx > 0, wx / (wx + wz), 0.0)  # [chunk, V^n, V^n]
        out[a : a + chunk] = 2 * qc * (ratio * qc[:, None, :]).sum(-1)
    return out


def exact_law(
    denoiser,
    length,
    steps,
    *,
    energy=None,
    num_candidates=1,
    window=1.0,
    energy_temperature=1.0,
    temperature=1.0,
    final="sample",
    corrected=True,
    prompt=None,
):
    """The law of edlm.sample(denoiser, ..., final=final) over all V^length sequences [V^n],
    float64. num_candidates: 1, 2 or math.inf (the step's target itself). corrected=False: the
    law of a sampler without the tempering correction log mu - log q of the weights."""
    n = length
    seqs = all_sequences(n)
    pow4 = torch.tensor([(V + 1) ** i for i in range(n - 1, -1, -1)])
    subsets = torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.bool)  # [2^n, n]
    delta = ((seqs - MASK)[None] * pow4 * subsets[:, None]).sum(-1)  # [2^n, V^n]
    grid = edlm.schedule.sampling_grid(steps)
    start = torch.full((n,), MASK) if prompt is None else prompt.clone()
    dist = torch.zeros((V + 1) ** n, dtype=torch.float64)
    dist[(start * pow4).sum()] = 1.0
    digits = torch.tensor(list(itertools.product(range(V + 1), repeat=n)))  # state id -> x
    use_is = energy is not None and num_candidates > 1
    kw = dict(energy_temperature=energy_temperature, temperature=temperature, corrected=corrected)
    for i in range(steps):
        t = float(grid[i])
        r = (float(grid[i]) - float(grid[i + 1])) / float(grid[i])
        is_step = use_is and t > 1.0 - window
        states = torch.nonzero(dist).flatten()  # [S]
        x, p = digits[states], dist[states]
        masked = x == MASK  # [S, n]
        pi = step_law(
            denoiser,
            x,
            t,
            seqs,
            energy=energy if is_step else None,
            num_candidates=num_candidates if is_step else 1,
            **kw,
        )  # [S, V^n]
        m = masked.sum(-1)
        new = torch.zeros_like(dist)
        for s in range(len(subsets)):
            fits = ~(subsets[s] & ~masked).any(-1)  # [S]: S_i within the masked positions
            k = int(subsets[s].sum())
            p_s = torch.where(fits, r**k * (1 - r) ** (m - k), 0.0) * p  # [S]
            if k == 0:
                new.index_add_(0, states, p_s)
                continue
            mass = p_s[:, None] * pi  # [S, V^n]
            keep = mass > 0
            ids = (states[:, None] + delta[s][None]).expand_as(mass)
            new.index_add_(0, ids[keep], mass[keep])
        dist = new
    states = torch.nonzero(dist).flatten()
    x, p = digits[states], dist[states]
    t_end = float(grid[-1])
    if final == "sample":
        pi = step_law(denoiser, x, t_end, seqs, temperature=temperature)
    else:
        logits = denoiser(x, torch.full((len(x),), t_end)).float()
        logits[..., MASK] = float("-inf")
        filled = torch.where(x == MASK, logits.argmax(-1), x)
        pi = torch.nn.functional.one_hot(seq_index(filled), len(seqs)).double()
    return (p[:, None] * pi).sum(0)

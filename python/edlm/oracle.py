"""A text source whose probability of every string is known exactly: a character Markov chain over
the text8 alphabet (`MarkovSource`), with its exact denoiser (`OracleDenoiser`: the marginal of
every masked position given the revealed ones) and itself as an energy (`SourceEnergy`). The
bundled one, `austen-oracle`, is fitted to the five training novels (`corpora.austen_oracle`).

Why order 2 (each character depends on the two before it, a trigram chain; 27^2 = 729 states).
The exact denoiser is a forward-backward pass over the states, 27^(n+1) multiply-adds per position
and row each way: 20 k at order 2, 0.5 M at order 3. Measured here (one core, fp64, 256 rows of
256 characters), order 3 took 9 s per denoiser call in its first version, so one 256-sample sweep
cell of 256 steps would take most of an hour; order 2 takes about 1-2 s per call. Order 2 keeps
what the samplers get wrong (the error of a factorized step is in the dependencies between
neighbouring characters: MDLM's grows to more than a bit per character at 4 steps) and is easy for
the `tiny` presets to learn (a context of two characters), so the trained models come close to the
source's entropy rate (2.596 bits/char, against 2.005 at order 3) and their own error does not hide
the factorization error.

Smoothing: interpolated Kneser-Ney (Chen and Goodman's discounts D = n1 / (n1 + 2 n2) per order,
continuation counts below the top order, a uniform distribution under the unigram), so every
string has positive probability. Every table is computed from integer counts by elementwise fp64
arithmetic, so the fitted chain has the same bytes on every machine (`digest`). The first three
characters of a sequence are drawn from the chain's stationary distribution: a sequence is a
window of a long stationary text, whatever its length or offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .tokenizer import CharTokenizer, normalize_text8

__all__ = ["ALPHABET", "MarkovSource", "OracleDenoiser", "SourceEnergy"]

ALPHABET = len(CharTokenizer.alphabet)  # 27: a-z and space; id 27 is the mask
_IDS = bytes.maketrans(CharTokenizer.alphabet.encode(), bytes(range(ALPHABET)))


def _encode(text: str) -> np.ndarray:
    return np.frombuffer(normalize_text8(text).encode("ascii").translate(_IDS), dtype=np.uint8)


def _kneser_ney(counts: np.ndarray, order: int) -> np.ndarray:
    """Interpolated Kneser-Ney P(c | h), as a [A]*order + [A] array, from the (order + 1)-gram
    counts ([A]*(order + 1), int64)."""
    A = ALPHABET
    # Continuation counts for the lower orders: N1+(. h c), the number of distinct characters seen
    # before the j-gram h c; the top order keeps its plain counts.
    levels = [counts]
    for _ in range(order):
        levels.append((levels[-1] > 0).sum(axis=0))
    levels = levels[::-1]  # levels[j]: counts of (j + 1)-grams (j = 0: unigrams)
    prob = np.full((A,), 1.0 / A)  # below the unigram: uniform
    for j, c in enumerate(levels):
        c = c.astype(np.float64)
        n1, n2 = float((c == 1).sum()), float((c == 2).sum())
        d = n1 / (n1 + 2.0 * n2) if n1 + n2 > 0 else 0.5
        total = c.sum(axis=-1, keepdims=True)  # [A]*j + [1]
        types = (c > 0).sum(axis=-1, keepdims=True).astype(np.float64)
        lower = np.broadcast_to(prob, c.shape)  # P_{j-1}(c | h without its oldest character)
        with np.errstate(divide="ignore", invalid="ignore"):
            mixed = (np.maximum(c - d, 0.0) + d * types * lower) / total
        prob = np.where(total > 0, mixed, lower)
    return prob


class MarkovSource:
    """An order-n character Markov chain over the 27 text8 symbols (ids 0-26, as `CharTokenizer`).

    `log_prob(tokens [N, L]) -> [N]` (nats, float64) is exact for any L >= 1: the first n
    characters under the stationary distribution `stationary` ([A]*n), then the transitions
    `transition` ([A]*n + [A], P(x_t | x_{t-n} .. x_{t-1})). `sample` draws exactly from it.
    `entropy_rate` (bits/char) is exact, from the stationary distribution; `sequence_entropy(L)`
    is the expected -log2 p(x) / L of a length-L sample (what exact samples score on average).
    """

    def __init__(self, transition: np.ndarray, *, counts: np.ndarray | None = None):
        A = ALPHABET
        transition = np.ascontiguousarray(transition, dtype=np.float64)
        self.order = transition.ndim - 1
        if self.order < 2 or transition.shape != (A,) * (self.order + 1):
            raise ValueError(
                f"MarkovSource: transition must be [27]*(n + 1) with n >= 2, got {transition.shape}"
            )
        if not (transition > 0).all() or not np.allclose(transition.sum(-1), 1.0, atol=1e-12):
            raise ValueError("MarkovSource: transition rows must be positive and sum to 1")
        self.transition = transition
        self.counts = counts
        self.stationary = self._stationary()
        self._t = {}  # torch copies per device

    @classmethod
    def fit(cls, texts: Iterable[str], order: int = 3) -> MarkovSource:
        """Fits the chain to texts (each normalized to text8; n-grams never cross two texts)."""
        if order < 2:
            raise ValueError(f"MarkovSource.fit: order must be >= 2, got {order}")
        A = ALPHABET
        counts = np.zeros(A ** (order + 1), dtype=np.int64)
        for text in texts:
            ids = _encode(text).astype(np.int64)
            if len(ids) <= order:
                continue
            code = np.zeros(len(ids) - order, dtype=np.int64)
            for j in range(order + 1):
                code = code * A + ids[j : len(ids) - order + j]
            counts += np.bincount(code, minlength=A ** (order + 1))
        if counts.sum() == 0:
            raise ValueError(f"MarkovSource.fit: no text longer than {order} characters")
        counts = counts.reshape((A,) * (order + 1))
        return cls(_kneser_ney(counts, order), counts=counts)

    def _stationary(self) -> np.ndarray:
        """The stationary distribution over states, by power iteration (the chain is ergodic:
        every transition is positive)."""
        A, n = ALPHABET, self.order
        trans = self.transition.reshape(A, A ** (n - 1), A)
        pi = np.full(A**n, 1.0 / A**n)
        for _ in range(100_000):
            new = np.einsum("as,asc->sc", pi.reshape(A, A ** (n - 1)), trans).reshape(-1)
            new /= new.sum()
            if np.abs(new - pi).sum() < 1e-15:
                pi = new
                break
            pi = new
        return pi.reshape((A,) * n)

    # --- exact quantities ----------------------------------------------------------------------

    def digest(self) -> str:
        """sha256 of the order and the transition table's bytes."""
        h = hashlib.sha256(f"markov-{self.order}".encode())
        h.update(self.transition.tobytes())
        return h.hexdigest()

    @property
    def entropy_rate(self) -> float:
        """H = -sum_s pi(s) sum_c P(c | s) log2 P(c | s), bits per character."""
        p = self.transition.reshape(-1, ALPHABET)
        return float(-(self.stationary.reshape(-1) * (p * np.log2(p)).sum(-1)).sum())

    def ngram_entropy(self, n: int) -> float:
        """Entropy in bits of the source's distribution of n consecutive characters (n = 1, 2:
        what the pooled unigram and bigram entropies of exact samples tend to)."""
        return self.sequence_entropy(n) * n

    def sequence_entropy(self, length: int) -> float:
        """E[-log2 p(x)] / length for x of `length` characters: what exact samples score."""
        n = self.order
        if length <= n:
            marg = self.stationary.reshape((ALPHABET,) * n)
            marg = marg.reshape(ALPHABET**length, -1).sum(-1) if length < n else marg.reshape(-1)
            return float(-(marg * np.log2(marg)).sum()) / length
        pi = self.stationary.reshape(-1)
        head = float(-(pi * np.log2(pi)).sum())
        return (head + (length - n) * self.entropy_rate) / length

    def _tables(self, device) -> dict:
        device = torch.device(device)
        if device not in self._t:
            A, n = ALPHABET, self.order
            log_t = torch.from_numpy(np.log(self.transition).reshape(-1))
            log_pi = torch.from_numpy(np.log(self.stationary).reshape(-1))
            self._t[device] = {
                "log_t": log_t.to(device),
                "log_pi": log_pi.to(device),
                "cdf_t": torch.from_numpy(np.cumsum(self.transition.reshape(-1, A), -1)).to(device),
                "cdf_pi": torch.from_numpy(np.cumsum(self.stationary.reshape(-1))).to(device),
                "trans": torch.from_numpy(self.transition.reshape(A, A ** (n - 1), A)).to(device),
                "pi": torch.from_numpy(self.stationary.reshape(-1)).to(device),
            }
        return self._t[device]

    def _check_tokens(self, tokens: torch.Tensor, what: str) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ValueError(
                f"{what}: tokens must be an integer tensor [N, L], got {tokens.dtype} "
                f"{list(tokens.shape)}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= ALPHABET):
            raise ValueError(
                f"{what}: tokens must be in [0, {ALPHABET}) (no mask), got "
                f"{int(tokens.min())}..{int(tokens.max())}"
            )
        return tokens.long()

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) in nats, float64 [N], of sequences [N, L] of ids in [0, 27)."""
        x = self._check_tokens(tokens, "MarkovSource.log_prob")
        N, L = x.shape
        A, n = ALPHABET, self.order
        tab = self._tables(x.device)
        if n > L:  # marginal of the stationary distribution over the first L characters
            pi = tab["pi"].reshape(A**L, -1).sum(-1)
            code = torch.zeros(N, dtype=torch.long, device=x.device)
            for j in range(L):
                code = code * A + x[:, j]
            return pi.log()[code]
        head = torch.zeros(N, dtype=torch.long, device=x.device)
        for j in range(n):
            head = head * A + x[:, j]
        out = tab["log_pi"][head]
        if n < L:
            code = torch.zeros(N, L - n, dtype=torch.long, device=x.device)
            for j in range(n + 1):
                code = code * A + x[:, j : L - n + j]
            out = out + tab["log_t"][code].sum(-1)
        return out

    def sample(
        self,
        num: int,
        length: int,
        *,
        generator: torch.Generator | None = None,
        device="cpu",
    ) -> torch.Tensor:
        """num exact samples of `length` characters, int64 [num, length] (inverse CDF in fp64)."""
        if num < 0 or length < 1:
            raise ValueError(
                f"MarkovSource.sample: need num >= 0, length >= 1, got {num}, {length}"
            )
        A, n = ALPHABET, self.order
        tab = self._tables(device)
        u = torch.rand(
            num,
            length,
            generator=generator,
            dtype=torch.float64,
            device=generator.device if generator is not None else device,
        ).to(device)
        cdf_pi = tab["cdf_pi"]
        head = torch.searchsorted(cdf_pi, u[:, 0].contiguous(), right=True).clamp_(max=A**n - 1)
        out = torch.empty(num, max(length, n), dtype=torch.long, device=device)
        for j in range(n):
            out[:, j] = head // A ** (n - 1 - j) % A
        state = head
        cdf_t = tab["cdf_t"]
        for t in range(n, length):
            c = (cdf_t[state] <= u[:, t : t + 1]).sum(-1).clamp_(max=A - 1)
            out[:, t] = c
            state = state % A ** (n - 1) * A + c
        if length < n:  # marginal of the head: drawn whole, then cut
            return out[:, :length]
        return out

    # --- exact conditionals --------------------------------------------------------------------

    def marginals(
        self,
        xt: torch.Tensor,
        mask_id: int,
        *,
        chunk: int = 256,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """P(x_l = c | revealed tokens of xt) [N, L, 27] in `dtype`, for every position (one-hot
        at the revealed ones), by forward-backward over the chain's states, rescaled at every
        position. xt is int64 [N, L] with `mask_id` at the masked positions; L >= order. Rows go
        `chunk` at a time (a chunk keeps its forward messages: chunk * L * 27^n values)."""
        if xt.dim() != 2:
            raise ValueError(f"MarkovSource.marginals: xt must be [N, L], got {list(xt.shape)}")
        N, L = xt.shape
        if self.order > L:
            raise ValueError(
                f"MarkovSource.marginals: length {L} is shorter than the chain's order {self.order}"
            )
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(
                f"MarkovSource.marginals: dtype must be float64 or float32, got {dtype}"
            )
        bad = (xt != mask_id) & ((xt < 0) | (xt >= ALPHABET))
        if bool(bad.any()):
            raise ValueError(
                f"MarkovSource.marginals: tokens must be in [0, {ALPHABET}) or mask_id {mask_id}, "
                f"got {int(xt[bad][0])}"
            )
        out = torch.empty(N, L, ALPHABET, dtype=dtype, device=xt.device)
        for s in range(0, N, chunk):
            out[s : s + chunk] = self._forward_backward(xt[s : s + chunk], mask_id, dtype)
        return out

    def _forward_backward(self, xt: torch.Tensor, mask_id: int, dtype) -> torch.Tensor:
        """Forward-backward for one chunk of rows: 27^(n+1) multiply-adds per position and row
        each way, as batched matrix products. A state (x_{t-n+1}, ..., x_t) is held as
        [rest, row, oldest] (rest = its newest n - 1 characters), so that one step is
        bmm([rest, rows, oldest] x [rest, oldest, next]) followed by one transposing copy."""
        A, n = ALPHABET, self.order
        B, L = xt.shape
        R = A ** (n - 1)  # values of `rest`
        dev = xt.device
        tab = self._tables(dev)
        step = tab["trans"].permute(1, 0, 2).contiguous().to(dtype)  # [rest, oldest, next]
        back = step.transpose(1, 2).contiguous()  # [rest, next, oldest]
        known = xt != mask_id
        ev = torch.ones(L, B, A, dtype=dtype, device=dev)  # one-hot where revealed, else ones
        kt = known.t()
        ev[kt] = 0.0
        ev[kt, xt.t()[kt]] = 1.0

        def shift(m):  # [rest, B, next] of state (oldest, rest) -> next state's [rest', B, oldest']
            m = m.reshape(A, R // A, B, A)  # (oldest' = rest's first char, rest tail, B, next)
            return m.permute(1, 3, 2, 0).reshape(R, B, A)

        # head: states of the first n characters, oldest x_0, rest (x_1 .. x_{n-1})
        head = tab["pi"].to(dtype).reshape(A, R).t()[:, None, :].expand(R, B, A).clone()
        ev_rest = torch.ones(R, B, dtype=dtype, device=dev)
        for j in range(1, n):
            digit = torch.arange(R, device=dev) // A ** (n - 1 - j) % A  # x_j of each rest
            ev_rest = ev_rest * ev[j][:, digit].t()
        head *= ev_rest[:, :, None] * ev[0][None]
        alphas = torch.empty(L - n + 1, R, B, A, dtype=dtype, device=dev)
        alphas[0] = head / head.sum((0, 2), keepdim=True)
        for t in range(n, L):
            a = torch.bmm(alphas[t - n], step)  # [rest, B, next]
            a *= ev[t][None]
            a = shift(a)
            alphas[t - n + 1] = a / a.sum((0, 2), keepdim=True)

        out = torch.empty(B, L, A, dtype=dtype, device=dev)
        beta = torch.ones(R, B, A, dtype=dtype, device=dev)

        def newest(gamma):  # [rest, B, oldest] -> marginal of the newest character [B, A]
            m = gamma.reshape(R // A, A, B, A).sum((0, 3)).t()
            return m / m.sum(-1, keepdim=True)

        for t in range(L - 1, n - 1, -1):
            out[:, t] = newest(alphas[t - n + 1] * beta)
            # beta_{t-1}(oldest, rest) = sum_c P(c | oldest, rest) ev_t(c) beta_t(rest, c):
            # beta_t is held as [rest', B, oldest'] with oldest' = rest's first character
            nxt = beta.reshape(R // A, A, B, A).permute(3, 0, 2, 1).reshape(R, B, A)  # [rest, B, c]
            nxt = nxt * ev[t][None]
            b = torch.bmm(nxt, back)  # [rest, B, oldest]
            beta = b / b.sum((0, 2), keepdim=True)
        gamma = (alphas[0] * beta).permute(1, 2, 0).reshape((B,) + (A,) * n)  # [B, x_0, rest]
        for j in range(n):
            dims = [1 + i for i in range(n) if i != j]
            marg = gamma.sum(dim=dims) if dims else gamma
            out[:, j] = marg / marg.sum(-1, keepdim=True)
        return out

    # --- files ---------------------------------------------------------------------------------

    def save(self, path) -> None:
        """The transition table (and counts, when fitted) as a safetensors file."""
        tensors = {"transition": self.transition}
        if self.counts is not None:
            tensors["counts"] = np.ascontiguousarray(self.counts)
        save_file(
            tensors, str(path), metadata={"format": "edlm-markov-source", "order": str(self.order)}
        )

    @classmethod
    def load(cls, path) -> MarkovSource:
        tensors = load_file(str(path))
        if "transition" not in tensors:
            raise ValueError(f"{path}: not a saved MarkovSource (no 'transition' tensor)")
        return cls(tensors["transition"], counts=tensors.get("counts"))


class OracleDenoiser(torch.nn.Module):
    """The exact denoiser of a `MarkovSource`: forward(xt [B, L], t [B]) -> logits [B, L, 28],
    the log of the source's single-position marginals given the revealed positions (-inf for the
    mask column and for the tokens a revealed position does not hold). Time is ignored: the
    marginals do not depend on it. Usable wherever a denoiser is (`edlm.sample`, the sweep): it is
    MDLM's best case, so what MDLM still gets wrong with it is the factorization error alone.
    Any length >= the source's order works; `length` is the default the CLI samples at."""

    def __init__(self, source: MarkovSource, length: int, *, chunk: int = 256, dtype=torch.float64):
        super().__init__()
        if length < source.order:
            raise ValueError(f"OracleDenoiser: length {length} < the source's order {source.order}")
        self.source, self.length, self.chunk, self.dtype = source, int(length), chunk, dtype
        self.mask_id = CharTokenizer.mask_id
        self.vocab_size = CharTokenizer.vocab_size
        self._last = None  # (xt, log marginals) of the previous call

    def forward(self, xt: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if xt.dim() != 2 or xt.shape[1] < self.source.order:
            raise ValueError(
                f"OracleDenoiser: xt must be [B, L] with L >= {self.source.order}, got "
                f"{list(xt.shape)}"
            )
        # The marginals are a function of xt alone: rows equal to the previous call's are reused
        # (within a sampling run most rows reveal nothing at a given step).
        logp = torch.empty(*xt.shape, ALPHABET, dtype=torch.float64, device=xt.device)
        todo = torch.ones(xt.shape[0], dtype=torch.bool, device=xt.device)
        if self._last is not None and self._last[0].shape == xt.shape:
            same = (self._last[0] == xt).all(-1)
            logp[same] = self._last[1][same]
            todo = ~same
        if bool(todo.any()):
            rows = torch.nonzero(todo).flatten()
            p = self.source.marginals(xt[rows], self.mask_id, chunk=self.chunk, dtype=self.dtype)
            logp[rows] = p.double().log()
        self._last = (xt.clone(), logp)
        logits = torch.full(
            (*xt.shape, self.vocab_size), float("-inf"), dtype=torch.float32, device=xt.device
        )
        logits[..., :ALPHABET] = logp.float()
        return logits


class SourceEnergy:
    """The source itself as an energy: E(x0, xt) = -log p_source(x0) + log mu(x0 | xt), so the
    EDLM step targets the source's exact conditional p(x_masked | x_revealed) whatever the
    denoiser mu (the `oracle:` energy spec): EDLM with a perfect energy. As for the whole-sequence
    AR energy, Z(xt) is the source's marginal of the revealed tokens, not 1."""

    self_normalized = False

    def __init__(self, source: MarkovSource):
        self.source = source

    def __call__(self, x0, xt, t, proposal_logp):
        return (-self.source.log_prob(x0) + proposal_logp.double()).float()

"""The autoregressive model: the denoiser's trunk made causal, trained on next-token prediction.
It serves as a baseline and as the AR energy of EDLM (EDLM.md section 2)."""

from __future__ import annotations

import copy
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .compile_error import CompileError, first_line
from .transformer import Block, EmbeddingLayer, FinalLayer, KVCache, rotary_cos_sin

# ARModel -> (the weights' state it was made from, its compiled decode step): see _compiled_decode
_COMPILED_DECODE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ARModel(nn.Module):
    """forward(x [B, L] int64) -> logits [B, L, V] with logits[:, l] scoring x[:, l] given x[:, :l].

    The sequence is read shifted right behind a start token, for which the mask id serves (it never
    occurs in data), so every position, the first included, gets a prediction.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_embed = EmbeddingLayer(cfg.dim, cfg.vocab_size)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.n_heads, None, cfg.mlp_ratio, cfg.dropout, causal=True)
            for _ in range(cfg.n_layers)
        )
        self.output_layer = FinalLayer(cfg.dim, cfg.vocab_size, None)

    @property
    def mask_id(self) -> int:
        return self.cfg.mask_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L = x.shape
        start = torch.full((B, 1), self.mask_id, dtype=x.dtype, device=x.device)
        inputs = torch.cat([start, x[:, :-1]], dim=1)
        cos, sin = rotary_cos_sin(L, self.cfg.dim // self.cfg.n_heads, x.device)
        h = self.vocab_embed(inputs)
        for block in self.blocks:
            h = block(h, cos, sin)
        logits = self.output_layer(h).float()
        logits[..., self.mask_id] = float("-inf")  # the mask is never a next token
        return logits

    def _step(self, tokens: torch.Tensor, caches: list[KVCache], pos, cos, sin):
        """Logits [B, n, V] for positions pos .. pos + n - 1 given the cached ones before them;
        tokens [B, n] are the inputs at those positions (the start token, then x shifted). A
        tensor `pos` ([1] int64, n = 1) is the static-shape form that the compiled step takes."""
        h = self.vocab_embed(tokens)
        if isinstance(pos, torch.Tensor):
            c, s = cos.index_select(0, pos), sin.index_select(0, pos)
        else:
            c, s = cos[pos : pos + tokens.shape[1]], sin[pos : pos + tokens.shape[1]]
        for block, cache in zip(self.blocks, caches):
            h = block(h, c, s, cache=cache, pos=pos)
        logits = self.output_layer(h).float()
        logits[..., self.mask_id] = float("-inf")
        return logits

    @staticmethod
    def _draw(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
        """The token [B, 1] that inverts the CDF of softmax(logits [B, V] / T) (fp64) at u [B, 1]
        in [0, 1): the first whose cumulative mass exceeds u times the total. The point is kept
        below the total, so a zero-probability token (the mask) is never drawn."""
        cdf = (logits.double() / temperature).softmax(-1).cumsum(-1)
        total = cdf[:, -1:]
        point = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
        return (cdf <= point).sum(-1, keepdim=True)

    def _decode(self, token, pos, u, caches, cos, sin, temperature: float):
        """One static-shape step of the cached sampler (what generate(compile=True) compiles):
        the next token [B, 1] after `token` [B, 1] at position pos ([1] int64)."""
        return self._draw(self._step(token, caches, pos, cos, sin)[:, 0], u, temperature)

    def _compiled_decode(self):
        """torch.compile of _decode on a frozen copy of this model (inductor's `freezing` folds
        the weights in as constants and, on CPU, packs them for its own GEMM kernels: at batch 1
        the eager step is all dispatch). The copy is remade, and so recompiled, whenever a
        parameter has changed since (its version counter or storage), so a compiled sampler
        never runs stale weights."""
        key = (self.training, [(p.data_ptr(), p._version) for p in self.parameters()])
        entry = _COMPILED_DECODE.get(self)
        if entry is None or entry[0] != key:
            frozen = copy.deepcopy(self)
            entry = _COMPILED_DECODE[self] = (key, torch.compile(frozen._decode, fullgraph=True))
        return entry[1]

    def _compile_config(self):
        """The inductor settings of the compiled step, applied around its calls (inductor reads
        `freezing` outside torch.compile's per-call options): freeze the weights and, on CPU,
        let max-autotune choose its own C++ GEMM kernels over ATen's and call the kernels from
        a C++ wrapper. At batch 1 on the tiny model these make the step 1.8x faster than plain
        torch.compile (BENCHMARKS.md)."""
        # max-autotune's choice tables are written to stderr: not for a sampler's user
        settings = {
            "freezing": True,
            "autotune_num_choices_displayed": 0,
            "max_autotune_report_choices_stats": False,
        }
        if next(self.parameters()).device.type == "cpu":
            settings |= {
                "max_autotune": True,
                "max_autotune_gemm_backends": "CPP,ATEN",
                "cpp_wrapper": True,  # the graph's kernels called from C++, not Python
            }
        return torch._inductor.config.patch(settings)

    @torch.no_grad()
    def generate(
        self,
        batch_size: int,
        length: int | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device=None,
        cache: bool = True,
        compile: bool | None = None,
    ) -> torch.Tensor:
        """Ancestral samples [batch_size, length] int64: each token from softmax(logits / T) given
        the ones before it, by inverting its CDF at one uniform per row and step (drawn from
        `generator`). With `cache` (the default) each step runs the new token only, against a
        static key/value cache of the positions before it (one [B, H, length, Dh] buffer per
        block); cache=False recomputes the whole prefix per token (the reference). `compile`
        (default: whether compile_forwards was applied to this model) runs each cached step as
        one torch.compile'd graph with the weights frozen in; the first call for a shape
        compiles, which takes seconds (BENCHMARKS.md). All three draw the same tokens for the same
        generator, up to float rounding of the logits."""
        length = self.cfg.length if length is None else length
        if batch_size < 1 or length < 1:
            raise ValueError(
                f"ARModel.generate: batch_size and length must be >= 1, got {batch_size}, {length}"
            )
        if not temperature > 0:
            raise ValueError(f"ARModel.generate: temperature must be > 0, got {temperature}")
        compile = getattr(self, "compile_generate", False) if compile is None else compile
        if compile and not cache:
            raise ValueError("ARModel.generate: compile=True needs cache=True")
        device = device or next(self.parameters()).device
        temperature = float(temperature)
        x = torch.zeros(batch_size, length, dtype=torch.long, device=device)

        def uniforms():
            return torch.rand(
                batch_size, 1, dtype=torch.float64, generator=generator, device=device
            )

        if not cache:
            for pos in range(length):
                logits = self(x[:, : pos + 1])[:, pos]
                x[:, pos] = self._draw(logits, uniforms(), temperature)[:, 0]
            return x
        heads, dim = self.cfg.n_heads, self.cfg.dim
        dtype = next(self.parameters()).dtype
        caches = [
            KVCache(batch_size, heads, length, dim // heads, dtype, device) for _ in self.blocks
        ]
        cos, sin = rotary_cos_sin(length, dim // heads, device)
        token = torch.full((batch_size, 1), self.mask_id, dtype=torch.long, device=device)
        if compile:
            step = self._compiled_decode()
            positions = [torch.tensor([pos], device=device) for pos in range(length)]
            with self._compile_config():
                token = _first_compiled_step(
                    step, token, positions[0], uniforms(), caches, cos, sin, temperature
                )
                x[:, 0] = token[:, 0]
                # Step 0 compiled the graph or found it. Every later step passes inputs of the
                # same shapes, dtypes and strides (the caches the same tensors), so its guards
                # cannot fail, and checking them would be a fifth of a step at batch 1.
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    for pos in range(1, length):
                        u = uniforms()
                        token = step(token, positions[pos], u, caches, cos, sin, temperature)
                        x[:, pos] = token[:, 0]
            return x
        for pos in range(length):
            logits = self._step(token, caches, pos, cos, sin)[:, 0]
            token = self._draw(logits, uniforms(), temperature)
            x[:, pos] = token[:, 0]
        return x

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Mean next-token negative log-likelihood (nats per token). batch: x [B, L]."""
        x = batch["x"]
        nll = F.cross_entropy(self(x).flatten(0, 1), x.flatten())
        return nll, {"nll_per_token": nll.detach()}


def _first_compiled_step(step, *args):
    """The compiled step's first call, where torch.compile runs: its failure is a CompileError
    with torch's first line, and inductor's own deprecation warnings are not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        try:
            return step(*args)
        except torch._dynamo.exc.TorchDynamoException as e:
            raise CompileError(
                f"torch.compile of ARModel's decode step failed: {first_line(e)}"
            ) from e

"""Training: one loop for every model (denoiser, AR, energy) through `model.loss(batch)`.

Reads top to bottom: distributed set-up, data, model, optimizer and schedule, resume, then the
loop with accumulation, clipping, EMA, logging, validation and atomic checkpoints. Multi-GPU and
multi-node through torch.distributed (launch with torchrun); every random draw of a step is keyed
by (seed, step, position in the global batch), so W ranks reproduce one process and a resumed run
continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import checkpoint, schedule
from .config import ConfigError, ModelConfig, TrainConfig, dumps, preset, resolve_device
from .corpora import NAMED_DATASETS
from .data import load_dataset
from .models import EnergyModel, build, compile_forwards


def setup_distributed(device_pref: str):
    """(rank, world_size, device), initializing the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = resolve_device(device_pref).type == "cuda"
    rank = 0
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
        rank = dist.get_rank()
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (
            1 + math.cos(math.pi * min(1.0, progress))
        )
    raise ValueError(f"lr_schedule must be constant or cosine, got {cfg.lr_schedule!r}")


def step_noise(
    seed: int, step: int, global_batch: int, length: int, index: torch.Tensor, stream: int = 0
):
    """The random inputs of the examples at `index` (positions in the global batch) of `step`:
    antithetic times t [b] and masking uniforms [b, L], the same whatever the rank layout."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 4 + stream) % (1 << 63))
    u = torch.rand((), generator=g, dtype=torch.float64).item()
    noise = torch.rand(global_batch, length, generator=g)[index]
    return schedule.antithetic_times(u, index, global_batch), noise


class LossModule(torch.nn.Module):
    """forward(batch) = model.loss(batch): DDP syncs gradients through forward()."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        return self.model.loss(batch)


class EMA:
    """Exponential moving average of the parameters (fp32), used for evaluation and sampling."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """Temporarily swaps the EMA weights into the model."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict({k: v.to(saved[k].dtype) for k, v in self.shadow.items()})
        try:
            yield model
        finally:
            model.load_state_dict(saved)


@torch.no_grad()
def validation_loss(model, data, cfg: TrainConfig, device, batches: int) -> float:
    """Mean loss (nats per token) over the first `batches` validation batches with fixed noise."""
    model.eval()
    total, count = 0.0, 0
    it = data.batches(cfg.micro_batch_size or cfg.batch_size)
    for k in range(batches):
        x = next(it)
        index = torch.arange(x.shape[0])
        t, noise = step_noise(cfg.seed + 1, k, x.shape[0], x.shape[1], index, stream=1)
        loss, _ = model.loss(
            {"x": x.to(device), "t": t.to(device), "noise": noise.to(device), "seed": k}
        )
        total += loss.item() * x.shape[0]
        count += x.shape[0]
    model.train()
    return total / count


def open_data(cfg: TrainConfig, rank: int = 0, world: int = 1):
    """(train, valid) datasets: a named dataset's train and valid splits, or a path and
    `valid_data`; a path given alone has its last `valid_fraction` of blocks held out (and said)."""
    named = cfg.data in NAMED_DATASETS
    tok = None if named else cfg.tokenizer
    block = cfg.block_size or cfg.model_config.length or None
    opts = dict(tokenizer=tok, seed=cfg.seed, rank=rank, world_size=world, block_size=block)
    if named or cfg.valid_data:
        train_data = load_dataset(cfg.data, "train" if named else None, **opts)
        if cfg.valid_data:
            vtok = None if cfg.valid_data in NAMED_DATASETS else cfg.tokenizer
            valid_data = load_dataset(
                cfg.valid_data, None, tokenizer=vtok, shuffle=False, block_size=block
            )
        else:
            valid_data = load_dataset(cfg.data, "valid", shuffle=False, block_size=block)
        return train_data, valid_data
    whole = load_dataset(cfg.data, None, tokenizer=tok, shuffle=False, block_size=block)
    n = whole.num_blocks
    held = max(1, round(n * cfg.valid_fraction))
    if n - held < 1:
        raise ConfigError(
            f"data {cfg.data!r} has {n} block(s): too few to hold one out for validation; set valid_data"
        )
    if rank == 0:
        print(
            f"train: no valid_data given: holding out the last {held} of {n} blocks of {cfg.data} "
            f"(valid_fraction={cfg.valid_fraction:g}) for validation",
            flush=True,
        )
    train_data = load_dataset(cfg.data, None, block_range=(0, n - held), **opts)
    valid_data = load_dataset(
        cfg.data, None, tokenizer=tok, shuffle=False, block_size=block, block_range=(n - held, n)
    )
    return train_data, valid_data


DATA_FIELDS = {"vocab_size": 0, "length": 0, "mask_id": -1, "tokenizer": ""}  # with their "unset"
ARCH_FIELDS = (
    "dim",
    "n_heads",
    "n_layers",
    "cond_dim",
    "mlp_ratio",
    "dropout",
    "time_conditioning",
)


def resolve_model_config(
    cfg: TrainConfig, header: dict, length: int, init: ModelConfig | None
) -> ModelConfig:
    """The model config a run trains: the data's vocabulary, mask id, tokenizer and block length,
    and the architecture of `cfg.model_config` (or of the `init_from` checkpoint's, which then
    wins). A value set by hand that disagrees is a ConfigError naming both, never replaced."""
    mc = cfg.model_config
    data = {
        "vocab_size": int(header["vocab_size"]),
        "length": int(length),
        "mask_id": int(header["mask_id"]),
        "tokenizer": str(header["tokenizer"]),
    }
    for name, value in data.items():
        mine = getattr(mc, name)
        if mine != DATA_FIELDS[name] and mine != value:
            raise ConfigError(
                f"model.{name}={mine} conflicts with the data ({cfg.data}: {name} = {value}); the "
                f"data decides it: leave model.{name} unset"
            )
    if init is None:
        return dataclasses.replace(mc, **data)
    for name, value in data.items():
        theirs = getattr(init, name)
        if theirs != value and (theirs or name != "tokenizer"):  # older checkpoints: no tokenizer
            raise ConfigError(
                f"init_from {cfg.init_from} has {name} = {theirs}, the data ({cfg.data}) {value}: "
                f"they must agree"
            )
    default = preset(cfg.preset)
    for name in ARCH_FIELDS:
        mine, theirs = getattr(mc, name), getattr(init, name)
        if mine != getattr(default, name) and mine != theirs:
            raise ConfigError(
                f"model.{name}={mine} conflicts with init_from {cfg.init_from} ({name} = {theirs}); "
                f"the checkpoint's architecture is the one its weights fit: leave model.{name} unset"
            )
    return dataclasses.replace(init, **data)


def build_model(cfg: TrainConfig, init):
    """The model to train, from `cfg.model_config` (resolved), started from `init` (the loaded
    init_from model, or None): an energy copies and trains against its denoiser."""
    if cfg.model == "energy":
        return EnergyModel.from_denoiser(init, cfg.num_negatives)
    model = build(cfg.model, cfg.model_config)
    if init is not None:
        model.load_state_dict(init.state_dict())
    return model


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    compile: bool = False,
) -> dict:
    """Trains per `cfg`; returns the last metrics. `stop_after` ends the loop early after that many
    steps of this call (tests use it to simulate a kill). `compile`: the model's forwards (and an
    energy's proposal denoiser's) run under torch.compile (`edlm.models.compile_forwards`); the
    state dict and checkpoints are the same as without it. Dropout draws from inductor's own
    random numbers there, so with dropout > 0 the losses match eager in distribution only."""
    cfg = dataclasses.replace(cfg, model_config=dataclasses.replace(cfg.model_config))
    cfg.check()
    rank, world, device = setup_distributed(cfg.device)
    out = Path(cfg.out)

    # Data; the model's vocabulary, mask id and length come from the prepared token file.
    init = None
    if cfg.init_from:
        kind = "denoiser" if cfg.model == "energy" else cfg.model
        init, _ = checkpoint.load_model(cfg.init_from, kind=kind)
    if init is not None and not cfg.block_size and not cfg.model_config.length:
        cfg.block_size = init.cfg.length
    train_data, valid_data = open_data(cfg, rank, world)
    cfg.model_config = resolve_model_config(
        cfg, train_data.header, train_data.block_size, init.cfg if init is not None else None
    )
    cfg.model_config.check("model")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the world size {world}")
    local_batch = cfg.batch_size // world
    micro = cfg.micro_batch_size or local_batch
    if local_batch % micro:
        raise ValueError(
            f"per-rank batch {local_batch} is not divisible by micro_batch_size {micro}"
        )
    accum = local_batch // micro

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, init).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    start = 0
    if resume and checkpoint.has_checkpoint(out):
        state = checkpoint.load(out, train_state=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["train_state"]["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.shadow = {k: v.to(device) for k, v in state["ema"].items()}
        start = state["step"]
    if compile:
        compile_forwards(model)
    runner = LossModule(model)
    runner = DistributedDataParallel(runner) if world > 1 else runner
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )

    log = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(dumps(cfg))
        log = open(out / "metrics.jsonl", "a")
    bar = None
    if progress and rank == 0:
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.model}", unit="step")

    batches = train_data.batches(local_batch, start=start)
    metrics: dict = {}
    tokens_seen, t0 = 0, time.perf_counter()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    for step in range(start, end):
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed((cfg.seed * 1_000_003 + step) * 64 + rank)  # dropout, per rank and step
        x = next(batches)  # [local_batch, L]
        index = torch.arange(local_batch) * world + rank  # positions in the global batch
        t, noise = step_noise(cfg.seed, step, cfg.batch_size, x.shape[1], index)
        loss_sum, extra = 0.0, {}
        for m in range(accum):
            sl = slice(m * micro, (m + 1) * micro)
            batch = {
                "x": x[sl].to(device),
                "t": t[sl].to(device),
                "noise": noise[sl].to(device),
                "seed": ((cfg.seed * 1_000_003 + step) * 4096 + rank * 64 + m) % (1 << 62),
            }
            sync = m == accum - 1 or world == 1
            with contextlib.nullcontext() if sync else runner.no_sync(), autocast:
                loss, extra = runner(batch)
            (loss / accum).backward()
            loss_sum += loss.item() / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        tokens_seen += x.numel() * world
        done = step + 1

        if world > 1:
            t_loss = torch.tensor([loss_sum], device=device)
            dist.all_reduce(t_loss)
            loss_sum = t_loss.item() / world
        metrics = {"step": done, "loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm)}
        metrics.update({k: float(v) for k, v in extra.items()})
        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics.update(_validate(model, ema, valid_data, cfg, device))
        if rank == 0 and (
            done % cfg.log_every == 0 or done == cfg.steps or "valid_loss" in metrics
        ):
            metrics["tokens_per_s"] = tokens_seen / (time.perf_counter() - t0)
            log.write(json.dumps(metrics) + "\n")
            log.flush()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_sum:.3f}",
                **(
                    {"valid_bpt": f"{metrics['valid_bits_per_token']:.3f}"}
                    if "valid_bits_per_token" in metrics
                    else {}
                ),
            )
        if done % cfg.save_every == 0 or done == cfg.steps:
            _save(out, done, model, ema, optimizer, cfg, metrics, rank, world)
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    return metrics


def _validate(model, ema, valid_data, cfg, device) -> dict:
    loss = validation_loss(model, valid_data, cfg, device, cfg.eval_batches)
    likelihood = cfg.model != "energy"  # the NCE loss is no likelihood: no bits or perplexity
    out = {"valid_loss": loss}
    if likelihood:
        out.update(
            {
                "valid_bits_per_token": schedule.bits_per_token(loss),
                "valid_ppl": math.exp(min(loss, 50)),
            }
        )
    if ema is not None:
        with ema.applied(model):
            e = validation_loss(model, valid_data, cfg, device, cfg.eval_batches)
        out["valid_loss_ema"] = e
        if likelihood:
            out["valid_bits_per_token_ema"] = schedule.bits_per_token(e)
    return out


def _save(out, step, model, ema, optimizer, cfg, metrics, rank, world):
    if rank == 0:
        checkpoint.save(
            out,
            step,
            model_state=model.state_dict(),
            cfg=cfg,
            ema_state=ema.shadow if ema is not None else None,
            train_state={"optimizer": optimizer.state_dict(), "step": step},
            metrics=metrics,
        )
    if world > 1:
        dist.barrier()

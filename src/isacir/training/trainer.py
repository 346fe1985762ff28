"""The trainer shared by ISA and its baselines (GCD + LAR, unlabeled images only).

Determinism is a feature here: the epoch order is a pure function of (seed, epoch), augmentation
randomness of (seed, epoch, image index), and checkpoints carry optimizer, scheduler, RNG and data
position, so an interrupted run resumed from a checkpoint reaches the same weights as an
uninterrupted one. Multi-GPU / multi-node runs go through ``torchrun`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import ImageRecord, discover_images
from ..data.imageio import load_image
from ..errors import ImageDecodeError
from ..query import QueryEncoder
from ..query.encoder import setting_problems
from ..query.methods import get_method
from .augment import POLICIES, query_transform
from .cache import TeacherCache, hash_records
from .checkpoints import STATE_NAME, _save_checkpoint, _set_rng_state, latest_checkpoint
from .config import TrainConfig
from .distributed import (
    DistInfo,
    TrainingError,
    _average_buffers,
    _barrier,
    _skip_batch,
    check_shared_filesystem,
    epoch_order,
    init_distributed,
)
from .losses import (
    Temperature,
    gcd_loss,
    gcd_loss_global,
    hardest_negatives,
    lar_itm_loss,
    lar_patch_loss,
    word_prior_loss,
)

if TYPE_CHECKING:
    from ..foundation import Foundation

TRAIN_CONFIG_NAME = "train_config.json"


def check_settings(config: TrainConfig, foundation: Foundation | None = None) -> None:
    """Refuse contradictory settings before the teacher cache is built, which can take hours.

    Without a foundation, everything but the foundation's token limit is checked (the Shapes bench
    checks its settings this way before it trains the foundation itself).
    """
    bad = setting_problems(foundation, config.method, config.tokens, config.output_stride)
    if config.augment not in POLICIES:
        bad.append(f"unknown augmentation {config.augment!r} (choose one of {', '.join(POLICIES)})")
    for name in ("batch_size", "grad_accum"):
        if getattr(config, name) < 1:
            bad.append(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in ("lr", "temperature"):
        if not getattr(config, name) > 0:
            bad.append(f"{name} must be positive, got {getattr(config, name)}")
    for name in ("lar_weight", "word_weight", "weight_decay"):
        if not getattr(config, name) >= 0:
            bad.append(f"{name} must not be negative, got {getattr(config, name)}")
    if bad:
        raise TrainingError("bad training settings: " + "; ".join(bad))


def _check_resumed_architecture(
    encoder: QueryEncoder, config: TrainConfig, ckpt: Path, verb: str = "resume from"
) -> None:
    """A resumed run keeps its checkpoint's network; refuse settings that would silently not apply."""
    asked = encoder.method_impl.resume_checks(encoder.config, config)
    diff = [f"{k} {have!r} (asked: {want!r})" for k, (have, want) in asked.items() if have != want]
    if diff:
        raise TrainingError(
            f"cannot {verb} {ckpt}: it was trained with {', '.join(diff)}. "
            "Match its settings, or train into a new --out."
        )


# ----- data ---------------------------------------------------------------------------------------
@dataclass
class TrainItem:
    record: ImageRecord
    digest: str


class _TrainDataset(Dataset):
    """Query-side pixels (augmented, seeded per item) plus the index used to fetch teacher features."""

    def __init__(self, items: Sequence[TrainItem], transform, teacher_transform, seed: int, need_pixels: bool):
        self.items = items
        self.transform = transform
        self.teacher_transform = teacher_transform
        self.seed = seed
        self.need_pixels = need_pixels
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        """``(index, pixels or None, teacher pixels or None, ok)``."""
        if not self.need_pixels and self.teacher_transform is None:
            return i, None, None, True  # features come from the cache alone
        try:
            image = load_image(self.items[i].record.read_bytes())
        except (ImageDecodeError, OSError):
            return i, None, None, False  # vanished or changed since the cache was built
        pixels = teacher = None
        if self.need_pixels:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
                pixels = self.transform(image)
        if self.teacher_transform is not None:
            teacher = self.teacher_transform(image)
        return i, pixels, teacher, True


def _collate(batch):
    """Drop images that failed to load; report how many."""
    good = [b for b in batch if b[3]]
    idx = torch.tensor([b[0] for b in good], dtype=torch.long)
    pixels = torch.stack([b[1] for b in good]) if good and good[0][1] is not None else None
    teacher = torch.stack([b[2] for b in good]) if good and good[0][2] is not None else None
    return idx, pixels, teacher, len(batch) - len(good)


# ----- the module DDP wraps -----------------------------------------------------------------------
class TrainModule(nn.Module):
    """Query encoder + temperature; computes the whole loss so DDP sees one forward."""

    def __init__(self, encoder: QueryEncoder, foundation, config: TrainConfig):
        super().__init__()
        self.encoder = encoder
        self.temperature = Temperature(config.temperature, learnable=config.learn_temperature)
        object.__setattr__(self, "_foundation", foundation)  # frozen, not a parameter owner here
        self.cfg = config

    def forward(self, pixels, teacher_global, teacher_local, teacher_hidden):
        fnd = self._foundation
        tokens = self.encoder(pixels, global_features=teacher_global, local_features=teacher_local)
        query = fnd.encode_composed(tokens, None, self.cfg.template, expected_tokens=self.encoder.num_tokens)
        scale = self.temperature.scale()
        if dist.is_initialized() and dist.get_world_size() > 1:
            # the global batch: every rank's teachers are every rank's negatives
            gcd_backward, gcd = gcd_loss_global(query, teacher_global, scale)
        else:
            gcd = gcd_loss(query, teacher_global, scale)
            gcd_backward = gcd
        lar = torch.zeros((), device=gcd.device)
        if self.cfg.lar_weight > 0:
            if fnd.has_matching_head:
                neg = hardest_negatives(query @ teacher_global.T)
                pos_logits = fnd.match_score(teacher_hidden, pseudo_tokens=tokens, template=self.cfg.template)
                neg_logits = fnd.match_score(teacher_hidden[neg], pseudo_tokens=tokens, template=self.cfg.template)
                lar = lar_itm_loss(pos_logits, neg_logits)
            else:
                b, n, d = tokens.shape
                single = fnd.encode_composed(tokens.reshape(b * n, 1, d), None, self.cfg.template)
                lar = lar_patch_loss(single.view(b, n, -1), teacher_local, scale)
        # LAR and the word prior stay per rank: DDP's gradient average is their global mean
        rest = self.cfg.lar_weight * lar
        if self.cfg.word_weight > 0:
            rest = rest + self.cfg.word_weight * word_prior_loss(tokens, fnd.token_embedding.weight)
        return gcd_backward + rest, (gcd + rest).detach(), gcd.detach(), lar.detach()


def _lr_lambda(warmup: int, total: int, min_ratio: float):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


# ----- the training run ---------------------------------------------------------------------------
@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_loss: float
    skipped: dict = field(default_factory=dict)
    seconds: float = 0.0
    history: list = field(default_factory=list)
    encoder: Optional[QueryEncoder] = None


def _teacher_kinds(config: TrainConfig, foundation) -> tuple[bool, bool]:
    """Which teacher features beyond the global one this run reads: ``(local, hidden)``."""
    need_local = (config.lar_weight > 0 and not foundation.has_matching_head) or get_method(
        config.method
    ).reads == "local"
    need_hidden = config.lar_weight > 0 and foundation.has_matching_head
    return need_local, need_hidden


def _prepare_items(
    config, foundation, sources, cache: TeacherCache, info: DistInfo, log, work: Path
) -> tuple[list[TrainItem], dict]:
    """Build (or reuse) the teacher cache; every rank encodes its share of the records."""
    records = discover_images(sources)
    need_local, need_hidden = _teacher_kinds(config, foundation)
    mine = list(range(info.rank, len(records), info.world))
    if config.use_cache:
        # Rank 0 creates the index database (switching SQLite to WAL needs it alone) before the
        # other ranks open it.
        if info.main:
            cache._connect()
        _barrier(info)
        report, hashes = cache.build(
            [records[i] for i in mine],
            foundation,
            batch_size=max(8, config.batch_size),
            num_workers=config.num_workers,
            local=need_local,
            hidden=need_hidden,
            local_grid=config.local_grid,
            progress=config.progress and info.main,
            writer=info.rank,
        )
    else:
        report, hashes = hash_records([records[i] for i in mine], num_workers=config.num_workers)
    work.mkdir(parents=True, exist_ok=True)
    part = work / f".manifest-{os.getpid()}-rank{info.rank}.json"
    tmp = part.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "index": mine,
                "hashes": hashes,
                "skipped": report.skipped,
                "summary": report.summary(),
                "examples": report.skipped_examples[:5],
            }
        )
    )
    os.replace(tmp, part)
    parts = [part]
    if info.world > 1:
        gathered: list = [None] * info.world
        dist.all_gather_object(gathered, str(part))
        parts = [Path(p) for p in gathered]
    all_hashes: list[str | None] = [None] * len(records)
    skipped: dict[str, int] = {}
    for p in parts:
        data = json.loads(Path(p).read_text())
        for i, h in zip(data["index"], data["hashes"], strict=True):
            all_hashes[i] = h
        for k, v in data["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        log(f"teacher cache: {data['summary']}")
        for ex in data["examples"]:
            log(f"  skipped {ex}")
    _barrier(info)
    part.unlink(missing_ok=True)
    seen: set[str] = set()
    items = []
    for rec, digest in zip(records, all_hashes, strict=True):
        if digest and digest not in seen:  # duplicates would be false negatives in the batch
            seen.add(digest)
            items.append(TrainItem(rec, digest))
    cache._index = None
    return items, skipped


def train(
    sources: str | Sequence[str],
    foundation,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    resume: bool | str = False,
    log=print,
) -> TrainResult:
    """Train a query encoder for ``foundation`` on unlabeled images; returns where it was saved."""
    from ..progress import progress_bar

    info = init_distributed()
    if config.num_workers is None:
        config = replace(config, num_workers=min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    out_dir = Path(out_dir)
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    foundation = foundation.to(device)
    say = log if info.main else (lambda *a, **k: None)
    check_settings(config, foundation)

    # The feature kinds are part of the cache's identity: a global-only cache cannot serve a run
    # that needs patch features, so such runs get their own cache folder.
    need_local, need_hidden = _teacher_kinds(config, foundation)
    variant = {"grid": config.local_grid, "local": need_local, "hidden": need_hidden}
    cache_root = Path(config.cache_dir) if config.cache_dir else out_dir / "teacher-cache"
    check_shared_filesystem([out_dir, cache_root], info)
    cache = TeacherCache(cache_root, foundation.fingerprint, variant)
    items, skipped = _prepare_items(config, foundation, sources, cache, info, say, out_dir)
    if len(items) < config.batch_size * info.world:
        raise TrainingError(
            f"{len(items)} usable images are fewer than one batch ({config.batch_size} x {info.world} ranks)"
        )

    # model: fresh, or from a checkpoint
    ckpt: Path | None = None
    if resume:
        ckpt = (
            Path(resume)
            if isinstance(resume, (str, os.PathLike)) and str(resume) not in ("True", "1")
            else latest_checkpoint(out_dir)
        )
        if ckpt is None:
            say(f"no checkpoint in {out_dir / 'checkpoints'}; starting fresh")
    if ckpt is not None:
        encoder = QueryEncoder.from_pretrained(ckpt, foundation=foundation)
        _check_resumed_architecture(encoder, config, ckpt)
    elif config.init_from:
        # continue from a trained encoder: its network, this run's data and schedule
        encoder = QueryEncoder.from_pretrained(config.init_from, foundation=foundation)
        _check_resumed_architecture(encoder, config, Path(config.init_from), verb="continue from")
        encoder.config.parent_fingerprint = encoder.fingerprint
        say(f"continuing from {config.init_from} (encoder {encoder.config.parent_fingerprint})")
    else:
        encoder = QueryEncoder.create(
            foundation,
            backbone=config.backbone,
            num_tokens=config.tokens,
            pretrained=config.pretrained_backbone,
            image_size=config.image_size,
            method=config.method,
            template=config.template,
            **({"local_grid": config.local_grid} if get_method(config.method).reads == "local" else {}),
            output_stride=config.output_stride,
        )
    module = TrainModule(encoder, foundation, config).to(device).train()
    model = module
    if info.world > 1:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[info.local_rank] if device.type == "cuda" else None
        )

    per_epoch = len(epoch_order(len(items), config.seed, 0, info, config.batch_size)) // config.batch_size
    steps_per_epoch = per_epoch // config.grad_accum
    if steps_per_epoch < 1:
        raise TrainingError("batch size x grad accumulation exceeds the data; lower them")
    total = config.max_steps or config.epochs * steps_per_epoch
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if p.ndim < 2 or "temperature" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(min(config.warmup_steps, total // 2), total, config.min_lr_ratio)
    )
    step, epoch, micro = 0, 0, 0
    if ckpt is not None:
        state = torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        module.temperature.load_state_dict(state["temperature"])
        _set_rng_state(state["rng"])
        step = state["step"]
        epoch, micro = state["position"]["epoch"], state["position"]["micro"]
        say(f"resumed from {ckpt} at step {step} (epoch {epoch}, batch {micro})")

    need_pixels = not encoder.uses_foundation_features
    teacher_tf = foundation.transform if not config.use_cache else None
    if not config.use_cache and not need_pixels:
        raise TrainingError("the symmetric baselines read cached teacher features; use_cache must be on")
    qtf = query_transform(encoder.config.preprocess, config.augment) if need_pixels else None
    dataset = _TrainDataset(items, qtf, teacher_tf, config.seed, need_pixels)
    digests = [it.digest for it in items]
    kinds = set(cache.kinds()) if config.use_cache else set()

    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.csv"
    fields = ["step", "epoch", "loss", "gcd", "lar", "lr", "temperature", "images_per_s", "elapsed_s", "dropped"]
    if info.main:
        rows = []
        if log_path.is_file() and step > 0:
            with open(log_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(log_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        (out_dir / TRAIN_CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, default=str))

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    stop_at = min(total, config.stop_after) if config.stop_after else total
    bar = progress_bar(
        total=total,
        initial=step,
        desc=f"train {config.method}",
        unit="step",
        disable=not (info.main and config.progress),
    )
    t_start = time.perf_counter()
    history: list[dict] = []
    window_imgs, window_t = 0, time.perf_counter()
    dropped_total = 0
    last_loss = float("nan")
    acc_loss = acc_gcd = acc_lar = 0.0
    while step < stop_at:
        order = epoch_order(len(items), config.seed, epoch, info, config.batch_size)
        remaining = order[micro * config.batch_size :]
        dataset.epoch = epoch
        loader = DataLoader(
            torch.utils.data.Subset(dataset, remaining),
            batch_size=config.batch_size,
            shuffle=False,
            num_workers=config.num_workers if (need_pixels or teacher_tf) else 0,
            collate_fn=_collate,
            generator=torch.Generator(),  # keep the global RNG stream independent of loader restarts
        )
        for idx, pixels, teacher_px, dropped in loader:
            dropped_total += dropped
            if _skip_batch(len(idx), info, device):
                micro += 1
                continue
            batch_digests = [digests[i] for i in idx.tolist()]
            if config.use_cache:
                tg = cache.get(batch_digests, "global").to(device)
                tl = cache.get(batch_digests, "local").to(device) if "local" in kinds else None
                th = cache.get(batch_digests, "hidden").to(device) if "hidden" in kinds else None
            else:
                with torch.no_grad():
                    feats = foundation.encode_image_features(teacher_px.to(device))
                tg, tl, th = feats.global_, feats.local, feats.hidden
            pix = pixels.to(device) if pixels is not None else None
            sync = (micro + 1) % config.grad_accum == 0
            ctx = model.no_sync() if (info.world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with amp:
                    to_backward, loss, gcd, lar = model(pix, tg, tl, th)
                (to_backward / config.grad_accum).backward()
            acc_loss += loss.item() / config.grad_accum
            acc_gcd += gcd.item() / config.grad_accum
            acc_lar += lar.item() / config.grad_accum
            micro += 1
            window_imgs += len(idx) * info.world
            if not sync:
                continue
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_loss = acc_loss
            now = time.perf_counter()
            ips = window_imgs / max(1e-9, now - window_t)
            row = {
                "step": step,
                "epoch": epoch,
                "loss": round(acc_loss, 6),
                "gcd": round(acc_gcd, 6),
                "lar": round(acc_lar, 6),
                "lr": scheduler.get_last_lr()[0],
                "temperature": round(1.0 / module.temperature.scale().item(), 5),
                "images_per_s": round(ips, 2),
                "elapsed_s": round(now - t_start, 2),
                "dropped": dropped_total,
            }
            history.append(row)
            acc_loss = acc_gcd = acc_lar = 0.0
            if info.main:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.1f}")
                if step % config.log_every == 0 or step == stop_at:
                    with open(log_path, "a", newline="") as f:
                        csv.DictWriter(f, fieldnames=fields).writerow(row)
                    window_imgs, window_t = 0, time.perf_counter()
            at_epoch_end = micro * config.batch_size >= len(order)
            if step % config.checkpoint_every == 0 or step == stop_at:
                _average_buffers(module, info)
                position = {"epoch": epoch + 1, "micro": 0} if at_epoch_end else {"epoch": epoch, "micro": micro}
                if info.main:
                    _save_checkpoint(out_dir, step, module, optimizer, scheduler, position, config.keep_checkpoints)
                _barrier(info)
            if step >= stop_at:
                break
        if step >= stop_at:
            break
        epoch += 1
        micro = 0
    bar.close()
    if info.main and step >= total:
        encoder.save_pretrained(out_dir / "final")
    _barrier(info)
    seconds = time.perf_counter() - t_start
    say(
        f"trained {step} steps in {seconds:.1f}s; final loss {last_loss:.4f}; "
        f"images dropped while training: {dropped_total}"
    )
    return TrainResult(out_dir, step, last_loss, skipped, seconds, history, encoder.eval())

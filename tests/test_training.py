"""Training on tiny random models: overfitting, exact resume, DDP, bad files, cache resume."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from isacir.errors import IsacirError
from isacir.query import QueryEncoder
from isacir.training import TeacherCache, TrainConfig, discover_images, train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def make_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def images64(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("imgs64"), 64)


def _cfg(**kw):
    base = dict(
        method="isa",
        backbone="mobilenetv3_small_050",
        tokens=4,
        image_size=48,
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        num_workers=0,
        augment="none",
        progress=False,
        checkpoint_every=10_000,
    )
    base.update(kw)
    return TrainConfig(**base)


def self_retrieval_r1(encoder, fnd, paths) -> float:
    with torch.no_grad():
        q = fnd.encode_composed(encoder.encode_images(paths, foundation=fnd), None)
        g = fnd.encode_image(fnd.preprocess_batch(paths))
    return ((q @ g.T).argmax(1) == torch.arange(len(paths))).float().mean().item()


def test_overfit_tiny_run(tmp_path, images64, openclip_fnd):
    res = train(
        str(images64), openclip_fnd, tmp_path / "run", _cfg(epochs=100, image_size=64, lr=2e-3), log=lambda m: None
    )
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < 0.6 * first, (first, last)
    encoder = QueryEncoder.from_pretrained(tmp_path / "run" / "final", foundation=openclip_fnd)
    paths = [r.path for r in discover_images(images64)]
    assert self_retrieval_r1(encoder, openclip_fnd, paths) >= 0.9
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss,gcd,lar,lr,temperature,images_per_s") and len(log) > 5


def test_blip_with_itm_lar_trains(tmp_path, images64, blip_fnd):
    res = train(str(images64), blip_fnd, tmp_path / "run", _cfg(epochs=25, lar_weight=0.5), log=lambda m: None)
    assert res.history[-1]["gcd"] < 0.6 * res.history[0]["gcd"]
    assert res.history[-1]["lar"] < res.history[0]["lar"]
    paths = [r.path for r in discover_images(images64)]
    assert self_retrieval_r1(res.encoder, blip_fnd, paths) >= 0.5


@pytest.mark.parametrize("method", ["pic2word", "isa-symmetric"])
def test_symmetric_baselines_train_from_cache(tmp_path, images64, openclip_fnd, method):
    res = train(
        str(images64), openclip_fnd, tmp_path / "run", _cfg(method=method, epochs=100, local_grid=2), log=lambda m: None
    )
    assert res.history[-1]["loss"] < 0.7 * res.history[0]["loss"]
    enc = QueryEncoder.from_pretrained(tmp_path / "run" / "final", foundation=openclip_fnd)
    assert enc.config.method == method and enc.num_tokens == (1 if method == "pic2word" else 4)
    paths = [r.path for r in discover_images(images64)]
    assert self_retrieval_r1(enc, openclip_fnd, paths) > 0.3  # chance is 1/64


def test_lar_patch_loss_runs_for_clip(tmp_path, images64, openclip_fnd):
    res = train(str(images64), openclip_fnd, tmp_path / "run", _cfg(epochs=4, lar_weight=0.3), log=lambda m: None)
    assert all(r["lar"] > 0 for r in res.history)


def test_word_prior_pulls_tokens_onto_words(tmp_path, images64, openclip_fnd):
    paths = [r.path for r in discover_images(images64)]
    words = torch.nn.functional.normalize(openclip_fnd.token_embedding.weight.detach(), dim=-1)

    def nearest_word_cos(weight: float) -> float:
        train(
            str(images64), openclip_fnd, tmp_path / f"w{weight}", _cfg(epochs=6, word_weight=weight), log=lambda m: None
        )
        enc = QueryEncoder.from_pretrained(tmp_path / f"w{weight}" / "final", foundation=openclip_fnd)
        with torch.no_grad():
            t = torch.nn.functional.normalize(enc.encode_images(paths, foundation=openclip_fnd).flatten(0, 1), dim=-1)
        return (t @ words.T).max(dim=1).values.mean().item()

    off, on = nearest_word_cos(0.0), nearest_word_cos(20.0)
    assert on > off + 0.1, (off, on)


def test_init_from_starts_at_the_parent_and_records_it(tmp_path, images64, openclip_fnd):
    """--init-from continues from a trained encoder (its weights, not a fresh network) and records it."""
    parent = train(str(images64), openclip_fnd, tmp_path / "parent", _cfg(max_steps=2), log=lambda m: None).encoder
    parent_fp = parent.fingerprint
    # a vanishing learning rate: whatever the child holds after its steps is where it started
    child_cfg = _cfg(max_steps=2, lr=1e-12, weight_decay=0.0, init_from=str(tmp_path / "parent" / "final"))
    train(str(images64), openclip_fnd, tmp_path / "child", child_cfg, log=lambda m: None)
    child = QueryEncoder.from_pretrained(tmp_path / "child" / "final")
    assert child.config.parent_fingerprint == parent_fp
    assert child.fingerprint != parent_fp  # a new version, even with (almost) the same weights
    p, c = parent.state_dict(), child.state_dict()
    weights = [k for k in p if p[k].is_floating_point() and "running" not in k]
    assert max((p[k].float() - c[k].float()).abs().max().item() for k in weights) < 1e-6
    fresh = train(str(images64), openclip_fnd, tmp_path / "fresh", _cfg(max_steps=2, lr=1e-12), log=lambda m: None)
    f = fresh.encoder.state_dict()
    assert max((p[k].float() - f[k].float()).abs().max().item() for k in weights) > 1e-3  # the check can fail
    # the parent's network wins: settings that would not apply are refused, naming them
    with pytest.raises(IsacirError, match="cannot continue from .*tokens 4 .asked: 2."):
        train(str(images64), openclip_fnd, tmp_path / "bad", _cfg(max_steps=1, tokens=2, init_from=child_cfg.init_from))
    # an encoder without a parent keeps the config (and so the fingerprint) it always had
    assert "parent_fingerprint" not in parent.config.to_dict()


def test_resume_equivalence(tmp_path, images64, openclip_fnd):
    """3 steps, stop, resume, 3 more == 6 straight steps (augmentation and grad accumulation on)."""
    cfg = dict(batch_size=16, grad_accum=2, epochs=3, augment="light", warmup_steps=2, log_every=1)
    straight = train(str(images64), openclip_fnd, tmp_path / "a", _cfg(**cfg), log=lambda m: None)
    assert straight.steps == 6
    first = train(str(images64), openclip_fnd, tmp_path / "b", _cfg(stop_after=3, **cfg), log=lambda m: None)
    assert first.steps == 3 and not (tmp_path / "b" / "final").exists()
    resumed = train(str(images64), openclip_fnd, tmp_path / "b", _cfg(**cfg), resume=True, log=lambda m: None)
    assert resumed.steps == 6
    a = QueryEncoder.from_pretrained(tmp_path / "a" / "final").state_dict()
    b = QueryEncoder.from_pretrained(tmp_path / "b" / "final").state_dict()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    rows = (tmp_path / "b" / "train_log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 7))
    # a resumed run keeps its checkpoint's network, so settings that would not apply are refused
    from isacir.training.trainer import TrainingError

    for change, needle in (
        ({"output_stride": 16}, "output_stride None (asked: 16)"),
        ({"tokens": 2}, "tokens 4 (asked: 2)"),
    ):
        with pytest.raises(TrainingError, match=re.escape(needle)):
            train(
                str(images64), openclip_fnd, tmp_path / "b", _cfg(**{**cfg, **change}), resume=True, log=lambda m: None
            )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_ddp_two_processes_gloo(tmp_path, images64, tiny_openclip_dir):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        str(Path(__file__).parent / "ddp_train_worker.py"),
        str(images64),
        tiny_openclip_dir[0],
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[:6000]
    assert "rank 0 world 2" in proc.stdout and "rank 1 world 2" in proc.stdout
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    final = QueryEncoder.from_pretrained(out / "final").state_dict()
    assert all(torch.equal(final[k], r0[k]) for k in r0)
    # 64 images / 2 ranks / batch 8 = 4 steps per epoch, 2 epochs
    assert "steps 8" in proc.stdout


@pytest.mark.ddp
@pytest.mark.parametrize("split", ["4,4", "5,1"])
def test_ddp_global_batch_gcd_equals_one_process(tmp_path, split):
    """Loss and gradients of a global batch split over 2 gloo ranks (evenly, and 5 + 1 rows) equal
    the single-process ones, step after step; no rank skips alone."""
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        str(Path(__file__).parent / "ddp_loss_worker.py"),
        str(out),
        split,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[:6000]
    result = json.loads(out.read_text())
    assert result["diffs"]["loss"] < 1e-5 and result["diffs"]["grad"] < 1e-5, result
    assert result["diffs"]["weight"] < 1e-5, result
    r0, r1 = result["decisions"]
    assert r0 == r1  # decided together: no rank waits alone at a sync
    assert r0 == {"zero_on_one_rank": True, "one_each": False, "one_and_four": False, "two_and_zero": True}
    # without a shared filesystem, every rank stops with the same message naming the rank that cannot see
    m0, m1 = result["shared_fs"]
    assert m0 == m1 and "rank 1 on" in m0 and "view-of-rank1" in m0 and "rank 0 on" not in m0


def _bad_files(folder: Path) -> dict:
    (folder / "zero.jpg").write_bytes(b"")
    good = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("L", (8200, 8200)).save(folder / "bomb.png")
    (folder / "notes.txt").write_text("not an image, and not a training extension")
    return {"empty": 1, "truncated": 1, "corrupt": 1, "too_large": 1}


def test_folder_with_bad_files_trains_and_reports(tmp_path, tiny_openclip_dir):
    folder = make_images(tmp_path / "imgs", 40)
    expected = _bad_files(folder)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "train",
            "--images",
            str(folder),
            "--foundation",
            tiny_openclip_dir[0],
            "--out",
            str(tmp_path / "run"),
            "--backbone",
            "mobilenetv3_small_050",
            "--tokens",
            "2",
            "--image-size",
            "48",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["skipped"] == expected and result["steps"] == 4
    assert "4 skipped" in proc.stderr and "too_large: 1" in proc.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


SLOW_BUILD = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
from isacir.foundation import create_foundation
from isacir.training import TeacherCache, discover_images
fnd = create_foundation(sys.argv[1])
orig = fnd._image_forward
def slow(pixels, local):
    time.sleep(0.3)
    return orig(pixels, local)
fnd._image_forward = slow
cache = TeacherCache(sys.argv[3], fnd.fingerprint)
cache.build(discover_images(sys.argv[2]), fnd, batch_size=8, shard_size=8, progress=False)
print("finished")
"""


def test_killed_cache_build_resumes(tmp_path, images64, tiny_openclip_dir, openclip_fnd):
    root = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, tiny_openclip_dir[0], str(images64), str(root)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cache = TeacherCache(root, openclip_fnd.fingerprint)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (cache.dir / "index.sqlite").exists():
            cache._index = None
            try:
                if 16 <= len(cache) < 64:
                    break
            except Exception:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache._index = None
    done_before = len(cache)
    assert 16 <= done_before < 64, done_before
    # a half-written shard left behind by a crash must not confuse the rerun
    (cache.dir / "shard-999999.global.npy.tmp").write_bytes(b"partial")
    records = discover_images(images64)
    report, hashes = cache.build(records, openclip_fnd, batch_size=8, shard_size=8, progress=False)
    assert report.cached_before == done_before and report.computed == 64 - done_before
    assert len(cache) == 64 and all(hashes)
    clean = TeacherCache(tmp_path / "clean", openclip_fnd.fingerprint)
    clean.build(records, openclip_fnd, batch_size=8, shard_size=8, progress=False)
    assert torch.equal(cache.get(hashes, "local"), clean.get(hashes, "local"))
    assert torch.equal(cache.get(hashes, "global"), clean.get(hashes, "global"))


def test_cache_refuses_another_foundation(tmp_path, images64, openclip_fnd, blip_fnd):
    from isacir.errors import FoundationMismatchError

    cache = TeacherCache(tmp_path, openclip_fnd.fingerprint)
    with pytest.raises(FoundationMismatchError):
        cache.build(discover_images(images64), blip_fnd, progress=False)


def test_tar_shards_and_file_lists(tmp_path, images64):
    files = sorted(images64.iterdir())
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s:05d}.tar", "w") as tf:
            for f in files[s * 32 : (s + 1) * 32]:
                tf.add(f, arcname=f"{f.stem}.png")
                info = tarfile.TarInfo(f"{f.stem}.txt")
                caption = b"a caption img2dataset would write"
                info.size = len(caption)
                tf.addfile(info, io.BytesIO(caption))
    recs = discover_images(str(tmp_path / "shard-{00000..00001}.tar"))
    assert len(recs) == 64 and all(r.member.endswith(".png") for r in recs)
    assert recs[5].read_bytes() == files[5].read_bytes()
    (tmp_path / "list.txt").write_text("# comment\n" + "\n".join(os.path.relpath(f, tmp_path) for f in files[:10]))
    assert [r.path for r in discover_images(tmp_path / "list.txt")] == [
        str(tmp_path / os.path.relpath(f, tmp_path)) for f in files[:10]
    ]
    from isacir.data import DataSourceError

    with pytest.raises(DataSourceError, match="not found"):
        discover_images(str(tmp_path / "missing-{0..3}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no images"):
        discover_images(tmp_path / "empty")


def test_uncached_training_matches_cached(tmp_path, images64, openclip_fnd):
    """Recomputing teacher features every step gives the same losses (up to the cache's fp16)."""
    cfg = dict(epochs=2, batch_size=32, log_every=1)
    cached = train(str(images64), openclip_fnd, tmp_path / "c", _cfg(**cfg), log=lambda m: None)
    fresh = train(str(images64), openclip_fnd, tmp_path / "f", _cfg(use_cache=False, **cfg), log=lambda m: None)
    assert not (tmp_path / "f" / "teacher-cache").exists()
    for a, b in zip(cached.history, fresh.history, strict=True):
        assert abs(a["loss"] - b["loss"]) < 2e-2 * abs(a["loss"]), (a["loss"], b["loss"])


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--method", "pic2word", "--output-stride", "16"], ["output_stride applies to the isa backbone only"]),
        (["--augment", "strong", "--tokens", "0"], ["unknown augmentation 'strong'", "tokens must be between 1 and"]),
        (["--lr", "0", "--batch-size", "0"], ["lr must be positive", "batch_size must be at least 1"]),
    ],
)
def test_contradictory_settings_fail_before_the_teacher_cache(tmp_path, tiny_openclip_dir, args, needles):
    folder = make_images(tmp_path / "imgs", 4)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isacir.cli",
            "train",
            "--images",
            str(folder),
            "--foundation",
            tiny_openclip_dir[0],
            "--out",
            str(tmp_path / "run"),
            "--backbone",
            "mobilenetv3_small_050",
            "--no-progress",
            *args,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:  # every problem is named at once
        assert needle in proc.stderr
    assert not (tmp_path / "run" / "teacher-cache").exists()  # nothing was encoded first


@pytest.mark.lab
def test_medium_augmentation_jitters_tone_but_keeps_every_colour_name():
    """Colour edits are queries, so the jitter may change brightness and contrast, never the colour's name."""
    import colorsys

    from isacir.query.preprocess import PreprocessConfig
    from isacir.training.augment import query_transform
    from isacir_lab.shapes.world import BACKGROUNDS, COLOURS, Obj, Scene, render

    pre = PreprocessConfig(image_size=64)
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)

    def name(rgb):
        h, s, _ = colorsys.rgb_to_hsv(*rgb)
        hues = {c: colorsys.rgb_to_hsv(*(v / 255 for v in p))[0] for c, p in COLOURS.items() if c != "white"}
        if s < 0.15:
            return "white"
        return min(hues, key=lambda c: min(abs(hues[c] - h), 1 - abs(hues[c] - h)))

    tf = query_transform(pre, "medium")
    for colour in COLOURS:
        centres = []
        for bg in range(len(BACKGROUNDS)):
            img = render(Scene((Obj("square", colour, "large", 4),), bg), size=64)
            for draw in range(3):
                torch.manual_seed(100 * bg + draw)
                x = tf(img) * std + mean  # back to [0, 1] pixels
                rgb = x[:, 28:36, 28:36].mean(dim=(1, 2)).clamp(0, 1).tolist()
                assert name(rgb) == colour, (colour, bg, rgb)
                centres.append(rgb)
        assert torch.tensor(centres).std(dim=0).max() > 0.02  # the tone really varies

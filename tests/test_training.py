"""G2Face training: losses finite and falling on real faces, exact resume, data-parallel == one process; the
official-epoch lr schedule, the training payload, resume config checks, data epochs and the final checkpoint."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from g2face_eval.models.geometry import CHECKPOINT
from g2face_eval.training import ddp
from g2face_eval.training.data import load_train_images
from g2face_eval.training.loop import (
    OFFICIAL_EPOCH_IMAGES,
    TrainConfig,
    Trainer,
    lr_factor,
    lr_factor_at,
    schedule_steps_per_epoch,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions, no oversubscription on shared CPUs
    yield
    torch.set_num_threads(n)


def _cfg(root, out, **kw) -> TrainConfig:
    base = dict(size=32, tiny_width=8, batch=4, steps=4, warmup_epochs=0, identity="sface", geometry="none",
                perceptual="none", mlflow=False, ckpt_every=0, log_every=1000, limit=16, data_root=str(root),
                device="cpu", out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def _images(root, n=16):
    return load_train_images(32, root, limit=n, log=lambda *_: None)


def _official_lr(k: int, warmup: int = 10, gamma: float = 0.95) -> float:
    """Reference manifest: lr 0 after construction, base*k/10 for official epochs 1..10 (the scheduler is
    stepped once at the start of each epoch), then x0.95 per epoch from epoch 11."""
    return 0.0 if k == 0 else (k / warmup if k <= warmup else gamma ** (k - warmup))


def test_lr_schedule_official():
    # GradualWarmupScheduler(multiplier=1, 10 epochs) then ExponentialLR(0.95), stepped at the start of every
    # epoch: 0-based training epoch e runs at official epoch e + 1, so no training epoch runs at lr 0
    assert math.isclose(lr_factor(0, 10, 0.95), 0.1)
    assert math.isclose(lr_factor(4, 10, 0.95), 0.5)
    assert lr_factor(9, 10, 0.95) == 1.0
    assert math.isclose(lr_factor(10, 10, 0.95), 0.95)
    assert math.isclose(lr_factor(11, 10, 0.95), 0.95 ** 2)
    for e in range(40):
        assert math.isclose(lr_factor(e, 10, 0.95), _official_lr(e + 1), rel_tol=1e-12), e
    # cpu-small preset (warm-up 1): the first epoch trains at the full lr, then decays
    assert lr_factor(0, 1, 0.95) == 1.0 and math.isclose(lr_factor(1, 1, 0.95), 0.95)
    # no warm-up (the shipped checkpoint's --warmup-epochs 0): full lr in epoch 0, x gamma per epoch after it
    assert lr_factor(0, 0, 0.95) == 1.0
    assert lr_factor(3, 0, 0.95) == 0.95 ** 3


def test_losses_finite_and_falling(datasets_root, tmp_path):
    """Full loss set (SFace identity, geometry prior, perceptual substitute, adversarial, hiding) on a fixed
    batch of 4 real faces at 32 px: every loss finite; reconstruction/hiding losses fall."""
    geometry = "mediapipe_lmm" if CHECKPOINT.exists() else "none"
    cfg = _cfg(datasets_root, tmp_path / "run", steps=14, fixed_batch=True, geometry=geometry, perceptual="effnet",
               lr=3e-3, lr_pretrained=3e-3)
    tr = Trainer(cfg, images=_images(datasets_root), log=lambda *_: None)
    hist = tr.fit()
    for h in hist:
        assert all(math.isfinite(v) for v in h.values()), h
    for key in ("l1", "hiding", "g_total"):
        first = sum(h[key] for h in hist[:3]) / 3
        last = sum(h[key] for h in hist[-3:]) / 3
        assert last < first, (key, first, last, [round(h[key], 3) for h in hist])
    assert "r1" in hist[0] and "geometry" in hist[0] and "perceptual" in hist[0]
    assert all(0.0 <= h[k] <= 1.0 for h in hist for k in ("bit_acc", "bit_acc_rec"))


@pytest.mark.parametrize("split", [2, 3])  # resume at an epoch boundary / in the middle of an epoch
def test_resume_is_exact(datasets_root, tmp_path, split):
    imgs = _images(datasets_root)
    cfg = _cfg(datasets_root, tmp_path / "run", steps=4, steps_per_epoch=2, warmup_epochs=1)
    straight = Trainer(cfg, images=imgs, log=lambda *_: None)
    h_all = straight.fit(4)
    expected = [cfg.lr * f for f in (1.0, 1.0, 0.95, 0.95)]  # warm-up 1, 2 steps per epoch
    assert [h["lr_g"] for h in h_all] == pytest.approx(expected, rel=1e-12)  # epoch 0 does not run at lr 0
    assert [g["lr"] for g in straight.opt_g.param_groups] == pytest.approx([cfg.lr * 0.95, cfg.lr_pretrained * 0.95])

    first = Trainer(cfg, images=imgs, log=lambda *_: None)
    h1 = first.fit(split)
    first.save(tmp_path / "ck")
    del first
    second = Trainer(cfg, images=imgs, log=lambda *_: None)
    second.load(tmp_path / "ck")
    assert second.step == split
    h2 = second.fit(4)
    assert [h["lr_g"] for h in h2] == [h["lr_g"] for h in h_all[split:]]  # resumed lr == uninterrupted lr
    assert h1 + h2 == h_all
    a, b = straight.state_tensors(), second.state_tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = straight.opt_g.state_dict(), second.opt_g.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        assert torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"])


def _grads(tr: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None}


def _ddp_worker(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = ddp.init("cpu")
    try:
        cfg = _cfg(root, Path(out).parent / "ddp_run", batch=2, accum=1, steps=2)
        tr = Trainer(cfg, info, log=lambda *_: None)
        h1 = tr.fit(1)
        grads = _grads(tr)  # all-reduced (averaged) gradients of step 1, G and D
        h2 = tr.fit(2)
        if rank == 0:
            torch.save({"grads": grads, "hist": h1 + h2}, out)
        ddp.cleanup(sync=True)
    finally:
        ddp.cleanup()


def test_ddp_two_gloo_ranks_match_one_process(datasets_root, tmp_path):
    """2 gloo ranks x batch 2 == one process with the same global batch of 4 cut into 2 micro-batches:
    same per-step losses (2 steps) and same averaged gradients (step 1) within float tolerance.

    Batch-coupled layers (Map2ID/extractor BatchNorm, minibatch-stddev, the diversity loss) act per device as
    in the official 4-GPU run, so the one-process reference uses 2 micro-batches of 2. Parameters after the
    step are not compared: Adam with beta1 = 0 turns float noise of (near-)zero gradients - e.g. conv biases
    before an affine-free InstanceNorm - into +-lr steps."""
    import torch.multiprocessing as mp

    _images(datasets_root)  # warm the image cache for the workers
    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, ddp.free_port(), str(datasets_root), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    res = torch.load(out, weights_only=True)
    single = Trainer(_cfg(datasets_root, tmp_path / "single", batch=2, accum=2, steps=2), log=lambda *_: None)
    hist = single.fit(1)
    grads = _grads(single)
    hist += single.fit(2)
    assert len(res["hist"]) == len(hist) == 2
    for h_d, h_s in zip(res["hist"], hist, strict=True):
        assert h_d.keys() == h_s.keys()
        for k in h_s:
            # bit accuracies are hard decisions: float noise may flip a logit near 0 (1 of 256 bits = 0.004)
            tol = 0.01 if k.startswith("bit_acc") else 1e-5
            assert math.isclose(h_d[k], h_s[k], rel_tol=1e-4, abs_tol=tol), (k, h_d[k], h_s[k])
    assert res["grads"].keys() == grads.keys()
    for k, g in grads.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(res["grads"][k], g, rtol=1e-3, atol=1e-5 * max(scale, 1e-3), msg=k)


# ------------------------------------------------------------------------------------------------- audit fixes
class _World(ddp.DistInfo):
    """Rank 0 of a ``world``-rank run without a process group (collectives are skipped): the trainer sees the
    world size (global batch, shards, schedule) but computes only its own shard."""

    @property
    def distributed(self) -> bool:
        return False


def test_lr_schedule_counts_official_epochs(tmp_path):
    """Defaults on our 3,500-image split with 4 ranks: the schedule's epoch is the official 70,000 images
    (ceil(70000 / 32) = 2,188 steps), so the last of 100k steps still trains at lr factor 0.95^36 = 0.16 (a pass
    over our split, 109 steps, gave 0.95^908 ~ 6e-21). An explicit steps_per_epoch still overrides."""
    d = TrainConfig()
    assert d.steps == 100000 and d.steps_per_epoch is None and d.warmup_epochs == 10
    assert OFFICIAL_EPOCH_IMAGES == 70000
    assert schedule_steps_per_epoch(d, 4) == 2188 and schedule_steps_per_epoch(d, 1) == 8750
    assert schedule_steps_per_epoch(TrainConfig(steps_per_epoch=200), 4) == 200
    assert lr_factor_at(d.steps - 1, 2188, d.warmup_epochs, d.gamma) >= 0.1
    # the trainer itself: schedule-relevant fields at their defaults (tiny network to keep it cheap)
    cfg = TrainConfig(size=32, tiny_width=8, identity="sface", geometry="none", perceptual="none", mlflow=False,
                      device="cpu", out=str(tmp_path / "run"))
    assert (cfg.batch, cfg.accum, cfg.steps, cfg.steps_per_epoch, cfg.warmup_epochs, cfg.gamma, cfg.lr) == (
        d.batch, d.accum, d.steps, d.steps_per_epoch, d.warmup_epochs, d.gamma, d.lr)
    logs = []
    tr = Trainer(cfg, _World(world=4), images=torch.zeros(3500, 3, 32, 32, dtype=torch.uint8), log=logs.append)
    assert (tr.global_batch, tr.sched_spe, tr.data_spe) == (32, 2188, 109)
    assert tr.resolved()["lr_factor_final"] >= 0.1
    assert any("2188 steps/epoch" in m and "at the final step 100000" in m for m in logs), logs
    tr.step = cfg.steps - 1
    h = tr.train_step()
    assert h["lr_g"] >= 0.1 * cfg.lr
    assert math.isclose(h["lr_g"], cfg.lr * 0.95 ** (99999 // 2188 + 1 - 10), rel_tol=1e-12)


def test_keyed_training_payload(datasets_root, tmp_path):
    """Default payload "keyed" (what the shipped g2face hides): uniform bits in every column of the 32-bit
    words, drawn from the step's generator (same (step, shard) -> same bits); "official" keeps float2bit(randn)
    with its nearly constant exponent columns. bit_acc (both phases) is logged; the choice is in the checkpoint."""
    assert TrainConfig().payload == "keyed"
    imgs = _images(datasets_root)
    tr = Trainer(_cfg(datasets_root, tmp_path / "run", steps=1), images=imgs, log=lambda *_: None)
    r = tr._draws(0, 0, 512)
    for k in ("bits_a", "bits_r"):
        assert r[k].shape == (512, *tr.gcfg.bits_shape)
        cols = r[k].reshape(-1, 32).mean(0)
        assert bool(((cols >= 0.45) & (cols <= 0.55)).all()), (k, cols)
    assert not torch.equal(r["bits_a"], r["bits_r"])
    assert torch.equal(tr._draws(3, 1, 4)["bits_a"], tr._draws(3, 1, 4)["bits_a"])
    assert not torch.equal(tr._draws(3, 1, 4)["bits_a"], tr._draws(4, 1, 4)["bits_a"])
    logs = tr.train_step()
    assert 0.0 <= logs["bit_acc"] <= 1.0 and 0.0 <= logs["bit_acc_rec"] <= 1.0
    ck = tr.save(tmp_path / "ck")
    from safetensors import safe_open

    with safe_open(str(ck / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["payload"] == "keyed" and json.loads(meta["config"])["payload"] == "keyed"
    assert json.loads(meta["run"])["amp_dtype"] == "float32"

    off = Trainer(_cfg(datasets_root, tmp_path / "off", payload="official"), images=imgs, log=lambda *_: None)
    cols = off._draws(0, 0, 512)["bits_a"].reshape(-1, 32).mean(0)
    assert float(torch.minimum(cols, 1 - cols)[1:9].min()) < 0.05  # official: exponent columns ~constant
    with pytest.raises(ValueError, match="payload"):
        TrainConfig(payload="random")


def _rewrite_meta(ck: Path, fn) -> None:
    """Edit a checkpoint's safetensors metadata (simulating an older or another run's checkpoint)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    f = ck / "model.safetensors"
    with safe_open(str(f), "pt") as h:
        meta = dict(h.metadata())
    save_file(load_file(str(f)), str(f), metadata=fn(meta))


def test_resume_checks_run_settings(datasets_root, tmp_path):
    """Loading a checkpoint trained with other run-defining settings raises a ValueError naming them; run
    length, cadence, output and logging may change; world size x accum may be re-split; a checkpoint written
    before the payload option / run record counts as payload "official" with the old schedule epoch."""
    imgs = _images(datasets_root)

    def trainer(info=None, out="run", **kw):
        kw = {"seed": 1, **kw}
        return Trainer(_cfg(datasets_root, tmp_path / out, **kw), info, images=imgs, log=lambda *_: None)

    a = trainer(batch=2, accum=2)
    a.fit(1)
    ck = a.save(tmp_path / "ck")
    with pytest.raises(ValueError, match=r"seed \(1 in the checkpoint, 7 now\)") as e:
        trainer(seed=7, batch=2, accum=2).load(ck)
    assert "steps (" not in str(e.value)
    with pytest.raises(ValueError, match=r"lr \(0.001 in the checkpoint, 0.05 now\)") as e:
        trainer(batch=2, accum=2, lr=5e-2, payload="official").load(ck)
    assert "payload" in str(e.value) and "seed" not in str(e.value)
    with pytest.raises(ValueError, match=r"world_size x accum \(1 x 2 in the checkpoint, 1 x 1 now\)"):
        trainer(batch=2, accum=1).load(ck)
    with pytest.raises(ValueError, match="batch"):
        trainer(batch=4, accum=1).load(ck)
    with pytest.raises(ValueError, match="steps_per_epoch of the lr schedule"):
        trainer(batch=2, accum=2, steps_per_epoch=3).load(ck)
    ok = trainer(batch=2, accum=2, steps=10, ckpt_every=5, log_every=3, sample_every=7, mlflow_uri="x",
                 out="elsewhere", steps_per_epoch=schedule_steps_per_epoch(a.cfg))
    ok.load(ck)
    assert ok.step == 1
    trainer(_World(world=2), batch=2, accum=1).load(ck)  # 2 ranks x 1 == 1 rank x 2 micro-batches

    def legacy(meta):  # as written before this change: no run record, no payload field
        cfg = json.loads(meta["config"])
        del cfg["payload"]
        return {k: v for k, v in {**meta, "config": json.dumps(cfg)}.items() if k not in ("run", "payload")}

    _rewrite_meta(ck, legacy)
    from g2face_eval import zoo

    zoo.record_path(ck / "model.safetensors").unlink()  # written before checkpoints were sha256-recorded
    legacy_payload = r"payload \('official' in the checkpoint, 'keyed' now, the checkpoint predates this option\)"
    with pytest.raises(ValueError, match=legacy_payload) as e:
        trainer(batch=2, accum=2).load(ck)
    assert "steps_per_epoch of the lr schedule (4 in the checkpoint" in str(e.value)  # 16 images / 4
    old = trainer(batch=2, accum=2, payload="official", steps_per_epoch=4)
    old.load(ck)
    assert old.step == 1


def test_steps_per_epoch_beyond_the_data(datasets_root, tmp_path):
    """A schedule epoch longer than one pass over the data trains on (the loader reshuffles after each pass);
    impossible settings are rejected when the config is built, and the loader never indexes past the data."""
    cfg = _cfg(datasets_root, tmp_path / "run", steps=6, steps_per_epoch=5, flip=False)  # 16 images, batch 4
    tr = Trainer(cfg, images=_images(datasets_root), log=lambda *_: None)
    assert (tr.data_spe, tr.sched_spe) == (4, 5)
    hist = tr.fit(6)
    assert len(hist) == 6 and all(math.isfinite(v) for h in hist for v in h.values())
    assert [h["lr_g"] for h in hist] == pytest.approx([cfg.lr] * 5 + [cfg.lr * 0.95], rel=1e-12)
    assert [tr._data_pos(s) for s in (3, 4, 5)] == [(0, 3), (1, 0), (1, 1)]
    seen = torch.cat([tr.data.indices(*tr._data_pos(s)) for s in range(4)])
    assert sorted(seen.tolist()) == list(range(16))  # one data epoch = every image once
    with pytest.raises(ValueError, match="data epoch"):
        tr.data.batch(0, 4)
    for bad in ({"steps_per_epoch": 0}, {"steps_per_epoch": -3}, {"batch": 0}, {"accum": 0}, {"ckpt_every": -1},
                {"log_every": 0}, {"keep_every": -2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
    # the learned baselines' trainer still walks the data by its schedule epoch: refused before the first step
    from baselines.learned import base as B

    bl = B.BaselineTrainer(B.BaselineConfig(mode="fit", size=32, batch=4, steps=6, steps_per_epoch=5, mlflow=False,
                                            out=str(tmp_path / "bl"), perceptual="none", geometry="none",
                                            model={"size": 32, "width": 8}),
                           images=_images(datasets_root), log=lambda *_: None)
    with pytest.raises(ValueError, match="steps_per_epoch 5 > the 4 global batches"):
        bl.fit()
    assert bl.step == 0


def test_final_checkpoint_always_saved(datasets_root, tmp_path):
    """ckpt_every=0 saves no intermediate checkpoint but still the final one; otherwise the cadence plus the
    final step."""
    imgs = _images(datasets_root)
    for every, steps in ((0, 2), (3, 4)):
        out = tmp_path / f"every{every}"
        tr = Trainer(_cfg(datasets_root, out, steps=steps, ckpt_every=every), images=imgs, log=lambda *_: None)
        tr.fit()
        saved = json.loads((out / "last" / "config.json").read_text())
        assert saved["step"] == steps and (out / "last" / "model.safetensors").is_file()
        again = Trainer(_cfg(datasets_root, out, steps=steps + 1), images=imgs, log=lambda *_: None)
        again.load(out / "last")
        assert again.step == steps


def test_keep_every_keeps_verified_step_checkpoints(datasets_root, tmp_path):
    """keep_every=2 over 5 steps with no other cadence: step_2 and step_4 kept beside last (step 5), each a whole
    recorded and verified checkpoint of its own step that a run resumes from; keep_every may change on resume; a
    folder with kept steps only is refused to a new run, and a kept step is not resumed into a folder whose last
    checkpoint is later (found by a review)."""
    import shutil

    from g2face_eval import zoo
    from g2face_eval.training.loop import TrainSetupError, run, verify_checkpoint
    from g2face_eval.training.train import build_parser, config_from_args

    imgs = _images(datasets_root)
    out = tmp_path / "keep"
    Trainer(_cfg(datasets_root, out, steps=5, keep_every=2), images=imgs, log=lambda *_: None).fit()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["last", "step_2", "step_4"]
    for name, step in (("step_2", 2), ("step_4", 4), ("last", 5)):
        assert zoo.recorded_sha256(out / name / "model.safetensors") is not None
        verify_checkpoint(out / name, log=lambda *_: None)
        assert json.loads((out / name / "config.json").read_text())["step"] == step
    again = Trainer(_cfg(datasets_root, tmp_path / "again", steps=6, keep_every=3), images=imgs,
                    log=lambda *_: None)
    again.load(out / "step_4")
    assert again.step == 4
    args = build_parser().parse_args(["--preset", "tiny", "--keep-every", "100"])
    assert config_from_args(args).keep_every == 100
    # a folder holding only kept steps is a run's folder; resuming a kept step into it would overwrite later work
    shutil.rmtree(out / "last")
    with pytest.raises(TrainSetupError, match="already holds a checkpoint"):
        run(_cfg(datasets_root, out, steps=6), log=lambda *_: None)
    with pytest.raises(TrainSetupError, match="no last checkpoint but holds kept steps"):
        run(_cfg(datasets_root, out, steps=6), resume="auto", log=lambda *_: None)
    shutil.copytree(out / "step_4", out / "last")
    (out / "last" / "config.json").write_text(json.dumps({**json.loads((out / "last" / "config.json").read_text()),
                                                          "step": 5}))
    with pytest.raises(TrainSetupError, match="whose last checkpoint is at step 5"):
        run(_cfg(datasets_root, out, steps=6), resume=str(out / "step_2"), log=lambda *_: None)


def test_train_cli_refuses_overwrite_tampering_and_bad_settings(datasets_root, tmp_path, monkeypatch, capsys):
    """`g2face-eval train`: a folder that already holds a checkpoint is not overwritten without --resume; a
    tampered checkpoint is refused on resume (sha256); impossible settings and a G2Face too small for the keyed
    payload are refused at the start or at export — each in one line, exit 2, no traceback."""
    from g2face_eval.models import shipped
    from g2face_eval.training import train

    monkeypatch.setenv("G2FACE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    base = ["--preset", "tiny", "--limit", "8", "--batch", "2", "--no-mlflow", "--device", "cpu",
            "--data-root", str(datasets_root), "--out", str(out)]
    assert train.cli([*base, "--steps", "1"]) == 0
    capsys.readouterr()
    assert (out / "last" / "model.sha256").is_file()

    def refused(args, expect):
        assert train.cli(args) == 2, args
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err and err.startswith("g2face-eval train: "), err

    refused([*base, "--steps", "2"], "already holds a checkpoint")
    refused([*base, "--steps", "2", "--limit", "-5"], "limit=-5")
    refused([*base, "--steps", "2", "--lr", "-1"], "lr=-1.0")
    assert shipped.main(["export", str(out / "last"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "cannot carry the keyed payload" in capsys.readouterr().err   # 32 px / width 8: too few bits
    with pytest.raises(SystemExit):                                       # --out is required: the shipped
        shipped.main(["export", str(out / "last")])                       # file is never overwritten by default
    capsys.readouterr()
    m = out / "last" / "model.safetensors"
    m.write_bytes(m.read_bytes() + b"\0")
    refused([*base, "--steps", "2", "--resume", "auto"], "sha256")

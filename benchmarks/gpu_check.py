"""The GPU check behind benchmarks/gpu_check.sh: the project's speed claims on one GPU, in one table.

Rows (each measured after a warm-up, the two sides alternating epoch by epoch, medians reported):

* ``resnet50d_tricks`` training images/s through the :class:`~timm_tricks.train.Trainer`, bf16 and fp16 with
  channels_last, against a minimal loop built from timm's own functions (``timm.data.create_loader`` with its
  ``PrefetchLoader``, ``timm.optim.create_optimizer_v2``, ``timm.scheduler.create_scheduler_v2``,
  ``timm.loss.LabelSmoothingCrossEntropy``, ``timm.utils.NativeScaler`` for fp16) on the same synthetic images with
  the same batch, optimizer, schedule and smoothing; with ``torch.compile`` off and on; and the model FLOPs
  utilisation of each figure: images/s x training FLOPs per image (forward and backward, counted by
  ``torch.utils.flop_counter.FlopCounterMode``) / the GPU's dense bf16/fp16 peak (:data:`PEAK_TFLOPS` by device
  name, or ``--peak-tflops``).
* ``resnet9_tricks`` steps/s at batch 512, fp16, on CIFAR-sized (32x32) synthetic data, Trainer against the
  minimal loop (no augmentation, EMA or smoothing on either side).
* An FP16 overflow step (the loss of one step made infinite): the loss scaler skips it, the Trainer neither
  counts it as an update nor advances the learning-rate schedule, and the run goes on.
* With ``--timm-train PATH`` (timm's ``train.py`` from its repository; the pip package does not ship it),
  timm's own script on a JPEG folder of the same size, for reference (timm's ``resnet50d``: its script does not
  import this project's models).

Without CUDA, or with ``--dry-run``, the same code runs at tiny sizes on the CPU in well under a minute
(``tests/test_gpu_check.py`` runs it so in ``make test``). Only torch, timm, accelerate and this project are needed.
Exit status 0 when every row ran and the overflow check held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timm_script import run_timm_train, supported_flags, write_random_jpegs  # noqa: E402  (benchmarks/ is the script's folder)

import timm_tricks  # noqa: F401, E402  (registers the *_tricks models with timm)
from timm_tricks.config import load_config  # noqa: E402
from timm_tricks.train import Trainer  # noqa: E402

#: Dense bf16/fp16 tensor-core peaks in TFLOPS (vendor data sheets, without sparsity); the first name found in
#: ``torch.cuda.get_device_name()`` wins, so the longer names come first.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4),
               ("H100", 989.4), ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
               ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("T4", 65.0),
               ("RTX 4090", 165.2), ("RTX 3090", 71.0))


@dataclass(frozen=True)
class Sizes:
    model: str  # the ImageNet model of the first rows
    image: int  # its input side
    batch: int  # its batch
    steps: int  # steps per timed epoch
    rounds: int  # timed epochs per side, after one warm-up epoch each
    r9_batch: int
    r9_steps: int
    workers: int  # timm's create_loader workers
    mixed: bool  # bf16 / fp16 autocast (False: float32, the CPU's dry run)
    backend: str  # torch.compile's backend


GPU = Sizes("resnet50d_tricks", image=224, batch=256, steps=16, rounds=3, r9_batch=512, r9_steps=40, workers=8,
            mixed=True, backend="inductor")
#: The dry run: the same code on the CPU at sizes that take seconds (float32: a CPU without bf16 units emulates
#: it slowly; compile traced by dynamo without inductor's C++ build).
CPU = Sizes("resnet18d_tricks", image=32, batch=4, steps=2, rounds=1, r9_batch=16, r9_steps=2, workers=0,
            mixed=False, backend="eager")


@dataclass
class Row:
    """One line of the table."""
    check: str
    setting: str
    trainer: str = "-"
    baseline: str = "-"
    ratio: str = "-"
    mfu: str = "-"
    result: str = "ok"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_state() -> None:
    """Let the next Trainer build an Accelerator with another precision (accelerate keeps one state per process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trainer_sets(model: str, size: int, batch: int, steps: int, precision: str, compile_: bool) -> list[str]:
    """Overrides giving both sides the same work: synthetic images in memory, no augmentation, Nesterov SGD
    (lr 0.1, momentum 0.9, weight decay 5e-5 on every parameter), cosine with 1 warmup epoch, smoothing 0.1."""
    return [f"model.name={model}", "model.num_classes=1000", f"data.source=synthetic:{steps * batch}",
            f"data.image_size={size}", f"data.batch_size={batch}", "augment.train=none",
            f"train.precision='{precision}'", "train.channels_last=true", f"train.compile={str(compile_).lower()}",
            "optim.lr=0.1", "optim.weight_decay=5e-5", "optim.no_bias_decay=false", "schedule.name=cosine",
            "schedule.warmup_epochs=1", "loss.label_smoothing=0.1", "loss.smoothing_form=uniform", "train.epochs=100",
            "ema.enabled=false", "mixup.alpha=0"]


class SyntheticImages(torch.utils.data.Dataset):
    """The Trainer's synthetic uint8 images as PIL images, for timm's ``create_loader`` (which sets ``transform``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels, self.transform = images.cpu(), labels.cpu(), None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.images[i].permute(1, 2, 0).contiguous().numpy())
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])


def timm_loop(trainer: Trainer, s: Sizes, precision: str, compile_: bool) -> Callable[[], float]:
    """One epoch of a minimal training loop made of timm's functions, on ``trainer``'s images; returns its img/s."""
    import timm
    from timm.data import create_loader
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import NativeScaler

    device, cfg = trainer.device, trainer.cfg
    data = trainer.batches.data
    loader = create_loader(SyntheticImages(data.train_images, data.train_labels), (3, cfg.data.image_size,
                           cfg.data.image_size), cfg.data.batch_size, is_training=True, no_aug=True,
                           mean=data.mean, std=data.std, num_workers=s.workers, device=device,
                           pin_memory=device.type == "cuda", persistent_workers=s.workers > 0)
    torch.manual_seed(0)
    model = timm.create_model(cfg.model.name, num_classes=1000).to(device).to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-5, momentum=0.9)
    steps = len(loader)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=100, warmup_epochs=1, step_on_epochs=False,
                                       updates_per_epoch=steps)
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    scaler = NativeScaler(device.type) if precision == "fp16" else None
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    net = torch.compile(model) if compile_ else model  # the dry run's torch.compile traces with backend "eager"
    updates = [0]

    def epoch() -> float:
        net.train()
        sync(device)
        t0, n = time.perf_counter(), 0
        for images, labels in loader:
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=precision != "no"):
                loss = loss_fn(net(images), labels)
            optimizer_step(loss, optimizer, scaler)
            updates[0] += 1
            scheduler.step_update(updates[0])
            n += images.shape[0]
        sync(device)
        return n / (time.perf_counter() - t0)

    return epoch


def trainer_epoch(trainer: Trainer) -> Callable[[], float]:
    """One epoch of the Trainer's own step loop; returns its img/s."""
    count = [0]

    def epoch() -> float:
        trainer.state.step_in_epoch = 0
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer._train_epoch(count[0])
        sync(trainer.device)
        count[0] += 1
        return trainer.steps_per_epoch * trainer.per_device_batch / (time.perf_counter() - t0)

    return epoch


def alternate(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The median of ``rounds`` epochs of each side, alternating, after one warm-up epoch each."""
    for run in sides.values():
        run()
    rates: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rates[name].append(sides[name]())
    return {k: statistics.median(v) for k, v in rates.items()}


def train_flops_per_image(name: str, size: int, device: torch.device, **kwargs: Any) -> float:
    """Forward + backward FLOPs of one image, counted by ``FlopCounterMode`` on a batch of 2."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model(name, **kwargs).to(device)
    x = torch.randn(2, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    return counter.get_total_flops() / 2


def peak_for_name(name: str) -> float | None:
    """The dense bf16/fp16 peak in TFLOPS of a GPU named ``name`` (:data:`PEAK_TFLOPS`), or None."""
    return next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)


def peak_flops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """The GPU's dense bf16/fp16 peak in FLOP/s and where it came from."""
    if given:
        return given * 1e12, f"--peak-tflops {given:g}"
    if device.type != "cuda":
        return None, "no peak for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    tflops = peak_for_name(name)
    if tflops is None:
        return None, f"{name} not in the table (give --peak-tflops)"
    return tflops * 1e12, f"{name}: {tflops:g} TFLOPS from the table"


def resnet50_rows(s: Sizes, device: torch.device, out: Path, peak: float | None, budget: Budget) -> list[Row]:
    flops = train_flops_per_image(s.model, s.image, device, num_classes=1000)
    print(f"{s.model} at {s.image} px: {flops / 1e9:.3f} GFLOPs per image, forward and backward "
          "(FlopCounterMode)", file=sys.stderr, flush=True)
    rows = []
    for precision, compile_ in (("bf16", False), ("fp16", False), ("bf16", True)):
        precision = precision if s.mixed else "no"
        setting = f"{precision}, channels_last, compile {'on' if compile_ else 'off'}, batch {s.batch}, {s.image} px"
        row = Row(f"{s.model} img/s: Trainer vs timm-functions loop", setting)
        if budget.out():
            row.result = "skipped: time budget"
            rows.append(row)
            continue
        try:
            fresh_state()
            trainer = Trainer(load_config(None, trainer_sets(s.model, s.image, s.batch, s.steps, precision, compile_)),
                              out / f"r50-{len(rows)}")
            rates = alternate({"trainer": trainer_epoch(trainer), "timm": timm_loop(trainer, s, precision, compile_)},
                              s.rounds)
            row.trainer, row.baseline = f"{rates['trainer']:,.0f}", f"{rates['timm']:,.0f}"
            row.ratio = f"{rates['trainer'] / rates['timm']:.3f}"
            if peak:
                row.mfu = f"{100 * rates['trainer'] * flops / peak:.1f}% / {100 * rates['timm'] * flops / peak:.1f}%"
            del trainer
        except Exception as e:  # one row's failure is reported in the table; the others still run
            row.result = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        rows.append(row)
        budget.note(row)
    return rows


def resnet9_sides(s: Sizes, device: torch.device, out: Path) -> dict[str, Callable[[], None]]:
    """One epoch of ``resnet9_tricks`` at batch ``s.r9_batch`` on 32 px synthetic data, fp16 where mixed (no
    augmentation, EMA or smoothing): the Trainer's step loop and a minimal loop (timm's SGD and NativeScaler) over
    the same batches, already on the device. benchmarks/step_profile.py profiles the same two."""
    from timm.optim import create_optimizer_v2
    from timm.utils import NativeScaler

    precision = "fp16" if s.mixed else "no"
    fresh_state()
    cfg = load_config("myrtle_resnet9", [f"data.source=synthetic:{s.r9_steps * s.r9_batch}", "data.image_size=32",
                                         f"data.batch_size={s.r9_batch}", "augment.train=none", "ema.enabled=false",
                                         "loss.label_smoothing=0", f"train.precision='{precision}'", "train.epochs=100",
                                         "eval.tta_flip=false", "train.best_metric=eval_top1"])
    trainer = Trainer(cfg, out / "r9")
    batches = list(trainer.batches.train_batches(0))
    import timm

    model = timm.create_model("resnet9_tricks", **cfg.model_kwargs(trainer.num_classes)).to(device)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    scaler = NativeScaler(device.type) if precision == "fp16" else None

    def loop() -> None:
        for images, labels in batches:
            with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer_step(loss, optimizer, scaler)

    count = [0]

    def trainer_loop() -> None:
        trainer.state.step_in_epoch = 0
        trainer._train_epoch(count[0])
        count[0] += 1

    return {"trainer": trainer_loop, "loop": loop}


def resnet9_row(s: Sizes, device: torch.device, out: Path, budget: Budget) -> Row:
    precision = "fp16" if s.mixed else "no"
    row = Row("resnet9_tricks steps/s: Trainer vs minimal loop", f"{precision}, batch {s.r9_batch}, 32 px, "
              "no augmentation / EMA / smoothing")
    if budget.out():
        row.result = "skipped: time budget"
        return row
    sides = resnet9_sides(s, device, out)

    def steps_per_second(run: Callable[[], None]) -> Callable[[], float]:
        def timed() -> float:
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            return s.r9_steps / (time.perf_counter() - t0)
        return timed

    rates = alternate({name: steps_per_second(run) for name, run in sides.items()}, s.rounds)
    row.trainer, row.baseline = f"{rates['trainer']:.1f}", f"{rates['loop']:.1f}"
    row.ratio = f"{rates['trainer'] / rates['loop']:.3f}"
    budget.note(row)
    return row


def overflow_row(s: Sizes, device: torch.device, out: Path, budget: Budget) -> Row:
    """One step with an infinite loss in fp16: skipped by the scaler, not counted, the schedule held. (The dry
    run trains in float32 with a CPU loss scaler attached: the same skip path through accelerate.)"""
    precision = "fp16" if s.mixed else "no"
    row = Row("FP16 overflow step", f"resnet9_tricks, {precision}, loss of step 2 made inf, warmup schedule")
    fresh_state()
    cfg = load_config("myrtle_resnet9", ["data.source=synthetic:128", "data.image_size=32", "data.batch_size=32",
                                         "augment.train=none", "ema.enabled=false", f"train.precision='{precision}'",
                                         "train.epochs=1", "schedule.name=linear", "schedule.warmup_epochs=1",
                                         "schedule.rescale_epochs=false", "eval.tta_flip=false",
                                         "train.best_metric=eval_top1"])
    seen: list[tuple[int, int, float]] = []
    trainer = Trainer(cfg, out / "overflow",
                      step_callback=lambda st: seen.append((int(st.global_step), int(st.num_updates),
                                                            trainer.optimizer.param_groups[0]["lr"])))
    if trainer.accelerator.scaler is None:  # accelerate gives no loss scaler on a CPU: the dry run brings one
        attach_scaler(trainer, torch.amp.GradScaler(device.type))
    base, calls = trainer.criterion, [0]

    def poisoned(*args: Any) -> torch.Tensor:
        calls[0] += 1
        loss = base(*args)
        return loss * float("inf") if calls[0] == 2 else loss

    trainer.criterion = poisoned
    try:
        metrics = trainer.fit()
    except Exception as e:
        row.result = f"FAILED: the run stopped: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
        return row
    steps, updates, lrs = zip(*seen, strict=True) if seen else ((), (), ())
    row.trainer = (f"updates {list(updates)} over steps {list(steps)}; lr {', '.join(f'{v:.4f}' for v in lrs)}; "
                   f"epoch loss {metrics['train_loss']:.4f}")
    # the poisoned step (the second) neither counts nor moves the lr; later steps do (a step may also overflow on
    # its own at fp16's first loss scale, which is why the counts are compared with the step before)
    held = len(seen) == 4 and updates[1] == updates[0] and lrs[1] == lrs[0] and updates[3] > updates[1]
    if not held:
        row.result = "FAILED: the overflow step moved the schedule"
    elif not math.isfinite(metrics["train_loss"]):
        row.result = "FAILED: the skipped step's loss is in the epoch's training loss"
    else:
        row.result = "ok: skipped, schedule held, epoch loss finite"
    budget.note(row)
    return row


def optimizer_step(loss: torch.Tensor, optimizer: Any, scaler: Any) -> None:
    """One step of a minimal loop: through timm's ``NativeScaler`` when there is one (fp16), else plain."""
    if scaler is not None:
        scaler(loss, optimizer)
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def attach_scaler(trainer: Trainer, scaler: Any) -> None:
    """Give the trainer's accelerator and its prepared optimizer a loss scaler, as accelerate does on a GPU
    (``AcceleratedOptimizer.__setstate__`` patches the step that reports a skip)."""
    acc = trainer.accelerator
    acc.scaler = scaler
    for opt in acc._optimizers:
        opt.__setstate__({**opt.__dict__, "scaler": scaler})
    trainer.may_skip_steps = True  # the Trainer reads accelerate's skip flag only when a scaler exists


def timm_train_row(script: Path, s: Sizes, out: Path, budget: Budget) -> Row:
    """timm's own train.py for one epoch on a JPEG folder of the same size; its running img/s from its log."""
    row = Row("timm train.py img/s (timm's resnet50d, bf16, channels_last)", f"batch {s.batch}, {s.image} px JPEGs")
    if budget.out():
        row.result = "skipped: time budget"
        return row
    root = write_random_jpegs(out / "jpegs", s.batch * s.steps, s.batch, s.image)
    flags = supported_flags(script)
    args = ["--model", "resnet50d", "--num-classes", "1000", "-b", str(s.batch), "--epochs", "1", "--amp",
            "--channels-last", "--workers", str(max(s.workers, 1)), "--log-interval", "4", "--opt", "sgd",
            "--lr", "0.1", "--weight-decay", "5e-5", "--smoothing", "0.1", "--sched", "cosine",
            "--warmup-epochs", "0", "--input-size", "3", str(s.image), str(s.image)]
    args += ["--amp-dtype", "bfloat16"] if "--amp-dtype" in flags else []
    got = run_timm_train(script, root, out / "timm-out", args, max(30.0, budget.left() - 20))
    if got["returncode"] != 0 or got["rate"] is None:
        row.result = f"error: exit {got['returncode']}: {got['tail'][:120]}"
    else:
        row.baseline = f"{got['rate']:,.0f}"
    budget.note(row)
    return row


class Budget:
    """The wall-clock budget: a row that would start after it is skipped, and reported as such."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def out(self) -> bool:
        return self.left() <= 0
    def note(self, row: Row) -> None:
        print(f"[{time.perf_counter() - self.start:5.0f} s] {row.check} ({row.setting}): {row.trainer} | "
              f"{row.baseline} | {row.result}", file=sys.stderr, flush=True)


def table(rows: list[Row], header: list[str]) -> str:
    lines = header + ["| check | setting | Trainer | timm functions / loop | ratio | MFU Trainer / timm | result |",
                      "|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r.check} | {r.setting} | {r.trainer} | {r.baseline} | {r.ratio} | {r.mfu} | {r.result} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (the default without CUDA)")
    parser.add_argument("--timm-train", type=Path, help="timm's train.py, to time it too")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16/fp16 peak, when not in the table")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which the rest is skipped")
    args = parser.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    s = CPU if dry else GPU
    if s.backend != "inductor":  # the Trainer's torch.compile too
        torch.compile = functools.partial(torch.compile, backend=s.backend)
    budget = Budget(args.budget)
    peak, peak_note = peak_flops(device, args.peak_tflops)
    header = [f"gpu_check: {'CPU dry run (tiny sizes)' if dry else torch.cuda.get_device_name(device)}; torch "
              f"{torch.__version__}; peak {peak_note}; ratio = Trainer / other (throughput)", ""]
    # the Trainer's own lines go to stderr with the progress notes: the table is the one thing on stdout
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        out = Path(tmp)
        rows = resnet50_rows(s, device, out, peak, budget)
        for name, make in (("resnet9_tricks steps/s", lambda: resnet9_row(s, device, out, budget)),
                           ("FP16 overflow step", lambda: overflow_row(s, device, out, budget))):
            try:
                rows.append(make())
            except Exception as e:  # reported in the table; the other rows still run
                rows.append(Row(name, "-", result=f"error: {type(e).__name__}: {str(e).splitlines()[0][:120]}"))
        if args.timm_train:
            rows.append(timm_train_row(args.timm_train, s, out, budget))
        else:
            rows.append(Row("timm train.py", "-", result="skipped: no --timm-train PATH (timm's pip package has no "
                                                         "train.py)"))
    print(table(rows, header), f"\n{time.perf_counter() - budget.start:.0f} s in all", sep="\n")
    return 1 if any(r.result.startswith(("error", "FAILED")) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

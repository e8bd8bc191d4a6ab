#!/usr/bin/env python3
"""Losses, optimizers, schedules and gradient clipping computed by PyTorch and Hugging Face
Transformers, for ftune's step-for-step parity test (tests/test_optim.cpp).

Writes tests/reference/fixtures/optim_parity.safetensors:
  losses (float64):
    ce_logits (6, 5), ce_targets (6,) int32 (row 2 ignored: -100), ce_weights (5,)
    ce_{plain,smooth,weighted,weighted_smooth}_{loss (1,), grad (6, 5)}   (label smoothing 0.1)
    bce_logits, bce_targets (4, 3), bce_loss, bce_grad;  mse_pred, mse_targets (4, 2), mse_loss,
    mse_grad
  optimizers (float32), parameters p0..p4 of the names in NAMES:
    init.<name>, grad.<step>.<name> (6 steps; steps 1 and 4 are scaled up so clipping acts),
    <opt>.<step>.<name> the parameters after each step, <opt>.norm (6,) the norm before clipping
    and <opt>.lr (6,) the rate of each step, for opt in
      adamw:     AdamW(weight_decay 0.01; biases and LayerNorm weights 0; classifier.* lr x 10),
                 clip 1.0, linear warmup (2) then decay over 6 steps, base lr 1e-2
      sgd_nesterov: SGD(momentum 0.9, nesterov, weight_decay 0.01 as above), clip 1.0, cosine
      sgd_damp:  SGD(momentum 0.9, dampening 0.1, no decay), no clipping, constant lr
    "frozen.weight" has requires_grad=False: it never changes and owns no state.
  schedules (float64, 12 steps, base 1.0, warmup 3, total 10): sched_linear, sched_cosine,
    sched_constant, sched_polynomial (lr_end 1e-3, power 2) from transformers.get_*_schedule.

Usage: python3 tests/reference/optim_parity.py   (needs torch, transformers, safetensors)
"""
import pathlib

import torch
from safetensors.torch import save_file
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup,
                          get_polynomial_decay_schedule_with_warmup)

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "optim_parity.safetensors"
NAMES = ["encoder.dense.weight", "encoder.dense.bias", "encoder.LayerNorm.weight",
         "classifier.weight", "frozen.weight"]
SHAPES = [(4, 3), (4,), (3,), (2, 3), (2, 2)]
NO_DECAY = {"encoder.dense.bias", "encoder.LayerNorm.weight"}
STEPS = 6


def losses(out):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64)
    targets = torch.tensor([1, 4, -100, 0, 2, 4])
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0], dtype=torch.float64)
    out.update(ce_logits=logits, ce_targets=targets.int(), ce_weights=weights)
    for name, kw in [("plain", {}), ("smooth", {"label_smoothing": 0.1}),
                     ("weighted", {"weight": weights}),
                     ("weighted_smooth", {"weight": weights, "label_smoothing": 0.1})]:
        z = logits.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy(z, targets, ignore_index=-100, **kw)
        loss.backward()
        out[f"ce_{name}_loss"] = loss.detach().reshape(1)
        out[f"ce_{name}_grad"] = z.grad
    z = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    y = (torch.rand(4, 3, generator=g) > 0.5).double()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    loss.backward()
    out.update(bce_logits=z.detach(), bce_targets=y, bce_loss=loss.detach().reshape(1),
               bce_grad=z.grad)
    z = torch.randn(4, 2, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randn(4, 2, generator=g, dtype=torch.float64)
    loss = torch.nn.functional.mse_loss(z, y)
    loss.backward()
    out.update(mse_pred=z.detach(), mse_targets=y, mse_loss=loss.detach().reshape(1),
               mse_grad=z.grad)


def optimizers(out):
    g = torch.Generator().manual_seed(2)
    init = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) * (8.0 if k in (1, 4) else 0.3) for s in SHAPES]
             for k in range(STEPS)]
    for n, v in zip(NAMES, init):
        out[f"init.{n}"] = v
    for k in range(STEPS):
        for n, v in zip(NAMES, grads[k]):
            out[f"grad.{k}.{n}"] = v

    def run(tag, make_opt, make_sched, clip):
        params = [torch.nn.Parameter(v.clone(), requires_grad=(n != "frozen.weight"))
                  for n, v in zip(NAMES, init)]
        by = dict(zip(NAMES, params))
        opt = make_opt(by)
        sched = make_sched(opt)
        norms, lrs = [], []
        trainable = [p for p in params if p.requires_grad]
        for k in range(STEPS):
            for p, gk in zip(params, grads[k]):
                if p.requires_grad:
                    p.grad = gk.clone()
            lrs.append(opt.param_groups[0]["lr"])
            if clip:
                norms.append(float(torch.nn.utils.clip_grad_norm_(trainable, 1.0)))
            else:
                norms.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum()
                                                  for p in trainable))))
            opt.step()
            sched.step()
            for n, p in zip(NAMES, params):
                out[f"{tag}.{k}.{n}"] = p.detach().clone()
        out[f"{tag}.norm"] = torch.tensor(norms, dtype=torch.float64)
        out[f"{tag}.lr"] = torch.tensor(lrs, dtype=torch.float64)

    def groups(by, wd):  # Hugging Face's grouping, plus a classifier group with 10x the rate
        decay = [by[n] for n in NAMES[:3] if n not in NO_DECAY]
        no_decay = [by[n] for n in NO_DECAY]
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0},
                {"params": [by["classifier.weight"]], "weight_decay": wd, "lr": 1e-1}]

    run("adamw", lambda by: torch.optim.AdamW(groups(by, 0.01), lr=1e-2, foreach=False),
        lambda o: get_linear_schedule_with_warmup(o, 2, STEPS), clip=True)
    run("sgd_nesterov",
        lambda by: torch.optim.SGD(groups(by, 0.01), lr=1e-2, momentum=0.9, nesterov=True,
                                   foreach=False),
        lambda o: get_cosine_schedule_with_warmup(o, 1, STEPS), clip=True)
    run("sgd_damp",
        lambda by: torch.optim.SGD([by[n] for n in NAMES[:4]], lr=1e-2, momentum=0.9,
                                   dampening=0.1, foreach=False),
        lambda o: get_constant_schedule_with_warmup(o, 0), clip=False)


def schedules(out):
    def rates(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        s = make(opt)
        r = []
        for _ in range(12):
            r.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        return torch.tensor(r, dtype=torch.float64)
    out["sched_linear"] = rates(lambda o: get_linear_schedule_with_warmup(o, 3, 10))
    out["sched_cosine"] = rates(lambda o: get_cosine_schedule_with_warmup(o, 3, 10))
    out["sched_constant"] = rates(lambda o: get_constant_schedule_with_warmup(o, 3))
    out["sched_polynomial"] = rates(
        lambda o: get_polynomial_decay_schedule_with_warmup(o, 3, 10, lr_end=1e-3, power=2.0))


def main():
    out = {}
    losses(out)
    optimizers(out)
    schedules(out)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT),
              metadata={"torch": torch.__version__})


if __name__ == "__main__":
    main()

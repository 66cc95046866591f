"""Throwaway recipe sweep (PyTorch, GPU) for the pets from-scratch target: which levers move test accuracy
at 80,000 image-passes? A mirror of the pipeline's ResNet-10 recipe (Keras) on the same prepared 128 px photos.
Findings are re-measured in the real pipeline on CPU before anything is claimed."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

DEV = os.environ.get("DEV", "cuda")
BASE = dict(
    width=0.5,
    blocks=(1, 1, 1, 1),
    dropout=0.2,
    stem="7",
    zinit=False,
    se=False,
    opt="adamw",
    lr=0.002,
    wd=0.05,
    batch=32,
    warmup=0,
    ls=0.1,
    ema=0.0,
    passes=80000,
    flip=True,
    rot=15.0,
    trans=0.1,
    zoom=0.15,
    pca=0.1,
    rrc=0.0,
    jitter=0.0,
    erase=0.0,
    mixup=0.0,
    train_size=128,
)


def load(path: str, dev: str) -> dict:
    z = np.load(path)
    out = {}
    for s in ("train", "val", "test"):
        buf, lens = z[s + "_x"], z[s + "_len"]
        offs = np.concatenate([[0], np.cumsum(lens)])
        imgs = np.stack(
            [np.asarray(Image.open(io.BytesIO(buf[offs[i] : offs[i + 1]].tobytes())).convert("RGB")) for i in range(len(lens))]
        )
        out[s] = (
            torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous().float().to(dev),
            torch.from_numpy(z[s + "_y"]).float().to(dev),
        )
    x = out["train"][0] / 255.0
    out["mean"] = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1) * 255.0
    out["std"] = x.std(dim=(0, 2, 3)).view(1, 3, 1, 1) * 255.0
    pix = x.permute(0, 2, 3, 1).reshape(-1, 3)
    cov = torch.cov(pix.T)
    vals, vecs = torch.linalg.eigh(cov)
    out["pca"] = (vecs * vals[None, :]).contiguous()
    return out


def convbn(cin, cout, k, s):
    conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
    nn.init.xavier_uniform_(conv.weight)
    return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Linear(c, max(c // 8, 4))
        self.b = nn.Linear(max(c // 8, 4), c)

    def forward(self, x):
        w = torch.sigmoid(self.b(F.relu(self.a(x.mean((2, 3))))))
        return x * w[:, :, None, None]


class Block(nn.Module):
    def __init__(self, cin, cout, stride, zinit, se):
        super().__init__()
        self.c1 = convbn(cin, cout, 3, stride)
        self.c2 = convbn(cout, cout, 3, 1)
        if zinit:
            nn.init.zeros_(self.c2[1].weight)
        self.se = SE(cout) if se else None
        self.proj = convbn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.c2(F.relu(self.c1(x)))
        if self.se is not None:
            y = self.se(y)
        return F.relu(y + (self.proj(x) if self.proj is not None else x))


class Net(nn.Module):
    def __init__(self, c):
        super().__init__()
        f = [max(1, int(round(v * c["width"]))) for v in (64, 128, 256, 512)]
        if c["stem"] == "7":
            self.stem = nn.Sequential(convbn(3, f[0], 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:  # deep stem (ResNet-C): three 3x3 convs, the first strided
            h = f[0] // 2
            self.stem = nn.Sequential(
                convbn(3, h, 3, 2),
                nn.ReLU(),
                convbn(h, h, 3, 1),
                nn.ReLU(),
                convbn(h, f[0], 3, 1),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        layers, cin = [], f[0]
        for st, (cout, n) in enumerate(zip(f, c["blocks"])):
            for b in range(n):
                layers.append(Block(cin, cout, 2 if st > 0 and b == 0 else 1, c["zinit"], c["se"]))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(c["dropout"])
        self.fc = nn.Linear(cin, 1)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(self.drop(self.body(self.stem(x)).mean((2, 3)))).squeeze(1)


def augment(x, c, d, g):
    n, _, h, w = x.shape
    dev = x.device

    def u(b):  # noqa: ANN001, ANN202 - a uniform draw in [-b, b]
        return (torch.rand(n, device=dev, generator=g) * 2 - 1) * b

    flips = torch.where(torch.rand(n, device=dev, generator=g) < 0.5, -1.0, 1.0) if c["flip"] else torch.ones(n, device=dev)
    if c["rrc"]:
        area = torch.rand(n, device=dev, generator=g) * (1 - c["rrc"]) + c["rrc"]
        logr = (torch.rand(n, device=dev, generator=g) * 2 - 1) * math.log(4 / 3)
        r = torch.exp(logr)
        sx = torch.sqrt(area * r).clamp(max=1.0)
        sy = torch.sqrt(area / r).clamp(max=1.0)
        tx = (torch.rand(n, device=dev, generator=g) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, device=dev, generator=g) * 2 - 1) * (1 - sy)
        ang = u(math.radians(c["rot"]))
        theta = torch.zeros(n, 2, 3, device=dev)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta[:, 0, 0] = cos * sx * flips
        theta[:, 0, 1] = -sin * sy
        theta[:, 0, 2] = tx
        theta[:, 1, 0] = sin * sx * flips
        theta[:, 1, 1] = cos * sy
        theta[:, 1, 2] = ty
    else:
        ang = u(math.radians(c["rot"]))
        zx, zy = 1 + u(c["zoom"]), 1 + u(c["zoom"])
        tx, ty = u(c["trans"]) * 2, u(c["trans"]) * 2
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0] = flips * cos * zx
        theta[:, 0, 1] = -sin * zy
        theta[:, 0, 2] = tx
        theta[:, 1, 0] = flips * sin * zx
        theta[:, 1, 1] = cos * zy
        theta[:, 1, 2] = ty
    size = c["train_size"]
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if c["jitter"]:
        j = c["jitter"]
        x = x * (1 + u(j))[:, None, None, None]
        m = x.mean((2, 3), keepdim=True)
        x = (x - m) * (1 + u(j))[:, None, None, None] + m
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev)[None, :, None, None]).sum(1, keepdim=True)
        x = (x - gray) * (1 + u(j))[:, None, None, None] + gray
    if c["pca"]:
        alpha = torch.randn(n, 3, device=dev, generator=g) * c["pca"]
        x = x + (alpha @ d["pca"].T * 255.0)[:, :, None, None]
    x = x.clamp(0, 255)
    x = (x - d["mean"]) / d["std"]
    if c["erase"]:
        keep = torch.rand(n, device=dev, generator=g) < c["erase"]
        area = torch.rand(n, device=dev, generator=g) * 0.3 + 0.02
        eh = (torch.sqrt(area) * size).long().clamp(1, size - 1)
        y0 = (torch.rand(n, device=dev, generator=g) * (size - eh)).long()
        x0 = (torch.rand(n, device=dev, generator=g) * (size - eh)).long()
        ar = torch.arange(size, device=dev)
        my = (ar[None] >= y0[:, None]) & (ar[None] < (y0 + eh)[:, None])
        mx = (ar[None] >= x0[:, None]) & (ar[None] < (x0 + eh)[:, None])
        mask = (my[:, :, None] & mx[:, None, :] & keep[:, None, None])[:, None]
        x = torch.where(mask, torch.zeros_like(x), x)
    return x


@torch.no_grad()
def evaluate(model, d, split):
    x, y = d[split]
    model.eval()
    p, pf = [], []
    for i in range(0, len(x), 500):
        b = (x[i : i + 500] - d["mean"]) / d["std"]
        p.append(torch.sigmoid(model(b)))
        pf.append(torch.sigmoid(model(torch.flip(b, dims=[3]))))
    p, pf = torch.cat(p), torch.cat(pf)
    acc = ((p > 0.5).float() == y).float().mean().item()
    acct = ((((p + pf) / 2) > 0.5).float() == y).float().mean().item()
    return acc, acct


def run(c, seed, d):
    torch.manual_seed(seed)
    g = torch.Generator(device=DEV)
    g.manual_seed(seed + 1000)
    model = Net(c).to(DEV).to(memory_format=torch.channels_last)
    ema = None
    if c["ema"]:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(c["ema"]), use_buffers=True
        )
    if c["opt"] == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["wd"], eps=1e-7)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=c["lr"], momentum=0.9, nesterov=True, weight_decay=c["wd"])
    xtr, ytr = d["train"]
    n = len(xtr)
    steps_per_epoch = math.ceil(n / c["batch"])
    epochs = c["passes"] // n
    total = steps_per_epoch * epochs
    warm = c["warmup"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    )
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, device=DEV, generator=g)
        for i in range(0, n, c["batch"]):
            idx = perm[i : i + c["batch"]]
            x = augment(xtr[idx], c, d, g).contiguous(memory_format=torch.channels_last)
            y = ytr[idx] * (1 - c["ls"]) + 0.5 * c["ls"]
            if c["mixup"]:
                lam = float(np.random.default_rng(seed * 100000 + ep * 1000 + i).beta(c["mixup"], c["mixup"]))
                x = lam * x + (1 - lam) * x.flip(0)
                y = lam * y + (1 - lam) * y.flip(0)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
    fit_s = time.time() - t0
    m = ema.module if ema is not None else model
    va, vat = evaluate(m, d, "val")
    te, tet = evaluate(m, d, "test")
    return dict(val=va, val_flip=vat, test=te, test_flip=tet, fit_s=round(fit_s, 1), loss=float(loss))


def worker(k, jobs, path, out, deadline):
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    d = load(path, DEV)
    with open(os.path.join(out, f"w{k}.jsonl"), "a") as f:
        for name, over, seed in jobs:
            if time.time() > deadline:
                break
            c = dict(BASE, **over)
            try:
                r = run(c, seed, d)
            except Exception:
                r = dict(error=traceback.format_exc()[-800:])
            f.write(json.dumps(dict(name=name, seed=seed, over=over, **r)) + "\n")
            f.flush()
            print(k, name, seed, r, flush=True)


def phase(jobs, path, out, procs, deadline, tag):
    ps = [mp.Process(target=worker, args=(f"{tag}{k}", jobs[k::procs], path, out, deadline)) for k in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()


def results(out):
    rows = []
    for fn in os.listdir(out):
        if fn.endswith(".jsonl"):
            rows += [json.loads(line) for line in open(os.path.join(out, fn))]
    return [r for r in rows if "error" not in r]


def mean_by(rows, key):
    agg = {}
    for r in rows:
        agg.setdefault(r["name"], []).append(r[key])
    return {k: sum(v) / len(v) for k, v in agg.items()}


def main():
    path, out, plan_file, procs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    budget1, budget2 = float(sys.argv[5]), float(sys.argv[6])
    plan = json.load(open(plan_file))
    mp.set_start_method("spawn")
    t0 = time.time()
    # seeds outer: every config gets its first seed before any gets a second
    jobs = [(name, over, s) for s in plan["seeds"] for name, over in plan["configs"].items()]
    jobs += [("base", {}, s) for s in plan.get("base_extra_seeds", [])]
    phase(jobs, path, out, procs, t0 + budget1, "a")
    print("phase 1 done", round(time.time() - t0), flush=True)
    rows = results(out)
    score = mean_by(rows, "val_flip")
    base = score.get("base", 0.0)
    ranked = [n for n in sorted(score, key=score.get, reverse=True) if n != "base" and score[n] > base]
    print("ranked by val_flip:", [(n, round(score[n], 4)) for n in ranked], "base", round(base, 4), flush=True)
    combos = {}
    for k in range(2, min(len(ranked), plan.get("max_combo", 6)) + 1):
        over = {}
        for n in ranked[:k]:
            for key, v in plan["configs"][n].items():
                over.setdefault(key, v)
        combos["+".join(ranked[:k])] = over
    jobs = [(name, over, s) for s in plan["combo_seeds"] for name, over in combos.items()]
    phase(jobs, path, out, procs, t0 + budget1 + budget2, "b")
    print("phase 2 done", round(time.time() - t0), flush=True)
    rows = results(out)
    for key in ("val", "val_flip", "test", "test_flip"):
        agg = mean_by(rows, key)
        json.dump(agg, open(os.path.join(out, f"mean_{key}.json"), "w"), indent=1)
    n = {}
    for r in rows:
        n[r["name"]] = n.get(r["name"], 0) + 1
    mv, mt = mean_by(rows, "val_flip"), mean_by(rows, "test_flip")
    for name in sorted(mv, key=mv.get, reverse=True):
        print(f"{name:60s} n={n[name]} val_flip={mv[name]:.4f} test_flip={mt[name]:.4f}", flush=True)


if __name__ == "__main__":
    main()

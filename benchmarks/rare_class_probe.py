"""Probes of one synthetic MNIST training run: why FCL can cost the rare corner-digit classes (10-14).

Trains like ``synthetic_mnist.py`` (same flags, one method, one seed; validation data only) and records:

- on fixed probe sets, at every epoch end and a few steps of the lambda ramp: where the k lowest-utility (BOTTOM_k,
  perturbed in the positive x+) and k highest-utility (TOP_k, in the negative x-) pixels fall for the 250 rare train
  images and for 500 train images of digits 5-9 (which carry an uninformative corner digit): the share of the corner
  digit's ink pixels inside BOTTOM_k / TOP_k, and the share of each set lying in the corner square. Also the frequency
  maps of BOTTOM_k / TOP_k over the rare images, each flipped so its corner digit is top-left (a PNG);
- the model's sensitivity to the corner digit on validation pairs (the same 0-4 source image plain, class c, and with
  a corner digit, class c+10): cosine distance of the two embeddings, and the validation accuracy per class group;
- every ``--probe-every`` steps with lambda > 0, on the training batch (its own perturbation noise): per anchor group
  (rare 10-14, plain 0-4, 5-9) the softmax mass of Eq. 5's denominator on the positive, the high-utility negative x-,
  other samples of the same class, other samples of the same central digit (for a rare anchor: the plain class c)
  and the rest; the share of the gradient of the summed FCL term on the embeddings (z, z+, z-) that each group gets;
  and the median of lambda * |d FCL / d z_i| / |d CE_i / d z_i|, the FCL pull on a sample's embedding relative to
  its own CE's.

    python benchmarks/rare_class_probe.py --methods fcl --output benchmarks/results/probe_fcl
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_mnist import (get_args_parser, group_accuracy, make_eval_sets, score, train_one_run)  # noqa: E402
from timm_fcl.data.synthetic_mnist import build_synthetic_mnist, corner_slices  # noqa: E402
from timm_fcl.perturbations import perturbed_batch  # noqa: E402
from timm_fcl.robustness.noise import pixel_std  # noqa: E402
from timm_fcl.schedule import scheduled_weight, step_weight  # noqa: E402
from timm_fcl.utility import contextual_utility, utility_from_loss  # noqa: E402

INK = 0.2  # a corner pixel brighter than this belongs to the corner digit (MNIST corners are empty otherwise)


def corner_squares(corners: torch.Tensor, size: int, image: int = 28) -> torch.Tensor:
    """[N, H, W] bool: the corner square holding each image's corner digit (all False without one)."""
    mask = torch.zeros(len(corners), image, image, dtype=torch.bool)
    for c in range(4):
        rows, cols = corner_slices(c, size, image)
        mask[corners == c, rows, cols] = True
    return mask


def to_top_left(maps: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """[N, H, W] maps flipped so each image's corner digit sits top-left."""
    out = maps.clone()
    for c in range(4):
        dims = [d for d, flip in ((1, c >= 2), (2, c % 2 == 1)) if flip]
        if dims:
            out[corners == c] = maps[corners == c].flip(dims)
    return out


def selection_masks(utility: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(in BOTTOM_k, in TOP_k) as [N, H, W] bool, from [N, 1, H, W] utilities."""
    flat = utility.flatten(1)
    low = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, 1, largest=False).indices, True)
    high = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, 1).indices, True)
    return low.view(utility.shape[0], *utility.shape[2:]), high.view(utility.shape[0], *utility.shape[2:])


def placement(utility: torch.Tensor, images: torch.Tensor, square: torch.Tensor, k: int) -> dict:
    """Where BOTTOM_k / TOP_k fall relative to the corner digit, means over the images."""
    low, high = selection_masks(utility, k)
    ink = square & (images[:, 0] > INK)
    n_ink = ink.flatten(1).sum(1).clamp_min(1)
    u = utility[:, 0]
    return {
        "ink_in_bottom": ((low & ink).flatten(1).sum(1) / n_ink).mean().item(),
        "ink_in_top": ((high & ink).flatten(1).sum(1) / n_ink).mean().item(),
        "bottom_in_square": ((low & square).flatten(1).sum(1) / k).mean().item(),
        "top_in_square": ((high & square).flatten(1).sum(1) / k).mean().item(),
        "square_share": (square.flatten(1).sum(1) / square[0].numel()).mean().item(),
        # mean utility on the corner digit's ink over the mean utility elsewhere
        "ink_utility_ratio": statistics.fmean(
            (u[i][ink[i]].mean() / u[i][~square[i]].mean().clamp_min(1e-30)).item() for i in range(len(u))),
    }


class Probe:
    def __init__(self, splits, val_x, val_y, args):
        train = splits["train"]
        x = train.float_images()
        g = torch.Generator().manual_seed(1)
        rare = (train.labels >= 10).nonzero().flatten()
        five_nine = (train.labels >= 5) & (train.labels < 10)
        five_nine = five_nine.nonzero().flatten()
        five_nine = five_nine[torch.randperm(len(five_nine), generator=g)[:500]]
        self.sets = {}
        for name, idx in (("rare 10-14", rare), ("5-9", five_nine)):
            self.sets[name] = (x[idx], train.labels[idx], train.corners[idx],
                               corner_squares(train.corners[idx], args.corner_size))
        self.train_corners = train.corners
        self.train_square = corner_squares(train.corners, args.corner_size)
        self.train_labels = train.labels
        self.train_x = x
        # validation twins: the same 0-4 source plain (class c) and with a corner digit (class c + 10)
        val = splits["val"]
        twin_a, twin_b = [], []
        for c in range(5):
            plain = (val.labels == c).nonzero().flatten()
            cornered = (val.labels == c + 10).nonzero().flatten()
            where = {int(s): int(i) for s, i in zip(val.sources[cornered], cornered)}
            for i in plain.tolist():
                twin_a.append(i)
                twin_b.append(where[int(val.sources[i])])
        self.twins = (val_x[twin_a], val_x[twin_b])
        self.val_x, self.val_y = val_x, val_y
        self.k = args.k
        self.sigma = args.sigma
        self.tau = args.tau
        self.every = args.probe_every
        self.epoch_records, self.step_records, self.maps = [], [], {}
        self.noise = torch.Generator().manual_seed(12345)
        self.steps_per_epoch = -(-len(train.labels) // args.batch_size)
        # extra probe points inside the ramp (FCL's first epochs), besides every epoch end
        start = args.fcl_start_epoch * self.steps_per_epoch
        self.extra_points = {start + i * self.steps_per_epoch // 2 for i in range(1, 2 * max(args.fcl_ramp_epochs, 1), 2)}
        self.on_epoch = None  # called after each epoch end's probe (to save what is there so far)

    # ---- fixed probe sets -------------------------------------------------------------------------------------
    def fixed(self, model, epoch: float, step: int, weight: float) -> None:
        rec = {"epoch": epoch, "step": step, "weight": weight}
        for name, (x, y, corners, square) in self.sets.items():
            u = contextual_utility(model, x, y)
            rec[name] = placement(u, x, square, self.k)
            if name == "rare 10-14":
                low, high = selection_masks(u, self.k)
                self.maps[round(epoch, 2)] = {"bottom": to_top_left(low.float(), corners).mean(0),
                                              "top": to_top_left(high.float(), corners).mean(0),
                                              "image": to_top_left(x[:, 0], corners).mean(0)}
        with torch.no_grad():
            model.eval()
            za, zb = (model.forward_head(model.forward_features(t), pre_logits=True) for t in self.twins)
            rec["twin_cos_dist"] = (1 - F.cosine_similarity(za, zb, dim=1)).mean().item()
        model.train()
        self.epoch_records.append(rec)
        print(f"  probe epoch {epoch:5.2f} lambda {weight:.1e}: " + " | ".join(
            f"{n}: ink in BOTTOM {rec[n]['ink_in_bottom']:.3f} in TOP {rec[n]['ink_in_top']:.3f}, TOP in square "
            f"{rec[n]['top_in_square']:.3f}, ink/rest utility {rec[n]['ink_utility_ratio']:.2f}" for n in self.sets)
            + f" | twin dist {rec['twin_cos_dist']:.4f}", flush=True)
        if self.on_epoch is not None and float(epoch).is_integer():
            self.on_epoch()

    # ---- the training batch ------------------------------------------------------------------------------------
    def batch(self, reg, idx: torch.Tensor, step: int, epoch: int) -> None:
        model = reg.model
        weight = step_weight(reg.config, step)
        x = self.train_x[idx].clone().requires_grad_(True)
        y = self.train_labels[idx]
        b = len(y)
        z = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.get_classifier()(z)
        ce = F.cross_entropy(logits, y)
        u = utility_from_loss(ce, x)
        both = perturbed_batch(x.detach(), u, self.k, self.sigma, self.noise)
        zp, zm = model.forward_head(model.forward_features(both), pre_logits=True).chunk(2)
        zn, zpn, zmn = (F.normalize(t, dim=1) for t in (z, zp, zm))
        sim_pos = (zn * zpn).sum(1)
        sim_neg = (zn * zmn).sum(1)
        others = (zn @ zn.t()).masked_fill(torch.eye(b, dtype=torch.bool), float("-inf"))
        row = torch.cat([sim_pos[:, None], others, sim_neg[:, None]], 1) / self.tau
        per_anchor = torch.logsumexp(row, 1) - row[:, 0]
        g_z, g_p, g_m = torch.autograd.grad(per_anchor.sum(), (z, zp, zm), retain_graph=True)
        (g_ce,) = torch.autograd.grad(ce * b, z)
        p = row.softmax(1).detach()
        same_label = (y[:, None] == y[None, :]) & ~torch.eye(b, dtype=torch.bool)
        digit = torch.where(y >= 10, y - 10, y)
        same_digit = (digit[:, None] == digit[None, :]) & ~torch.eye(b, dtype=torch.bool) & ~same_label
        p_others = p[:, 1:-1]
        low, high = selection_masks(u, self.k)
        square = self.train_square[idx]
        ink = square & (x.detach()[:, 0] > INK)
        n_ink = ink.flatten(1).sum(1).clamp_min(1)
        grad_norm = (g_z.norm(dim=1) + g_p.norm(dim=1) + g_m.norm(dim=1)).detach()
        groups = {"rare 10-14": y >= 10, "0-4": y < 5, "5-9": (y >= 5) & (y < 10)}
        rec = {"step": step, "epoch": epoch, "weight": weight}
        for name, sel in groups.items():
            if not sel.any():
                continue
            rec[name] = {
                "n": int(sel.sum()),
                "loss": per_anchor[sel].mean().item(),
                "p_pos": p[sel, 0].mean().item(),
                "p_xneg": p[sel, -1].mean().item(),
                "p_same_class": (p_others * same_label).sum(1)[sel].mean().item(),
                "p_same_digit_other_class": (p_others * same_digit).sum(1)[sel].mean().item(),
                "grad_share": (grad_norm[sel].sum() / grad_norm.sum()).item(),
                # median: a well-classified sample's CE gradient is ~0, so the mean is ruled by a few
                "fcl_over_ce": (weight * g_z.norm(dim=1)[sel] / g_ce.norm(dim=1)[sel].clamp_min(1e-12)).median().item(),
                "ink_in_bottom": ((low & ink).flatten(1).sum(1) / n_ink)[sel].mean().item(),
                "ink_in_top": ((high & ink).flatten(1).sum(1) / n_ink)[sel].mean().item(),
            }
        self.step_records.append(rec)

    def __call__(self, step: int, epoch: int, reg, idx: torch.Tensor) -> None:
        weight = step_weight(reg.config, step)
        if weight > 0 and step % self.every == 0:
            self.batch(reg, idx, step, epoch)
        done = step + 1
        if done % self.steps_per_epoch == 0 or done in self.extra_points:
            self.fixed(reg.model, done / self.steps_per_epoch, done, scheduled_weight(reg.config, step))


def summarize_steps(records: list[dict]) -> dict:
    """Per epoch and anchor group: means of the batch probes (rare anchors weighted by their count)."""
    out = {}
    for rec in records:
        for name in ("rare 10-14", "0-4", "5-9"):
            if name in rec:
                out.setdefault(rec["epoch"] + 1, {}).setdefault(name, []).append(rec[name])
    table = {}
    for epoch, groups in sorted(out.items()):
        table[epoch] = {}
        for name, recs in groups.items():
            n = sum(r["n"] for r in recs)
            table[epoch][name] = {key: sum(r[key] * r["n"] for r in recs) / n for key in recs[0] if key != "n"}
            table[epoch][name]["anchors"] = n
            # grad share is per batch, not per anchor: plain mean over the probed batches holding the group
            table[epoch][name]["grad_share"] = statistics.fmean(r["grad_share"] for r in recs)
            table[epoch][name]["grad_share_per_anchor"] = statistics.fmean(r["grad_share"] / r["n"] for r in recs)
    return table


def plot_maps(maps: dict, path: Path, k: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted(maps)
    fig, axes = plt.subplots(3, len(epochs), figsize=(1.6 * len(epochs), 5.2), squeeze=False)
    for j, e in enumerate(epochs):
        for i, key in enumerate(("image", "bottom", "top")):
            ax = axes[i, j]
            ax.imshow(maps[e][key], cmap="gray" if key == "image" else "viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"epoch {e:g}", fontsize=8)
            if j == 0:
                ax.set_ylabel({"image": "mean image", "bottom": f"P(in BOTTOM_{k})", "top": f"P(in TOP_{k})"}[key],
                              fontsize=8)
    fig.suptitle("Rare classes 10-14 (250 train images, corner digit flipped to top-left): where the perturbed "
                 "pixels fall", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = get_args_parser()
    parser.add_argument("--probe-every", type=int, default=10, help="probe the training batch every n steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    splits = build_synthetic_mnist(args.data_dir, seed=args.data_seed, corner_size=args.corner_size)
    train_x, train_y = splits["train"].float_images(), splits["train"].labels
    val_x, val_y = splits["val"].float_images(), splits["val"].labels
    val_sets = make_eval_sets(val_x, pixel_std(train_x), noise_seed=args.noise_seed)  # as the benchmark's val sets
    results = {"config": {k: str(v) for k, v in vars(args).items()}}
    for method in args.methods:
        probe = Probe(splits, val_x, val_y, args)
        start = time.perf_counter()

        def save():
            results.setdefault(method, {}).update(fixed=probe.epoch_records, seconds=time.perf_counter() - start,
                                                  steps=summarize_steps(probe.step_records))
            (out / "probe.json").write_text(json.dumps(results, indent=1))
            plot_maps({e: m for e, m in probe.maps.items() if e in (1, 2, 2.5, 3, 3.5, 4, 6, 10, 15, 20)
                       or e == max(probe.maps)}, out / f"rare_topk_bottomk_{method}.png", args.k)

        probe.on_epoch = save
        model, log = train_one_run(method, args.seed, train_x, train_y, val_x, val_y, args, on_step=probe)
        results[method]["log"] = log
        results[method]["val"], results[method]["val_per_class"] = score(model, val_sets, val_y)
        save()
        print(f"{method.upper()} seed {args.seed} val: " + " ".join(
            f"{s} {a:.4f}" for s, a in results[method]["val"].items()) + " | groups BAL " + " ".join(
            f"{g} {a:.4f}" for g, a in group_accuracy(results[method]["val_per_class"]["bal"]).items()), flush=True)
        print(f"\n{method.upper()}: batch probes per epoch (anchor group: softmax mass on positive / x- / same class /"
              f" same digit other class; FCL grad share; lambda|dFCL/dz|/|dCE/dz|; corner ink in BOTTOM_k / TOP_k)")
        for epoch, groups in results[method]["steps"].items():
            print(f"  epoch {epoch:2d}: " + " | ".join(
                f"{n} ({g['anchors']}): {g['p_pos']:.3f}/{g['p_xneg']:.3f}/{g['p_same_class']:.3f}/"
                f"{g['p_same_digit_other_class']:.3f} share {g['grad_share']:.3f} ({g['grad_share_per_anchor']:.4f}"
                f"/anchor) ratio {g['fcl_over_ce']:.2e} ink {g['ink_in_bottom']:.2f}/{g['ink_in_top']:.2f}"
                for n, g in groups.items()))
        (out / "probe.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'probe.json'}")


if __name__ == "__main__":
    main()

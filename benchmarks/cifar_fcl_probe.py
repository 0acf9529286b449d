"""What FCL changed in a CIFAR-10 model, measured on the held-out validation split (never on the test set).

For each model (default: the zoo's XE pre-training and its XE and FCL continuations), in eval mode, on ``--images``
images of the validation split that ``cifar_robustness.py`` carves from the training shards:

- utility (Definition 1, |d CE / d x| per input element) concentration: the share of a sample's summed utility held
  by its TOP_k and by its BOTTOM_k of the C*H*W = 3,072 elements;
- embedding sensitivity: the mean cosine distance (the paper's dist) between the clean embedding and the embedding of
  the low-utility perturbation x+ (FCL's positive), the high-utility perturbation x- (its negative) and the same noise
  on k random elements, at each of --sigmas; of all-pixel Gaussian noise (XE+Gaussian's sigma) and of the UN noise of
  the test suites (15% of the pixel locations set to a random grey level); and the top-1 accuracy on each;
- where UN lands: the share of the elements UN replaces that lie in BOTTOM_k (what FCL's positive teaches the model
  to ignore) and in TOP_k; k / 3,072 is what chance gives;
- maps: the mean utility of each pixel location and how often it is in BOTTOM_k / TOP_k (a PNG).

    python benchmarks/cifar_fcl_probe.py   # -> benchmarks/results/cifar_robustness/probe/
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from shared_data import shared_data_root  # noqa: E402

ZOO = REPO / "zoo"
DEFAULT_MODELS = [str(ZOO / f"resnet20_cifar.{tag}") for tag in ("xe_pretrain_cifar10", "xe_cifar10", "fcl_cifar10")]


def embed(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding, logits): timm's forward_head with and without pre_logits on one pass of the features."""
    features = model.forward_features(x)
    return model.forward_head(features, pre_logits=True), model.forward_head(features)


def perturbed_inputs(x01: torch.Tensor, x: torch.Tensor, utility: torch.Tensor, normalize, args,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The normalized inputs of every perturbation (``low@SIGMA`` ... for each --sigmas value); ``x01`` the [0, 1]
    images, ``x`` their normalized version."""
    from timm_fcl.perturbations import gaussian_perturbation, perturbed_batch
    from timm_fcl.robustness.noise import uniform_noise

    std, out = normalize.std, {}
    random_utility = torch.rand(utility.shape, generator=generator)  # ranks k random elements
    for sigma in args.sigmas:
        out[f"low@{sigma}"], out[f"high@{sigma}"] = perturbed_batch(x, utility, args.k, sigma, generator, std).chunk(2)
        out[f"random@{sigma}"] = perturbed_batch(x, random_utility, args.k, sigma, generator, std).chunk(2)[0]
    out["gaussian"] = gaussian_perturbation(x, args.gauss_sigma, generator, std)
    out["un"] = normalize(uniform_noise(x01, generator=generator))
    return out


def un_mask(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B, C*H*W] True where UN (with this generator state) replaces the element: the locations it changes, on every
    channel (a random grey level can equal the pixel, so the mask comes from the noise with the images at -1)."""
    from timm_fcl.robustness.noise import uniform_noise

    marked = torch.full_like(x01, -1.0)
    return (uniform_noise(marked, generator=generator) >= 0).flatten(1)


def probe_batch(model: torch.nn.Module, x01: torch.Tensor, y: torch.Tensor, normalize, args,
                generator: torch.Generator) -> dict:
    """Sums over one batch of every measure (divided by the image count at the end)."""
    from timm_fcl.utility import contextual_utility

    x = normalize(x01)
    utility = contextual_utility(model, x, y)
    flat = utility.flatten(1)
    total = flat.sum(1).clamp_min(1e-30)
    top = flat.topk(args.k, dim=1).indices
    bottom = flat.topk(args.k, dim=1, largest=False).indices
    mask_of = lambda idx: torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)  # noqa: E731
    in_top, in_bottom = mask_of(top), mask_of(bottom)
    un = un_mask(x01, generator)
    sums = {"utility_share_top": (flat.gather(1, top).sum(1) / total).sum().item(),
            "utility_share_bottom": (flat.gather(1, bottom).sum(1) / total).sum().item(),
            "un_in_bottom": ((un & in_bottom).sum(1) / un.sum(1)).sum().item(),
            "un_in_top": ((un & in_top).sum(1) / un.sum(1)).sum().item()}
    with torch.no_grad():
        z, logits = embed(model, x)
        sums["acc_clean"] = (logits.argmax(1) == y).sum().item()
        for name, xp in perturbed_inputs(x01, x, utility, normalize, args, generator).items():
            zp, lp = embed(model, xp)
            sums[f"dist_{name}"] = (1 - F.cosine_similarity(z, zp, dim=1)).sum().item()
            sums[f"acc_{name}"] = (lp.argmax(1) == y).sum().item()
    maps = {"utility": (utility.mean(1) / flat.mean(1).clamp_min(1e-30)[:, None, None]).sum(0),
            "bottom": in_bottom.view_as(utility).any(1).float().sum(0),
            "top": in_top.view_as(utility).any(1).float().sum(0)}
    return {"sums": sums, "maps": maps}


def contrast(model: torch.nn.Module, x01: torch.Tensor, y: torch.Tensor, normalize, args, tau: float,
             generator: torch.Generator) -> dict:
    """Eq. 5 on one batch (every sample an anchor; its positive x+, its negative x- and the other samples): the mean
    term, its floor for non-negative embeddings (positive cosine 1, every negative 0), the softmax mass on x+ and x-,
    and the median over anchors of the FCL term's pull on the anchor's embedding relative to the cross-entropy's
    (lambda |d sum_j l_j / d z_i| against |d mean CE / d z_i|: the two parts of the training loss)."""
    from timm_fcl.perturbations import perturbed_batch
    from timm_fcl.utility import contextual_utility

    x, b = normalize(x01), len(y)
    utility = contextual_utility(model, x, y)
    with torch.no_grad():
        z_pos, z_neg = embed(model, perturbed_batch(x, utility, args.k, args.fcl_sigma, generator, normalize.std))[0] \
            .chunk(2)
        z_clean, logits = embed(model, x)
    z = z_clean.detach().requires_grad_(True)
    head = model.get_classifier()
    torch.testing.assert_close(head(z), logits)  # the logits are a linear head on the embedding
    zn, pn, nn_ = (F.normalize(t, dim=1) for t in (z, z_pos, z_neg))
    others = (zn @ zn.t()).masked_fill(torch.eye(b, dtype=torch.bool), float("-inf"))
    row = torch.cat([(zn * pn).sum(1, keepdim=True), others, (zn * nn_).sum(1, keepdim=True)], 1) / tau
    per_anchor = torch.logsumexp(row, 1) - row[:, 0]
    (g_fcl,) = torch.autograd.grad(per_anchor.sum(), z)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(head(z), y), z)
    p = row.softmax(1).detach()
    floor = -1 / tau + torch.log(torch.tensor(math.exp(1 / tau) + b)).item()
    pull = args.weight * g_fcl.norm(dim=1) / g_ce.norm(dim=1).clamp_min(1e-12)
    return {"term": per_anchor.mean().item(), "floor": floor, "p_pos": p[:, 0].mean().item(),
            "p_xneg": p[:, -1].mean().item(), "pull_vs_ce": pull.median().item()}


def probe_model(folder: str, images: torch.Tensor, labels: torch.Tensor, args) -> tuple[dict, dict, str]:
    """(measures, maps, sha256 of the weights) of one export folder over the images, in batches of --batch-size."""
    from timm_fcl.robustness.evaluation import load_models

    (m,) = load_models([folder])
    mean = torch.tensor(m.data_config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(m.data_config["std"]).view(1, -1, 1, 1)

    def normalize(x01: torch.Tensor) -> torch.Tensor:
        return (x01 - mean) / std

    normalize.std = m.data_config["std"]
    generator = torch.Generator().manual_seed(args.seed)
    sums, maps = {}, {}
    for start in range(0, len(labels), args.batch_size):
        part = probe_batch(m.model, images[start:start + args.batch_size], labels[start:start + args.batch_size],
                           normalize, args, generator)
        for key, value in part["sums"].items():
            sums[key] = sums.get(key, 0.0) + value
        for key, value in part["maps"].items():
            maps[key] = maps.get(key, 0.0) + value
    n = len(labels)
    # top-1 accuracies in percent (timm's unit, as every results file of the project); distances and shares as they are
    measures = {k: (100.0 if k.startswith("acc_") else 1.0) * v / n for k, v in sums.items()}
    for tau in args.taus:  # on one batch of the training size: the first images
        first = slice(0, args.contrast_batch)
        stats = contrast(m.model, images[first], labels[first], normalize, args, tau, generator)
        measures.update({f"contrast_{key}@{tau:g}": value for key, value in stats.items()})
    return measures, {k: (v / n).tolist() for k, v in maps.items()}, m.weights_sha256


def validation_images(args) -> tuple[torch.Tensor, torch.Tensor]:
    """The first --images of the carved validation split as [N, 3, 32, 32] floats in [0, 1], and their labels."""
    from timm_fcl.data.holdout import carve_validation
    from timm_fcl.robustness.datasets import load_clean_images

    carve_validation(args.data_dir, args.holdout, val_size=5000, seed=0, shard_size=9000)  # cifar_robustness's carve
    images, labels = load_clean_images(dataset="wds/cifar10", root=str(args.holdout), split="validation",
                                       max_samples=args.images, seed=0)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(labels)


def plot_maps(maps: dict, path: Path, k: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (("utility", "mean utility / its image mean"), ("bottom", f"P(location in BOTTOM_{k})"),
            ("top", f"P(location in TOP_{k})"))
    fig, axes = plt.subplots(len(rows), len(maps), figsize=(2.2 * len(maps), 6.4), squeeze=False)
    for j, (label, model_maps) in enumerate(maps.items()):
        for i, (key, title) in enumerate(rows):
            image = axes[i, j].imshow(model_maps[key], cmap="viridis")
            fig.colorbar(image, ax=axes[i, j], fraction=0.046)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            axes[i, j].set_title(label if i == 0 else "", fontsize=8)
            if j == 0:
                axes[i, j].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_tables(results: dict, args) -> str:
    """Two markdown tables: the k-element perturbations at each sigma, then utility, UN and all-pixel Gaussian."""
    lines = [f"k = {args.k} of 3,072 elements; {args.images} validation images", "",
             "| model | sigma | dist x+ (BOTTOM_k) | dist x- (TOP_k) | x- / x+ | dist random k | "
             "top-1 % x+ / x- / random k |", "|" + " --- |" * 7]
    for label, r in results.items():
        for sigma in args.sigmas:
            low, high, rand = (r[f"dist_{p}@{sigma}"] for p in ("low", "high", "random"))
            accs = " / ".join(f"{r[f'acc_{p}@{sigma}']:.1f}" for p in ("low", "high", "random"))
            lines.append(f"| {label} | {sigma:g} | {low:.4f} | {high:.4f} | {high / low:.2f} | {rand:.4f} | {accs} |")
    lines += ["", f"| model | utility share in TOP_k / BOTTOM_k | UN's elements in BOTTOM_k / TOP_k (chance "
              f"{args.k / 3072:.3f}) | dist Gaussian {args.gauss_sigma:g} | dist UN | top-1 % clean / Gaussian / UN |",
              "|" + " --- |" * 6]
    for label, r in results.items():
        lines.append(f"| {label} | {r['utility_share_top']:.3f} / {r['utility_share_bottom']:.4f} | "
                     f"{r['un_in_bottom']:.3f} / {r['un_in_top']:.3f} | {r['dist_gaussian']:.4f} | {r['dist_un']:.4f} "
                     f"| {r['acc_clean']:.1f} / {r['acc_gaussian']:.1f} / {r['acc_un']:.1f} |")
    lines += ["", f"| model | tau | FCL term (floor) | softmax mass on x+ / x- | median pull of lambda "
              f"{args.weight:g} x the sum over {args.contrast_batch} vs the mean CE |", "|" + " --- |" * 5]
    for label, r in results.items():
        for tau in args.taus:
            c = {k.split("@")[0][len("contrast_"):]: v for k, v in r.items() if k.endswith(f"@{tau:g}")
                 and k.startswith("contrast_")}
            lines.append(f"| {label} | {tau:g} | {c['term']:.3f} ({c['floor']:.3f}) | {c['p_pos']:.4f} / "
                         f"{c['p_xneg']:.4f} | {c['pull_vs_ce']:.3f} |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="export (or run) folders")
    p.add_argument("--data-dir", default=str(shared_data_root() / "cifar10-wds"), help="CIFAR-10 shards")
    p.add_argument("--holdout", default=str(REPO / "runs" / "cifar_robustness" / "holdout"),
                   help="the carved split (made here when missing)")
    p.add_argument("--images", type=int, default=2000, help="validation images probed")
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.3, 0.5],
                   help="FCL noise stds (pixel units) of the k-element perturbations")
    p.add_argument("--gauss-sigma", type=float, default=0.3, help="XE+Gaussian's noise std (pixel units)")
    p.add_argument("--taus", type=float, nargs="+", default=[2.0, 0.5], help="Eq. 5 temperatures of the contrast")
    p.add_argument("--fcl-sigma", type=float, default=0.5, help="the noise std of the contrast's x+ and x-")
    p.add_argument("--weight", type=float, default=8e-4, help="lambda (on the batch sum) of the pull ratio")
    p.add_argument("--contrast-batch", type=int, default=128, help="the batch of the contrast (the training one)")
    p.add_argument("-b", "--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "cifar_robustness" / "probe"))
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    images, labels = validation_images(args)
    results, maps, weights = {}, {}, {}
    for folder in args.models:
        label = Path(folder).name
        results[label], maps[label], weights[label] = probe_model(folder, images, labels, args)
        print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[label].items()), flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("output", "threads")}
    (out / "probe.json").write_text(json.dumps({"config": config, "weights_sha256": weights, "results": results,
                                                "unit": "percent"}, indent=1) + "\n")
    plot_maps({label: {k: torch.tensor(v) for k, v in m.items()} for label, m in maps.items()}, out / "maps.png",
              args.k)
    table = format_tables(results, args)
    (out / "tables.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'probe.json'}, {out / 'tables.md'}, {out / 'maps.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

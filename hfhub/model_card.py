"""The README model card of a published FCL checkpoint: a YAML header the Hub reads (library_name: timm, tags,
license, metrics), then the recipe, the FCL hyper-parameters, the evaluation table and how to load the model."""
from typing import Optional

import yaml

FCL_KEYS = ("method", "k", "sigma", "tau", "weight", "variant", "margin", "start_step", "ramp_steps")
RECIPE_KEYS = ("model", "pretrained", "dataset", "num_classes", "img_size", "input_size", "epochs", "batch_size",
               "opt", "lr", "momentum", "weight_decay", "sched", "warmup_epochs", "decay_milestones", "mixed_precision",
               "model_ema", "seed", "patch_gaussian_size", "patch_gaussian_sigma")


def _fcl_params(train_args: dict) -> dict:
    """FCL settings from the run's args: fcl_* flags (train_fcl.py) and --method."""
    out = {}
    for key in FCL_KEYS:
        for name in (f"fcl_{key}", key):
            if name in train_args and train_args[name] is not None:
                out[key] = train_args[name]
                break
    return out


def evaluation_rows(eval_results: dict) -> list:
    """(suite, metric, value) rows from timm_fcl.eval's results.json for the first model in it."""
    if not eval_results:
        return []
    result = next(iter(eval_results.values()))
    rows = [(r["suite"], "top-1 accuracy", r["accuracy"]) for r in result.get("rows", []) if r.get("severity") == 0]
    for suite, summary in result.get("summaries", {}).items():
        if summary.get("mean_19") is not None:
            rows.append((suite, "mean accuracy, 19 corruptions", summary["mean_19"]))
        if summary.get("mean_15") is not None:
            rows.append((suite, "mean accuracy, 15 corruptions", summary["mean_15"]))
        if summary.get("mean_19") is None and summary.get("mean_all") is not None:
            rows.append((suite, f"mean accuracy, {len(summary.get('per_corruption', {}))} corruptions",
                         summary["mean_all"]))
        for group, value in summary.get("groups", {}).items():
            rows.append((suite, f"{group} (group mean)", value))
        for key, label in (("mce", "mCE"), ("relative_mce", "relative mCE")):
            if summary.get(key) is not None:
                rows.append((suite, label, summary[key]))
    return rows


def build_model_card(repo_id: str, config: dict, train_args: Optional[dict] = None,
                     eval_results: Optional[dict] = None, license: str = "apache-2.0") -> str:
    train_args = train_args or {}
    arch = config.get("architecture", "unknown")
    fcl = _fcl_params(train_args)
    rows = evaluation_rows(eval_results or {})
    header = {
        "library_name": "timm",
        "license": license,
        "tags": ["image-classification", "timm", "timm-fcl", "feature-contrastive-learning", "robustness"],
        "pipeline_tag": "image-classification",
    }
    if train_args.get("dataset"):
        header["datasets"] = [str(train_args["dataset"]).split("/")[-1]]
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {repo_id.split('/')[-1]}", "",
             f"A `{arch}` image classifier trained with timm-fcl (method `{fcl.get('method', 'unknown')}`): "
             "Feature Contrastive Learning adds to cross-entropy a contrastive loss on the penultimate embedding that "
             "keeps the model insensitive to perturbations of low-utility input elements and sensitive to "
             "high-utility ones (\"Balancing Robustness and Sensitivity using Feature Contrastive Learning\").", "",
             "## How to load", "", "```python", "import timm", "",
             f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
             "data_config = timm.data.resolve_model_data_config(model)",
             "transform = timm.data.create_transform(**data_config, is_training=False)", "```", "",
             "Plain timm loads it (no timm-fcl import); the weights are a safetensors file.", ""]
    lines += ["## Model", "", "| | |", "| --- | --- |", f"| architecture | `{arch}` |",
              f"| classes | {config.get('num_classes', '?')} |"]
    pcfg = config.get("pretrained_cfg", {})
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation"):
        if key in pcfg:
            lines.append(f"| {key} | {pcfg[key]} |")
    if config.get("label_names"):
        names = config["label_names"]
        lines.append(f"| labels | {', '.join(map(str, names[:20]))}{' ...' if len(names) > 20 else ''} |")
    lines += ["", "## Training recipe", ""]
    recipe = [(k, train_args[k]) for k in RECIPE_KEYS if train_args.get(k) not in (None, "", [], False)]
    if recipe:
        lines += ["| setting | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in recipe]
    else:
        lines.append("Not recorded.")
    lines += ["", "## FCL hyper-parameters", ""]
    if fcl:
        lines += ["| parameter | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in fcl.items()]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Evaluation", ""]
    if rows:
        lines += ["| test set | metric | value |", "| --- | --- | --- |"]
        lines += [f"| {suite} | {metric} | {value:.4f} |" for suite, metric, value in rows]
        lines += ["", "Measured with `python -m timm_fcl.eval` (clean, UN / NUN noisy sets, corruption suites)."]
    else:
        lines.append("No evaluation results were published with this checkpoint.")
    return "\n".join(lines) + "\n"

"""The README model card of a published FCL checkpoint: a YAML header the Hub reads (library_name: timm, tags,
license, metrics), then the recipe, the FCL hyper-parameters, the evaluation table and how to load the model."""
from typing import Optional

import yaml

RECIPE_KEYS = ("model", "pretrained", "dataset", "num_classes", "img_size", "input_size", "epochs", "batch_size",
               "world_size", "global_batch", "opt", "lr", "momentum", "weight_decay", "sched", "warmup_epochs",
               "decay_milestones", "mixed_precision", "model_ema", "seed", "patch_gaussian")
PATCH_GAUSSIAN_KEYS = ("patch_gaussian_size", "patch_gaussian_sigma")
# what the flags resolved to (resolved.yaml) wins over the flags (e.g. a derived lr, the classes found in the data)
RESOLVED_RECIPE_KEYS = ("num_classes", "epochs", "world_size", "global_batch", "lr")


def fcl_params(train_args: dict, resolved: dict) -> dict:
    """Every FCLConfig field as the run resolved it (schedule in steps, with the epochs it was given in); for older
    runs without resolved.yaml, the --method and --fcl-* flags that were set."""
    if resolved.get("fcl"):
        params = {"method": train_args.get("method"), **resolved["fcl"]}
        epochs = resolved.get("fcl_schedule_epochs") or {}
        for key, field in (("start", "start_step"), ("ramp", "ramp_steps")):
            if epochs.get(key) is not None:
                params[field] = f"{params.get(field)} ({epochs[key]} epochs)"
        return params
    params = {"method": train_args["method"]} if train_args.get("method") else {}
    params.update({k[len("fcl_"):]: v for k, v in train_args.items() if k.startswith("fcl_") and v is not None})
    return params


def recipe_rows(train_args: dict, resolved: dict) -> list:
    """(setting, value) of the training recipe; Patch Gaussian's settings only when it was on."""
    values = dict(train_args, **{k: resolved[k] for k in RESOLVED_RECIPE_KEYS if resolved.get(k) is not None})
    keys = RECIPE_KEYS + (PATCH_GAUSSIAN_KEYS if values.get("patch_gaussian") else ())
    return [(k, values[k]) for k in keys if values.get(k) not in (None, "", [], False)]


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


def _table(head: tuple, rows: list, empty: str) -> list:
    """A markdown table (or the ``empty`` sentence when there are no rows)."""
    if not rows:
        return [empty]
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + [
        "| " + " | ".join(map(str, row)) + " |" for row in rows]


def _model_rows(config: dict) -> list:
    rows = [("architecture", f"`{config.get('architecture', 'unknown')}`"), ("classes", config.get("num_classes", "?"))]
    pcfg = config.get("pretrained_cfg", {})
    rows += [(key, pcfg[key]) for key in ("input_size", "mean", "std", "crop_pct", "interpolation") if key in pcfg]
    names = config.get("label_names")
    if names:
        rows.append(("labels", f"{', '.join(map(str, names[:20]))}{' ...' if len(names) > 20 else ''}"))
    return rows


def _introduction(repo_id: str, arch: str, method: str) -> list:
    return [f"# {repo_id.split('/')[-1]}", "",
            f"A `{arch}` image classifier trained with timm-fcl (method `{method}`): "
            "Feature Contrastive Learning adds to cross-entropy a contrastive loss on the penultimate embedding that "
            "keeps the model insensitive to perturbations of low-utility input elements and sensitive to "
            "high-utility ones (\"Balancing Robustness and Sensitivity using Feature Contrastive Learning\").", "",
            "## How to load", "", "```python", "import timm", "",
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
            "data_config = timm.data.resolve_model_data_config(model)",
            "transform = timm.data.create_transform(**data_config, is_training=False)", "```", "",
            "Plain timm loads it (no timm-fcl import); the weights are a safetensors file.", ""]


def build_model_card(repo_id: str, config: dict, *, train_args: Optional[dict] = None,
                     eval_results: Optional[dict] = None, resolved: Optional[dict] = None,
                     license: str = "apache-2.0") -> str:
    """The README.md of a published run: ``train_args`` are its args.yaml, ``resolved`` its resolved.yaml."""
    train_args, resolved = train_args or {}, resolved or {}
    fcl = fcl_params(train_args, resolved)
    header = {
        "library_name": "timm",
        "license": license,
        "tags": ["image-classification", "timm", "timm-fcl", "feature-contrastive-learning", "robustness"],
        "pipeline_tag": "image-classification",
    }
    if train_args.get("dataset"):
        header["datasets"] = [str(train_args["dataset"]).split("/")[-1]]
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", ""]
    lines += _introduction(repo_id, config.get("architecture", "unknown"), fcl.get("method") or "unknown")
    lines += ["## Model", ""] + _table(("", ""), _model_rows(config), "")
    lines += ["", "## Training recipe", ""]
    lines += _table(("setting", "value"), recipe_rows(train_args, resolved), "Not recorded.")
    lines += ["", "## FCL hyper-parameters", ""]
    lines += _table(("parameter", "value"), list(fcl.items()), "Not recorded.")
    lines += ["", "## Evaluation", ""]
    rows = [(suite, metric, f"{value:.4f}") for suite, metric, value in evaluation_rows(eval_results or {})]
    lines += _table(("test set", "metric", "value"), rows, "No evaluation results were published with this checkpoint.")
    if rows:
        lines += ["", "Measured with `python -m timm_fcl.eval` (clean, UN / NUN noisy sets, corruption suites)."]
    return "\n".join(lines) + "\n"

"""The README model card of a published FCL checkpoint, built with huggingface_hub's ModelCard: a header the Hub reads
(library_name: timm, tags, license, base_model of a fine-tune, and the evaluation results as ``model-index``), then
how to load the model, the recipe, every FCL hyper-parameter, the evaluation table and the paper's citation."""
from pathlib import Path
from typing import Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from timm_fcl.robustness.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTION_GROUPS, CORRUPTIONS

# the paper as its text gives it: the title and "Paper under double-blind review"; it names no authors ("Anonymous
# authors"), so the entry has none
CITATION = """@misc{feature_contrastive_learning,
  title = {Balancing Robustness and Sensitivity using Feature Contrastive Learning},
  note = {Paper under double-blind review; the authors are not named (anonymous submission)},
}"""

# the settings that shape the result, in the order a reader reproduces them: data, model, optimization,
# regularization, run; each shown with its value, 0 included (a switch only when on, an unset one never)
RECIPE_KEYS = ("model", "pretrained", "dataset", "num_classes", "img_size", "input_size", "train_subset", "val_holdout",
               "epochs", "batch_size", "grad_accum_steps", "world_size", "global_batch", "opt", "lr", "momentum",
               "weight_decay", "clip_grad", "sched", "warmup_epochs", "min_lr", "decay_epochs", "decay_milestones",
               "decay_rate", "smoothing", "mixup", "cutmix", "drop", "drop_path", "crop_pad", "aa", "reprob",
               "mixed_precision", "model_ema", "model_ema_decay", "seed", "patch_gaussian")
PATCH_GAUSSIAN_KEYS = ("patch_gaussian_size", "patch_gaussian_sigma")
# settings whose 0 turns a feature off rather than being a value: shown only when on
SWITCH_KEYS = ("val_holdout", "crop_pad")
# settings only one kind of schedule reads (timm's scheduler factory): shown with that schedule only
SCHEDULE_KEYS = {"decay_epochs": ("step",), "decay_milestones": ("multistep",),
                 "decay_rate": ("step", "multistep", "plateau")}
# what the flags resolved to (resolved.yaml) wins over the flags (e.g. a derived lr, the classes found in the data)
RESOLVED_RECIPE_KEYS = ("num_classes", "epochs", "world_size", "global_batch", "lr")


def fcl_params(train_args: dict, resolved: dict) -> dict:
    """Every FCLConfig field as the run resolved it (schedule in steps, with the epochs it was given in); for older
    runs without resolved.yaml, the --method and --fcl-* flags that were set."""
    if resolved.get("fcl"):
        params = {"method": train_args.get("method"), **resolved["fcl"]}
        epochs = resolved.get("fcl_schedule_epochs") or {}
        params.update({f"{key}_epochs": epochs[key] for key in ("start", "ramp") if epochs.get(key) is not None})
        return params
    params = {"method": train_args["method"]} if train_args.get("method") else {}
    params.update({k[len("fcl_"):]: v for k, v in train_args.items() if k.startswith("fcl_") and v is not None})
    return params


def _recorded(value: object) -> bool:
    """Whether a recipe value says something: any number (0 too) or text; not an unset one (None, '', []) nor a
    switch that is off (False: the feature was not used)."""
    if value is None or value is False:
        return False
    return not (isinstance(value, (str, list, tuple, dict)) and not value)


def recipe_rows(train_args: dict, resolved: dict) -> list:
    """(setting, value) of the training recipe: every setting of RECIPE_KEYS the run recorded, 0 included; Patch
    Gaussian's settings only when it was on, the EMA decay only with the EMA, a schedule's own settings only with it."""
    values = dict(train_args, **{k: resolved[k] for k in RESOLVED_RECIPE_KEYS if resolved.get(k) is not None})
    keys = RECIPE_KEYS + (PATCH_GAUSSIAN_KEYS if values.get("patch_gaussian") else ())
    if not values.get("model_ema"):
        keys = tuple(k for k in keys if k != "model_ema_decay")
    if values.get("sched") is not None:
        keys = tuple(k for k in keys if values["sched"] in SCHEDULE_KEYS.get(k, (values["sched"],)))
    return [(k, values[k]) for k in keys if _recorded(values.get(k)) and (k not in SWITCH_KEYS or values[k])]


def published_result(eval_results: dict, run_name: str = "") -> dict:
    """The results of the published model in timm_fcl.eval's results.json (its run's entry, else the first; read by
    publish.read_eval_results, which refuses a unit other than percent)."""
    if not eval_results:
        return {}
    return dict(eval_results.get(run_name) or next(iter(eval_results.values())))


def _images(rows: list) -> str:
    """How many images the results' rows were measured on: '10,000 images', '2,000 images each' over several sets,
    'an unrecorded number of images' when the results do not say."""
    if not rows or not all(isinstance(r.get("total"), int) for r in rows):
        return "an unrecorded number of images"
    totals = sorted({r["total"] for r in rows})
    count = f"{totals[0]:,}" if len(totals) == 1 else f"{totals[0]:,} to {totals[-1]:,}"
    return f"{count} images{' each' if len(rows) > 1 else ''}"


def _ordered(names) -> list:
    """Corruption names in the benchmark's order (noise, blur, weather, digital, then the four held-out ones)."""
    known = [n for n in CORRUPTIONS if n in names]
    return known + sorted(n for n in names if n not in CORRUPTIONS)


def _severities(rows: list) -> str:
    levels = sorted({r["severity"] for r in rows if isinstance(r.get("severity"), int)})
    if not levels:
        return "unrecorded severities"
    if levels == list(range(levels[0], levels[-1] + 1)) and len(levels) > 1:
        return f"{len(levels)} severities ({levels[0]}-{levels[-1]})"
    return f"{len(levels)} severit{'y' if len(levels) == 1 else 'ies'} ({', '.join(map(str, levels))})"


def corruption_basis(result: dict, suite: str, names) -> str:
    """What a corruption suite's summary over ``names`` was measured on, from the results' rows: how many
    corruptions and severities, and how many images each set holds."""
    rows = [r for r in result.get("rows", []) if r.get("suite") == suite and r.get("corruption") in set(names)]
    return f"{len(list(names))} corruptions x {_severities(rows)}, {_images(rows)}"


def suite_corruptions(result: dict, suite: str) -> list:
    """The corruptions a suite's results hold: those of its rows with a severity, else its summary's."""
    names = {r.get("corruption") for r in result.get("rows", []) if r.get("suite") == suite and r.get("severity")}
    names.discard(None)
    return _ordered(names or result.get("summaries", {}).get(suite, {}).get("per_corruption", {}))


def suite_description(result: dict, suite: str) -> str:
    """What a test set of the results is, from its rows: the images it holds and the noise or the corruptions applied,
    e.g. 'uniform_noise on 10,000 images', '19 corruptions x 5 severities (1-5), 2,000 images each: gaussian_noise,
    ...' (a generated suite says which preset it applied)."""
    rows = [r for r in result.get("rows", []) if r.get("suite") == suite]
    if rows and all(r.get("severity") == 0 for r in rows):
        noise = {r.get("corruption") for r in rows} - {"clean", "", None}
        return f"{', '.join(sorted(noise)) + ' on ' if noise else ''}{_images(rows)}"
    names = suite_corruptions(result, suite)
    if not names:
        return "corruptions not recorded"
    preset = result.get("summaries", {}).get(suite, {}).get("preset")
    how = f", generated from the clean images with the official generators' {preset} parameters" \
        if preset and suite == "generated" else ""
    return f"{corruption_basis(result, suite, names)}{how}: {', '.join(names)}"


def evaluation_rows(result: dict) -> list:
    """(test set, metric, value, measured on) rows of one model's timm_fcl.eval results, in percent: the accuracy on
    every set without severities, then each corruption suite's summaries (means over corruptions, group means, mCE).
    A metric over part of a suite's corruptions names them; what each was measured on (images, corruptions,
    severities) comes from the results' rows."""
    result = dict(result, rows=result.get("rows", []))
    rows = [(r["suite"], "top-1 accuracy", r["accuracy"], suite_description(result, r["suite"]))
            for r in result["rows"] if r.get("severity") == 0]
    for suite, summary in result.get("summaries", {}).items():
        present = suite_corruptions(result, suite)
        left_out = [n for n in present if n not in BENCHMARK_CORRUPTIONS]
        benchmark = f"15 corruptions (without {', '.join(left_out)})" if left_out else "15 corruptions"

        def basis(names, suite=suite) -> str:
            return corruption_basis(result, suite, names)

        if summary.get("mean_19") is not None:
            rows.append((suite, "mean accuracy, 19 corruptions", summary["mean_19"], basis(CORRUPTIONS)))
        if summary.get("mean_15") is not None:
            rows.append((suite, f"mean accuracy, {benchmark}", summary["mean_15"], basis(BENCHMARK_CORRUPTIONS)))
        if summary.get("mean_19") is None and summary.get("mean_all") is not None:
            names = _ordered(summary.get("per_corruption", {})) or present
            rows.append((suite, f"mean accuracy, {len(names)} corruptions", summary["mean_all"], basis(names)))
        for group, value in summary.get("groups", {}).items():
            members = CORRUPTION_GROUPS.get(group, ())
            rows.append((suite, f"{group} group mean ({', '.join(members)})", value, basis(members)))
        for key, label in (("mce", "mCE"), ("relative_mce", "relative mCE")):
            if summary.get(key) is not None:
                rows.append((suite, f"{label}, {benchmark}", summary[key], basis(BENCHMARK_CORRUPTIONS)))
    return rows


def eval_results_of(rows: list, dataset: str, result: Optional[dict] = None) -> list:
    """The rows as huggingface_hub EvalResults (the card's ``model-index``): one per test set and metric, in percent
    rounded to 4 decimals as timm's validate.py writes top-1; each test set's name says what it holds (images, noise,
    corruptions and severities: ``suite_description``)."""
    def name(suite: str) -> str:
        return f"{dataset} ({suite}): {suite_description(result, suite)}" if result else f"{dataset} ({suite})"

    return [EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=name(suite),
                       dataset_config=suite, metric_type="mce" if "mCE" in metric else "accuracy",
                       metric_name=metric, metric_value=round(value, 4)) for suite, metric, value, _ in rows]


def zoo_entry_of(path: str) -> Optional[tuple[str, str]]:
    """(zoo tag, Hub repository) when ``path`` is the weights file of an entry of the zoo installed with timm-fcl (its
    folder named as the tag, e.g. ``.../resnet20_cifar.xe_pretrain_cifar10/model.safetensors``); where the file is
    still there its bytes must be the installed entry's. None for any other file."""
    import timm

    from timm_fcl.models.zoo import installed_weights
    from timm_fcl.run.atomic import file_sha256

    file, name = Path(path), Path(path).parent.name
    zoo_weights = installed_weights(name) if "." in name and file.name == "model.safetensors" else None
    if zoo_weights is None:
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm's answer to a tag it does not know
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    if file.is_file() and file_sha256(file) != file_sha256(zoo_weights):
        return None
    return name, cfg.hf_hub_id


def base_model(train_args: dict) -> tuple[Optional[str], str]:
    """The Hub id a fine-tune started from (None for a local file or a run from scratch) and a sentence saying so.
    Local files are named by their file name only, never by their path; the weights of a zoo entry are named by the
    entry's Hub repository."""
    model = str(train_args.get("model") or "")
    for flag in ("initial_checkpoint", "pretrained_path"):
        if train_args.get(flag) and (entry := zoo_entry_of(str(train_args[flag]))):
            name, hub_id = entry
            return hub_id, (f"Fine-tuned from [{hub_id}](https://huggingface.co/{hub_id}) (the zoo's `{name}`, "
                            f"read from its local weights file by `--{flag.replace('_', '-')}`).")
        if train_args.get(flag):
            return None, (f"Fine-tuned from the local weights file `{Path(train_args[flag]).name}` "
                          f"(`--{flag.replace('_', '-')}`, not on the Hub, so no `base_model`).")
    if not train_args.get("pretrained") and not model.startswith("hf-hub:"):
        return None, "Trained from scratch."
    if model.startswith("hf-hub:"):
        hub_id = model[len("hf-hub:"):].split("@")[0]
    elif model.startswith("local-dir:"):
        return None, f"Fine-tuned from the local export `{Path(model[len('local-dir:'):]).name}` (no `base_model`)."
    else:
        import timm

        hub_id = timm.models.get_pretrained_cfg(model).hf_hub_id if timm.is_model(model) else None
    if not hub_id:
        return None, f"Fine-tuned from timm's pretrained `{model}` weights (not on the Hub, so no `base_model`)."
    return hub_id, f"Fine-tuned from [{hub_id}](https://huggingface.co/{hub_id})."


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


def _defined_by_timm_fcl(arch: str) -> bool:
    """Whether ``arch`` is one of timm_fcl's own architectures (timm knows it only once timm_fcl is imported)."""
    import timm

    import timm_fcl  # noqa: F401  (registers them)

    return timm.models.is_model(arch) and timm.models.model_entrypoint(arch).__module__.startswith("timm_fcl")


def _introduction(repo_id: str, arch: str, method: str, origin: str) -> list:
    if _defined_by_timm_fcl(arch):
        imports = ["import timm", f"import timm_fcl  # pip install timm-fcl: registers {arch}, which timm lacks"]
        note = (f"timm itself does not define `{arch}`: `import timm_fcl` registers it (nothing else changes); "
                "then timm loads the weights, a safetensors file, with its own loader.")
    else:
        imports = ["import timm"]
        note = "Plain timm loads it (no timm-fcl import); the weights are a safetensors file."
    return [f"# {repo_id.split('/')[-1]}", "",
            f"A `{arch}` image classifier trained with timm-fcl (method `{method}`): "
            "Feature Contrastive Learning adds to cross-entropy a contrastive loss on the penultimate embedding that "
            "keeps the model insensitive to perturbations of low-utility input elements and sensitive to "
            "high-utility ones (\"Balancing Robustness and Sensitivity using Feature Contrastive Learning\").",
            "", origin, "",
            "## How to load", "", "```python", *imports, "",
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
            "data_config = timm.data.resolve_model_data_config(model)",
            "transform = timm.data.create_transform(**data_config, is_training=False)", "```", "",
            note, ""]


def card_data(repo_id: str, train_args: dict, rows: list, license: str, base: Optional[str],
              result: Optional[dict] = None) -> ModelCardData:
    dataset = str(train_args.get("dataset") or "").rstrip("/").split("/")[-1]
    return ModelCardData(
        library_name="timm", license=license, pipeline_tag="image-classification", base_model=base,
        tags=["image-classification", "timm", "timm-fcl", "feature-contrastive-learning", "robustness"],
        datasets=[dataset] if dataset else None, model_name=repo_id.split("/")[-1],
        eval_results=eval_results_of(rows, dataset or "unknown", result) or None)


def build_model_card(repo_id: str, config: dict, *, train_args: Optional[dict] = None,
                     eval_results: Optional[dict] = None, resolved: Optional[dict] = None,
                     license: str = "apache-2.0", run_name: str = "") -> str:
    """The README.md of a published run: ``train_args`` are its args.yaml, ``resolved`` its resolved.yaml,
    ``eval_results`` the results.json of timm_fcl.eval (the entry of ``run_name``, else the first)."""
    train_args, resolved = train_args or {}, resolved or {}
    fcl = fcl_params(train_args, resolved)
    result = published_result(eval_results or {}, run_name)
    rows = evaluation_rows(result)
    base, origin = base_model(train_args)
    lines = _introduction(repo_id, config.get("architecture", "unknown"), fcl.get("method") or "unknown", origin)
    lines += ["## Model", ""] + _table(("", ""), _model_rows(config), "")
    lines += ["", "## Training recipe", ""]
    lines += _table(("setting", "value"), recipe_rows(train_args, resolved), "Not recorded.")
    lines += ["", "## FCL hyper-parameters", ""]
    lines += _table(("parameter", "value"), list(fcl.items()), "Not recorded.")
    lines += ["", "## Evaluation", ""]
    table = [(suite, metric, f"{value:.2f}", basis) for suite, metric, value, basis in rows]
    lines += _table(("test set", "metric", "value (%)", "measured on"), table,
                    "No evaluation results were published with this checkpoint.")
    if rows:
        lines += ["", "Measured with `python -m timm_fcl.eval` (clean, UN / NUN noisy sets, corruption suites). "
                  "The test sets:", ""]
        lines += [f"- {suite}: {suite_description(result, suite)}" for suite in dict.fromkeys(r[0] for r in rows)]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```"]
    data = card_data(repo_id, train_args, rows, license, base, result)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))

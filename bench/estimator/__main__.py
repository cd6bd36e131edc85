"""Memory estimator check on a CPU (no GPU needed): featx.plan.memory's predicted bytes per batch
(peak minus weights minus runtime overhead) against the peak live tensor bytes of one
LanguageExtractor.run_batch, for GPT-2/Llama-134M (fp32) and LLaMA/Mistral/Gemma/Falcon-7B widths
(bf16), 2 blocks each (plus two full-depth rows that show nothing grows with depth).

The bf16 7B widths run under FakeTensorMode (shapes without data: this CPU has no bf16 matmul);
the fp32 cases run both fake and for real, which shows the two count the same bytes.

    python -m bench.estimator                 # ~5 min on 2 cores (the real fp32 runs)
    python -m bench.estimator --no-real       # seconds: fake runs only

Results: bench/results/estimator-cpu.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.estimator.check import CASES, check_language, full_shape
from bench.machine import RESULTS, provenance, write_results

TOKENS = (512, 2048, 8192, 16384)
REAL_TOKENS = (512, 2048, 8192)  # real fp32 compute: 16384 would take minutes per case here
PLAN = (("gpt2-124m", "float32"), ("llama-style-134m", "float32"), ("llama-7b", "bfloat16"),
        ("mistral-7b", "bfloat16"), ("gemma-7b", "bfloat16"), ("falcon-7b", "bfloat16"))
FULL_DEPTH = (("llama-7b", "bfloat16", 8192), ("gemma-7b", "bfloat16", 8192))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-real", dest="real", action="store_false", help="skip the real fp32 runs")
    p.add_argument("--out", default=str(RESULTS / "estimator-cpu.json"))
    a = p.parse_args(argv)


    runs = []
    for name, dtype in PLAN:
        for tokens in TOKENS:
            runs.append((name, dtype, tokens, 2, True))
            if a.real and dtype == "float32" and tokens in REAL_TOKENS:
                runs.append((name, dtype, tokens, 2, False))
    runs += [(name, dtype, tokens, full_shape(CASES[name]).layers, True) for name, dtype, tokens in FULL_DEPTH]

    results = {**provenance("cpu"), "method": "peak live tensor bytes (bench.estimator.memtrack.LiveBytes) "
               "of one run_batch after a warm-up; predicted = peak_bytes - weight_bytes - RUNTIME_OVERHEAD; "
               "total_ratio = peak_bytes / (full-depth weight_bytes + measured)",
               "runs": []}
    MiB = 2**20
    print(f"{'case':18} {'dtype':9} {'L':>2} {'tokens':>6} {'mode':5} {'pred MiB':>9} {'meas MiB':>9} {'ratio':>6} {'total':>6}  "
          f"{'fwd MiB':>8} {'loss MiB':>8}  peak op", flush=True)
    for name, dtype, tokens, layers, fake in runs:
        r = check_language(CASES[name], dtype, tokens, layers=layers, fake=fake)
        results["runs"].append(r)
        print(f"{name:18} {dtype:9} {layers:>2} {tokens:>6} {r['mode']:5} {r['predicted_bytes'] / MiB:9.0f} "
              f"{r['measured_bytes'] / MiB:9.0f} {r['ratio']:6.2f} {r['total_ratio']:6.2f}  {r['forward_peak_bytes'] / MiB:8.0f} "
              f"{r['loss_peak_bytes'] / MiB:8.0f}  {r['peak_op']}", flush=True)
    results["all_predicted_ge_measured"] = all(r["ratio"] >= 1 for r in results["runs"])
    path = Path(a.out)
    write_results(path, results)
    print(f"predicted >= measured everywhere: {results['all_predicted_ge_measured']}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

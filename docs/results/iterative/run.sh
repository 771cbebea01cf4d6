#!/usr/bin/env bash
# The iterative study (issue 15, item 4): iterative DPO on SmolLM2-135M-Instruct with the
# built-in task, 3 rounds (conf/experiment/iterative.yaml). Each round samples 8 responses for
# each of the 128 train prompts from the last round's policy (96 new tokens), scores them with
# the rules, trains LoRA DPO on sweet-spot pairs (max vs mu-2sigma, 2 epochs) from that policy
# against pi_0, and answers all 120 held-out prompts; every round is compared with pi_0.
# Round 1 is exactly the default run (`make run`): with its entries in the cache it is reused.
# Estimated 2-core CPU time: ~15 min with the default run cached, ~25 min from an empty cache.
set -euo pipefail
OUT=${OUT:-outputs/iterative}
sweetspot experiment=iterative logger=csv hydra.run.dir=$OUT/initial

# The other reference (each round's reference = the policy it starts from). Round 1 and round
# 2's samples are shared with the run above; ~12 min more.
if [[ "${BOTH_REFERENCES:-0}" == 1 ]]; then
  sweetspot experiment=iterative logger=csv round_reference=previous \
    hydra.run.dir=$OUT/previous
fi

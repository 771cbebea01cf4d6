#!/usr/bin/env bash
# The pilot study (issue 15, item 2): which (chosen, rejected) positions suit SmolLM2-135M-Instruct
# (conf/experiment/pilot.yaml). Five candidates, max/min, max/mu-2sigma, max/mu-sigma, max/mu and
# mu+sigma/mu-sigma, each a 16-step LoRA DPO run on 32 of the 128 train prompts, scored on 32
# other train prompts kept back (greedy answers, rules reward, paired-bootstrap CI against the
# untrained policy); the full run then trains on the picked pair and is evaluated on all 120
# held-out prompts. The samples are the default run's (128 prompts x N = 8 x 96 tokens).
# Estimated 2-core CPU time: ~12 min with the default run cached (pilot ~7 min, full run ~5 min),
# ~16 min from an empty cache.
set -euo pipefail
OUT=${OUT:-outputs/pilot}
sweetspot experiment=pilot logger=csv hydra.run.dir=$OUT

#!/usr/bin/env bash
# The sweet_spot_scaling study as run for docs/results/sweet_spot_scaling (2-core CPU).
# Sampling (128 prompts x 32 x 96 tokens) ran once before, through the same preset:
#   sweetspot experiment=sweet_spot_scaling until=select
# At N = 4 and N = 8 the response nearest mu - 2 sigma is the minimum on every prompt (for N <= 5
# no reward can lie below mu - 2 sigma at all, since the z-score of the minimum is >= -sqrt(N-1)),
# so sweet_spot and max_min build the same pairs there (check_identical_pairs.py verifies it)
# and training them twice would give the same weights: those two cells train once, as max_min.
# Seeds run outermost so that every cell has its first seed before any cell gets a second.
set -euo pipefail
OUT=${OUT:-multirun/sweet_spot_scaling}
for seed in 0 1 2; do
  sweetspot -m experiment=sweet_spot_scaling logger=csv train_seed=$seed selection=max_min \
    hydra.sweep.dir=$OUT/max_min_seed$seed
  sweetspot -m experiment=sweet_spot_scaling logger=csv train_seed=$seed selection=sweet_spot \
    sampler.use_n=16,32 hydra.sweep.dir=$OUT/sweet_spot_seed$seed
done
# One report over all the sweeps: their job folders side by side, then `sweetspot report`.
mkdir -p "$OUT/all"
for sweep in "$OUT"/max_min_seed* "$OUT"/sweet_spot_seed*; do
  for job in "$sweep"/[0-9]*; do ln -sfn "$(realpath "$job")" "$OUT/all/$(basename "$sweep")-$(basename "$job")"; done
done
sweetspot report "$OUT/all"

#!/usr/bin/env bash
# The influence study (issue 15): at equal pair counts (56 of 112 candidates each), the medium
# band of truncated influence (TIF) vs its top band vs a random half, 3 training seeds each,
# SmolLM2-135M-Instruct on the built-in task, 2-core CPU.
# Its samples are sweet_spot_scaling's (128 train prompts x 32 x 96 tokens; the first 16 of each
# prompt), already in the cache: the prompts, sample and score stages are reused. The influence
# stage (model_scores: 112 candidate gradients, 16 validation pairs, two short LoRA trainings)
# runs once, in the first job, and the other 8 jobs reuse it (estimated 30-60 min on 2 idle
# cores; each job then trains and evaluates like a sweet_spot_scaling job).
# The sweep (conf/experiment/influence.yaml) is train_seed 0,1,2 x selection.band
# medium,top,random, seeds outermost.
set -euo pipefail
OUT=${OUT:-multirun/influence}
# SEEDS=0,1 is what ran in this session (time on the 2-core machine); the preset sweeps 0,1,2.
SEEDS=${SEEDS:-0,1,2}
sweetspot -m experiment=influence logger=csv "train_seed=$SEEDS" hydra.sweep.dir=$OUT

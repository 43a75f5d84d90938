# `make checkpoints` retrains the three bundled tiny models from scratch with the project's own
# commands and exports them into python/edlm/checkpoints/ (fp16 EMA weights). Each run uses one
# CPU thread, so it is bitwise repeatable: on the same torch build the exported files come out
# byte for byte the same, and `git status` shows no change. `make -j2 checkpoints` trains the
# denoiser and the AR model side by side (about 40 minutes on 2 cores).
# `make results` regenerates RESULTS.md and results/ from the bundled models (the oracle
# experiment first, `make oracle-results`).

PY ?= .venv/bin/python
EDLM ?= .venv/bin/edlm
RUNS ?= runs/bundled
export OMP_NUM_THREADS = 1

TINY = --preset tiny --data austen-char --device=cpu --seed=0 --no-progress
BASE = $(TINY) --steps=1000 --batch_size=32 --lr=1e-3 --min_lr=1e-4 --warmup_steps=100 \
       --eval_every=250 --eval_batches=16 --save_every=250 --ema=0.995
ORACLE = $(subst austen-char,austen-oracle,$(BASE))
ORACLE_NCE = $(subst austen-char,austen-oracle,$(NCE))
NCE = $(TINY) --steps=250 --batch_size=16 --lr=1e-3 --min_lr=1e-4 --warmup_steps=20 \
      --eval_every=125 --eval_batches=8 --save_every=125 --ema=0.99

.PHONY: checkpoints oracle-checkpoints results oracle-results clean-runs

checkpoints: $(RUNS)/denoiser/latest $(RUNS)/ar/latest $(RUNS)/energy/latest oracle-checkpoints
	$(PY) scripts/export_checkpoints.py $(RUNS)/denoiser:denoiser-tiny $(RUNS)/ar:ar-tiny \
	    $(RUNS)/energy:energy-tiny

# The oracle models: the same recipe on fresh samples of the austen-oracle Markov source.
oracle-checkpoints: $(RUNS)/oracle-denoiser/latest $(RUNS)/oracle-ar/latest \
                    $(RUNS)/oracle-energy/latest
	$(PY) scripts/export_checkpoints.py $(RUNS)/oracle-denoiser:denoiser-oracle \
	    $(RUNS)/oracle-ar:ar-oracle $(RUNS)/oracle-energy:energy-oracle

$(RUNS)/oracle-denoiser/latest:
	rm -rf $(RUNS)/oracle-denoiser
	$(EDLM) train --model denoiser --out $(RUNS)/oracle-denoiser $(ORACLE)

$(RUNS)/oracle-ar/latest:
	rm -rf $(RUNS)/oracle-ar
	$(EDLM) train --model ar --out $(RUNS)/oracle-ar $(ORACLE)

$(RUNS)/oracle-energy/latest: $(RUNS)/oracle-denoiser/latest
	rm -rf $(RUNS)/oracle-energy
	$(EDLM) train --model energy --init-from $(RUNS)/oracle-denoiser --out $(RUNS)/oracle-energy \
	    $(ORACLE_NCE)

$(RUNS)/denoiser/latest:
	rm -rf $(RUNS)/denoiser
	$(EDLM) train --model denoiser --out $(RUNS)/denoiser $(BASE)

$(RUNS)/ar/latest:
	rm -rf $(RUNS)/ar
	$(EDLM) train --model ar --out $(RUNS)/ar $(BASE)

$(RUNS)/energy/latest: $(RUNS)/denoiser/latest
	rm -rf $(RUNS)/energy
	$(EDLM) train --model energy --init-from $(RUNS)/denoiser --out $(RUNS)/energy $(NCE)

results: oracle-results
	$(PY) scripts/make_results.py

# The oracle experiment that opens RESULTS.md (results/oracle/): the exact denoiser's part beside
# the trained models' two parts.
oracle-results:
	$(PY) scripts/oracle_results.py --part exact & pid=$$!; \
	$(PY) scripts/oracle_results.py --part trained && \
	$(PY) scripts/oracle_results.py --part nce; wait $$pid
	$(PY) scripts/oracle_results.py --render-only

clean-runs:
	rm -rf $(RUNS)

"""Connects the mixing parts to a running ``SentenceTransformerTrainer``."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from st_retrofit.mixing.collator import RetrofitDataCollator
from st_retrofit.mixing.sampler import TemperatureBatchSampler

logger = logging.getLogger(__name__)


def _find_sampler(dataloader: Any) -> TemperatureBatchSampler | None:
    # accelerate may wrap the batch sampler (BatchSamplerShard under DDP, SkipBatchSampler on resume).
    sampler = getattr(dataloader, "batch_sampler", None)
    for _ in range(4):
        if sampler is None or isinstance(sampler, TemperatureBatchSampler):
            return sampler
        sampler = getattr(sampler, "batch_sampler", None)
    return None


class MixingCallback(TrainerCallback, ExportableState):
    """The trainer-side half of :class:`RetrofitDataCollator` and :class:`TemperatureBatchSampler`.

    - At the start of training it saves the collator's prompts on the model (``model.prompts``), so checkpoints
      and the final model apply at inference the prompts they were trained with; the stock trainer never does.
    - At each epoch it hands the epoch number to the collator, which draws a fresh, reproducible set of negatives
      per epoch (also after resuming from a checkpoint, and in dataloader workers that start per epoch).
    - It records the sampler's and the collator's settings, and the mixture, in the model card's
      hyperparameters; ``SentenceTransformerTrainingArguments.to_dict`` drops a callable sampler from them.
    - At the end it logs how often the collator had to top up short pools, over the batches trained (the
      dataloader collates ahead). The counts travel in each checkpoint's ``trainer_state.json``
      (``ExportableState``), so a resumed run reports them over the whole run, not only over its own steps.

    Either part may be used without the other; the callback handles whichever it finds on the dataloader.

    Example:
        ::

            trainer = SentenceTransformerTrainer(..., data_collator=collator, callbacks=[MixingCallback()])
    """

    def __init__(self) -> None:
        self.collator: RetrofitDataCollator | None = None
        self.sampler: TemperatureBatchSampler | None = None
        self._recorded = False
        # The counts of the steps before this run (a resumed run's checkpoint), where this run's batches start in
        # the collator's batch_stats, the first step and the accumulation, and the last step trained.
        self._before: Counter = Counter()
        self._first_batch, self._first_step, self._accumulation, self._step = 0, 0, 1, 0

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs) -> None:
        collator = getattr(train_dataloader, "collate_fn", None)
        self.collator = collator if isinstance(collator, RetrofitDataCollator) else None
        self.sampler = _find_sampler(train_dataloader)
        self._recorded = False
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        saved = saved[0] if isinstance(saved, list) else saved
        # Resuming: the checkpoint's counts cover the steps trained before it.
        self._before = Counter((saved or {}).get("attributes", {}).get("collator_stats", {}))
        self._first_batch = len(self.collator.batch_stats) if self.collator is not None else 0
        self._first_step = self._step = state.global_step
        self._accumulation = args.gradient_accumulation_steps
        if self.collator is not None and model is not None:
            prompts = self.collator.model_prompts()
            if prompts:
                model.prompts = {**model.prompts, **prompts}
                logger.info("Saving the training prompts on the model: %s", sorted(prompts))
            if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
                logger.warning(
                    "dataloader_persistent_workers keeps each worker's copy of the collator from seeing the epoch: "
                    "negatives would be drawn as in the first epoch every epoch. Turn persistent workers off"
                )

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        if self.collator is not None:
            # state.epoch is the fraction trained so far (0.5 when resuming in the middle of the first epoch).
            self.collator.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))

    def on_step_begin(self, args, state, control, model=None, **kwargs) -> None:
        # The model card callback rewrites the hyperparameters at train begin, possibly after this callback ran.
        if not self._recorded and model is not None:
            self._record(model)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self._step = state.global_step

    def on_train_end(self, args, state, control, model=None, **kwargs) -> None:
        if model is not None:
            self._record(model)
        if self.collator is not None:
            # Over the whole run, and over the batches trained: not one the dataloader collated ahead.
            self.collator.stats = self._trained_stats()
            if self.collator.stats:
                stats = dict(self.collator.stats)
                logger.info("Negative sampling over %d rows: %s", stats.get("rows", 0), stats)

    def state(self) -> dict:
        """What a checkpoint keeps of this callback: the collator's counts over the steps trained so far."""
        return {"args": {}, "attributes": {"collator_stats": dict(self._trained_stats())}}

    def _trained_stats(self) -> Counter:
        total = Counter(self._before)
        if self.collator is not None:
            trained = (self._step - self._first_step) * self._accumulation
            for counts in self.collator.batch_stats[self._first_batch : self._first_batch + trained]:
                total.update(counts)
        return total

    def _record(self, model: Any) -> None:
        card = getattr(model, "model_card_data", None)
        if card is None:
            return
        entries = {}
        if self.sampler is not None:
            entries["multi_dataset_batch_sampler"] = repr(self.sampler)
            entries["mixture"] = {g["group"]: round(g["probability"], 4) for g in self.sampler.describe()}
        if self.collator is not None:
            settings = ", ".join(f"{k}={v!r}" for k, v in self.collator.get_config_dict().items())
            entries["data_collator"] = f"{type(self.collator).__name__}({settings})"
        card.all_hyperparameters = {**(card.all_hyperparameters or {}), **entries}
        card.non_default_hyperparameters = {**(card.non_default_hyperparameters or {}), **entries}
        self._recorded = True

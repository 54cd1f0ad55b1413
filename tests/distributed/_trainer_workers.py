"""Worker script (run by torchrun, 2 gloo processes on the CPU): transformers' Trainer training a peftkit
LoRA model under DeepSpeed ZeRO-3 (``DS_ACCELERATOR=cpu``), plain multi-process CPU training (``ddp``: accelerate's
MULTI_CPU) or FSDP2 (the Trainer's ``fsdp`` arguments with a full or a sharded state dict: ``fsdp2`` and
``fsdp2_sharded``; accelerate enables FSDP on accelerators only, never for MULTI_CPU),
with checkpoints, ``save_model`` and a resume; rank 0 writes ``result.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tests.distributed._common import LR, RESUME_AT, STEPS, batch, peft_model, write_result
from transformers import Trainer, TrainingArguments

import peftkit
from peftkit.errors import CheckpointError

ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": 1,
    "gradient_clipping": "auto",
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.0, "torch_adam": True}},
    "zero_allow_untested_optimizer": True,
}


class Batches(torch.utils.data.Dataset):
    """Step ``s``'s full batch, row by row: with 2 processes of 2 rows each, a step sees exactly batch(s)."""

    def __len__(self) -> int:
        return STEPS * 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = batch(i // 4)[i % 4]
        return {"input_ids": ids, "labels": ids}


def arguments(out: Path, engine: str) -> TrainingArguments:
    fsdp_config = {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
    # FULL_STATE_DICT: the Trainer hands _save a gathered state dict; SHARDED_STATE_DICT: the Trainer saves no
    # model files itself, and peftkit gathers the adapter's shards
    fsdp_config["state_dict_type"] = "SHARDED_STATE_DICT" if engine == "fsdp2_sharded" else "FULL_STATE_DICT"
    extra: dict = {"deepspeed": ZERO3} if engine == "zero3" else {}
    if engine.startswith("fsdp"):
        extra = {"fsdp": "full_shard", "fsdp_config": fsdp_config}
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the one-process reference does not clip
        max_steps=STEPS,
        save_steps=RESUME_AT,
        logging_steps=1,
        report_to=[],
        use_cpu=engine == "ddp",
        dataloader_drop_last=True,
        seed=0,
        data_seed=0,
        save_only_model=False,
        **extra,
    )


class InOrder(Trainer):
    def _get_train_sampler(self, *args: object, **kwargs: object) -> torch.utils.data.Sampler:
        return torch.utils.data.SequentialSampler(self.train_dataset)


def losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def run(out: Path, engine: str) -> dict:
    peftkit.patch_transformers()
    model = peft_model()
    trainer = InOrder(model=model, args=arguments(out / "run", engine), train_dataset=Batches())
    if trainer.is_fsdp_enabled != engine.startswith("fsdp"):  # accelerate runs FSDP on accelerators only
        raise RuntimeError(f"engine {engine}: the Trainer's is_fsdp_enabled is {trainer.is_fsdp_enabled}")
    trainer.train()
    trainer.save_model(str(out / "final"))
    error = "no error"
    if engine == "zero3":  # a plain save of partitioned parameters (rank 0 alone: no collective) must refuse
        try:
            model.save_pretrained(out / f"plain{dist.get_rank()}")
        except CheckpointError as exc:
            error = str(exc)
    dist.barrier()
    again = InOrder(
        model=peft_model(adapter_seed=7),  # another start: the checkpoint must win
        args=arguments(out / "resumed", engine),
        train_dataset=Batches(),
    )
    again.train(resume_from_checkpoint=str(out / "run" / f"checkpoint-{RESUME_AT}"))
    again.save_model(str(out / "resumed_final"))
    return {"losses": losses(trainer), "resumed_losses": losses(again), "plain_save_error": error}


def main() -> None:
    engine, out = sys.argv[1], Path(sys.argv[2])
    result = run(out, engine)
    if dist.get_rank() == 0:
        write_result(out, result)
    dist.barrier()


if __name__ == "__main__":
    main()

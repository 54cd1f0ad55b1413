"""2 gloo processes on the CPU (torchrun): DDP, FSDP2 (``fully_shard``), and the Trainer under DeepSpeed ZeRO-3
and FSDP2. Each run must give the losses of one process on the full batch, write PEFT-format adapters with the
trained (gathered, full-shape, trainable-only) tensors that load back, refuse to write sharded or partitioned
tensors, and resume exactly. Run separately with ``pytest -m multiprocess``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.distributed._common import RESUME_AT, STEPS, launch, reference_run, tiny_llama
from tests.distributed._trainer_workers import Batches

import peftkit

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def reference() -> tuple[list[float], dict[str, torch.Tensor]]:
    return reference_run()


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """DDP and FSDP2, one after the other in one torchrun launch."""
    out = tmp_path_factory.mktemp("torch_runs")
    return out, launch("_torch_workers.py", "ddp,fsdp2", out)


def check_adapter_dir(directory: Path, expected: dict[str, torch.Tensor]) -> None:
    """PEFT's two files, trainable LoRA tensors only, full shapes, the trained values, and a working reload."""
    names = {p.name for p in directory.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not {n for n in names if n.startswith("model") or n.startswith("pytorch_model") or n.startswith(".tmp")}
    assert json.loads((directory / "adapter_config.json").read_text())["peft_type"] == "LORA"
    stored = load_file(directory / "adapter_model.safetensors")
    assert stored.keys() == expected.keys()
    for key, tensor in expected.items():
        assert stored[key].shape == tensor.shape, key
        torch.testing.assert_close(stored[key], tensor, atol=2e-5, rtol=1e-4)
    reloaded = peftkit.PeftModel.from_pretrained(tiny_llama(), directory)
    again = peftkit.get_peft_model_state_dict(reloaded)
    for key, tensor in expected.items():
        torch.testing.assert_close(again[key], tensor, atol=2e-5, rtol=1e-4)


def check_losses(result: dict, reference: list[float]) -> None:
    """Equal to one process up to float32 reduction order; the resumed steps equal the uninterrupted ones."""
    assert result["losses"] == pytest.approx(reference, abs=2e-4)
    assert result["resumed_losses"][-(STEPS - RESUME_AT) :] == pytest.approx(result["losses"][RESUME_AT:], abs=1e-6)


def test_fsdp2_fully_shard(torch_runs, reference) -> None:
    losses, final = reference
    tmp_path, result = torch_runs[0] / "fsdp2", torch_runs[1]["fsdp2"]
    check_losses(result, losses)
    check_adapter_dir(tmp_path / "final", final)
    check_adapter_dir(tmp_path / "resumed", final)  # resumed from step 2: the same end point
    check_adapter_dir(tmp_path / "gathered", final)  # gather_peft_model_state_dict: adapter-only all-gather
    assert load_file(tmp_path / "via_function.safetensors").keys() == final.keys()  # get_peft_model_state_dict
    assert "DTensor" in result["plain_save_error"] and "state_dict=" in result["plain_save_error"]
    assert not list(tmp_path.glob("plain*"))


def test_ddp(torch_runs, reference) -> None:
    losses, final = reference
    tmp_path, result = torch_runs[0] / "ddp", torch_runs[1]["ddp"]
    check_losses(result, losses)
    check_adapter_dir(tmp_path / "final", final)
    check_adapter_dir(tmp_path / "resumed", final)
    via_ddp = load_file(tmp_path / "ckpt_via_ddp.safetensors")  # get_peft_model_state_dict(DDP(model))
    assert via_ddp.keys() == final.keys()


def deepspeed_rows(step: int) -> torch.Tensor:
    """What every process gets at ``step`` under the Trainer's DeepSpeed path here: the same 2 dataset rows on
    both ranks (its dataloader is not split across processes), so one process on those rows is the reference."""
    return torch.stack([Batches()[2 * step + i]["input_ids"] for i in range(2)])


def test_trainer_deepspeed_zero3(tmp_path: Path) -> None:
    losses, final = reference_run(batch_of=deepspeed_rows)
    result = launch("_trainer_workers.py", "zero3", tmp_path, env={"DS_ACCELERATOR": "cpu"}, timeout=600)
    check_losses(result, losses)
    check_adapter_dir(tmp_path / "final", final)  # trainer.save_model()
    check_adapter_dir(tmp_path / "resumed_final", final)
    checkpoint = tmp_path / "run" / f"checkpoint-{RESUME_AT}"
    assert not list(checkpoint.glob("model*.safetensors"))
    stored = load_file(checkpoint / "adapter_model.safetensors")
    assert stored.keys() == final.keys() and all(t.numel() > 0 for t in stored.values())
    assert "partitioned by DeepSpeed ZeRO-3" in result["plain_save_error"]
    assert not list(tmp_path.glob("plain*"))


def test_trainer_multi_cpu(tmp_path: Path, reference) -> None:
    """The Trainer on 2 CPU processes (accelerate's MULTI_CPU: DDP); its ``fsdp`` arguments take effect only on
    accelerators (``test_trainer_fsdp2``)."""
    check_trainer_run(tmp_path, reference, "ddp")


@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="accelerate enables FSDP on accelerators only (a CPU run is DDP): 2 GPUs"
)
@pytest.mark.parametrize("engine", ["fsdp2", "fsdp2_sharded"], ids=["full_state_dict", "sharded_state_dict"])
def test_trainer_fsdp2(tmp_path: Path, reference, engine: str) -> None:
    check_trainer_run(tmp_path, reference, engine)


def check_trainer_run(tmp_path: Path, reference: tuple[list[float], dict[str, torch.Tensor]], engine: str) -> None:
    losses, final = reference
    result = launch("_trainer_workers.py", engine, tmp_path, timeout=600)
    check_losses(result, losses)
    check_adapter_dir(tmp_path / "final", final)
    check_adapter_dir(tmp_path / "resumed_final", final)
    assert not list((tmp_path / "run" / f"checkpoint-{RESUME_AT}").glob("model*.safetensors"))
